from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from select_helpers import make_docs, write_jsonl

from router.errors import InputError
from router.select.options import ReadOptions
from router.select.readers import Read
from router.select.sources import expand_inputs, index_source

BAD = {1: b'{"id": "x", "text": "cut off', 3: b'{"id": "nt", "body": "no text"}',
       5: b'{"id": "l1", "text": "caf\xe9"}', 7: b'{"id": "e", "text": "  "}',
       9: b"[1, 2]"}


def rows(path: Path, **kw: object) -> list[dict[str, object]]:
    reader = Read(ReadOptions(batch_size=4, **kw))  # type: ignore[arg-type]
    out: list[dict[str, object]] = []
    for src in expand_inputs([str(path)]):
        for t in reader.read(src):
            out.extend(t.to_pylist())
    return out


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_every_compression_and_bad_lines(tmp_path: Path, suffix: str) -> None:
    p = write_jsonl(tmp_path / f"a{suffix}", make_docs(10), BAD)
    got = rows(p)
    assert len(got) == 15
    assert [r["seq"] for r in got] == list(range(15))
    rejected = {r["line"]: r["reject"] for r in got if r["reject"]}
    assert set(rejected) == {2, 4, 6, 8, 10}  # 1-based lines
    assert rejected[2].startswith("bad JSON")
    assert rejected[4] == "missing field 'text'"
    assert rejected[6].startswith("not UTF-8")
    assert rejected[8] == "empty text"
    assert rejected[10] == "not a JSON object"
    good = [r for r in got if not r["reject"]]
    assert [r["id"] for r in good] == [f"d{i:03d}" for i in range(10)]
    assert index_source(expand_inputs([str(p)])[0]).count == 15


def test_skip_and_stop_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    write_jsonl(p, make_docs(6))
    p.write_bytes(p.read_bytes().replace(b"\n", b"\n\n", 2))
    src = expand_inputs([str(p)])[0]
    reader = Read(ReadOptions(batch_size=2))
    got = [r for t in reader.read(src, start=2, stop=5) for r in t.to_pylist()]
    assert [r["seq"] for r in got] == [2, 3, 4]
    assert [r["id"] for r in got] == ["d002", "d003", "d004"]
    assert got[0]["line"] == 5  # two blank lines before it are not records


def test_id_defaults_to_file_and_line_and_custom_fields(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", [{"body": "hello there world", "k": "x"}])
    got = rows(p, text_field="body", id_field="nope", stratify="k")
    assert got[0]["id"] == f"{p}:1"
    assert got[0]["text"] == "hello there world"
    assert got[0]["stratum"] == "x"


def test_parquet(tmp_path: Path) -> None:
    docs = make_docs(7)
    docs[3]["text"] = ""
    p = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(docs), p, row_group_size=3)
    got = rows(p)
    assert [r["line"] for r in got] == list(range(1, 8))
    assert [bool(r["reject"]) for r in got] == [False, False, False, True, False, False, False]
    with pytest.raises(InputError, match="no column 'body'"):
        rows(p, text_field="body")


def test_text_lines_and_files(tmp_path: Path) -> None:
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_bytes(b"first line here\n\nsecond line \xff\nthird\n")
    with gzip.open(d / "b.txt.gz", "wb") as fh:
        fh.write(b"one two three\n")
    got = rows(d)
    assert [(Path(str(r["file"])).name, r["line"]) for r in got] == [
        ("a.txt", 1), ("a.txt", 3), ("a.txt", 4), ("b.txt.gz", 1)]
    assert str(got[1]["reject"]).startswith("not UTF-8")
    whole = rows(d / "a.txt", text_format="file")
    assert len(whole) == 1 and whole[0]["reject"] and whole[0]["line"] == 1


def test_dirs_globs_and_errors(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.jsonl", "c.ndjson"):
        write_jsonl(tmp_path / name, make_docs(2))
    (tmp_path / "notes.md").write_text("x")
    assert [Path(s.path).name for s in expand_inputs([str(tmp_path)])] == [
        "a.jsonl", "b.jsonl", "c.ndjson"]
    srcs = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")])
    assert [Path(s.path).name for s in srcs] == ["a.jsonl", "b.jsonl"]
    assert [s.index for s in srcs] == [0, 1]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    with pytest.raises(InputError, match="unknown input format"):
        expand_inputs([str(tmp_path / "notes.md")])
    with pytest.raises(InputError, match="matches no input"):
        expand_inputs([str(tmp_path / "*.parquet")])
