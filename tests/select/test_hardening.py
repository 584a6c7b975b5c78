"""Issue 13, items 11-13: a damaged compressed input, checkpoints by records or seconds, and
duplicate ids."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from select_helpers import FakeBackend, make_docs, shard_rows, write_jsonl

from router.select.cli import add_select_parser

Run = Callable[..., dict[str, Any]]
RUNNER = Path(__file__).with_name("_checkpoint_runner.py")


def truncated_gzip(path: Path, docs: list[dict[str, Any]]) -> int:
    """Write `docs` gzipped and cut the file in half; how many lines gzip still yields whole."""
    data = gzip.compress(b"".join(json.dumps(d).encode() + b"\n" for d in docs))
    path.write_bytes(data[:len(data) // 2])
    whole = 0
    with pytest.raises(EOFError), gzip.open(path, "rb") as fh:
        for _ in fh:
            whole += 1
    return whole


def rejects(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]


# -- item 11: a truncated .jsonl.gz ----------------------------------------------------------

def test_truncated_gzip_is_one_reject_and_every_other_record_is_processed(
        tmp_path: Path, run_fake: Run) -> None:
    docs = make_docs(600)
    a = write_jsonl(tmp_path / "a.jsonl", docs[:10])
    b = tmp_path / "b.jsonl.gz"
    whole = truncated_gzip(b, docs[10:590])
    c = write_jsonl(tmp_path / "c.jsonl", docs[590:])
    assert 50 < whole < 580
    stats = run_fake([a, b, c], tmp_path / "o")
    assert stats["counts"]["input"] == 10 + whole + 1 + 10
    assert stats["counts"]["rejected"] == 1
    (bad,) = rejects(tmp_path / "o")
    assert bad["file"] == str(b) and bad["line"] == whole + 1
    assert bad["reason"].startswith(f"truncated or corrupt stream after line {whole} (byte ")
    assert "EOFError" in bad["reason"]
    ids = {r["id"] for r in shard_rows(tmp_path / "o", "kept") + shard_rows(tmp_path / "o",
                                                                               "dropped")}
    assert ids == {d["id"] for d in docs[:10 + whole] + docs[590:]}


def test_truncated_gzip_resumes_like_a_straight_run(tmp_path: Path, run_fake: Run) -> None:
    docs = make_docs(300)
    a = write_jsonl(tmp_path / "a.jsonl", docs[:20])
    b = tmp_path / "b.jsonl.gz"
    whole = truncated_gzip(b, docs[20:])
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        run_fake([a, b], out, backends={"small": FakeBackend(fail_after=20 + whole // 2)},
                 checkpoint_records=8)
    second = FakeBackend()
    stats = run_fake([a, b], out, backends={"small": second}, resume=True)
    assert 0 < len(second.scored) < 20 + whole  # saved chunks were not rescored
    run_fake([a, b], tmp_path / "ref")
    assert (out / "stats.json").read_bytes() == (tmp_path / "ref" / "stats.json").read_bytes()
    assert stats["counts"]["rejected"] == 1
    assert rejects(out) == rejects(tmp_path / "ref")
    assert shard_rows(out, "kept") == shard_rows(tmp_path / "ref", "kept")


def test_corrupt_gzip_member_keeps_the_records_before_it(tmp_path: Path, run_fake: Run) -> None:
    docs = make_docs(200)
    data = bytearray(gzip.compress(b"".join(json.dumps(d).encode() + b"\n" for d in docs)))
    data[-8:-4] = b"\0\0\0\0"  # a wrong CRC: the data is whole, the check fails at the end
    p = tmp_path / "x.jsonl.gz"
    p.write_bytes(bytes(data))
    stats = run_fake([p], tmp_path / "o")
    assert stats["counts"] == {"input": 201, "kept": stats["counts"]["kept"],
                               "dropped": 200 - stats["counts"]["kept"], "rejected": 1}
    (bad,) = rejects(tmp_path / "o")
    assert bad["line"] == 201 and "BadGzipFile" in bad["reason"]


# -- item 12: checkpoints by scored records or seconds ---------------------------------------

def _markers(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "_work" / "done").glob("*.json"))]


def test_checkpoint_by_records(tmp_path: Path, run_fake: Run) -> None:
    p = write_jsonl(tmp_path / "a.jsonl", make_docs(50))
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        run_fake([p], out, backends={"small": FakeBackend(fail_after=45)}, checkpoint_records=10)
    assert [(m["start"], m["stop"]) for m in _markers(out)] == [
        (0, 10), (10, 20), (20, 30), (30, 40)]


def test_kill_loses_at_most_a_checkpoint_of_work(tmp_path: Path,
                                                 run_fake: Run) -> None:
    """120 documents at 50 per second, the default shard size (10,000) and the default
    checkpoint of 256 records, but a checkpoint every 0.2 s: chunks are saved while the run
    goes, a kill -9 keeps them, and --resume scores only what no chunk holds."""
    p = write_jsonl(tmp_path / "a.jsonl", make_docs(120))
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, str(RUNNER), str(out), str(p),
                             "--checkpoint-seconds", "0.2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = out / "_work" / "done"
    deadline = time.monotonic() + 60
    while len(list(done.glob("*.json"))) < 2:
        assert proc.poll() is None, "the run ended before any chunk was saved: " + (
            proc.stderr.read().decode()[-2000:] if proc.stderr else "")
        assert time.monotonic() < deadline, "no chunk saved in time"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    saved = sum(m["records"] for m in _markers(out))
    assert 0 < saved < 120
    # a chunk holds at most one backend batch (select.batch_size 32) when time is the bound
    assert max(m["records"] for m in _markers(out)) <= 32
    second = FakeBackend()
    run_fake([p], out, backends={"small": second}, resume=True)
    assert len(second.scored) == 120 - saved
    run_fake([p], tmp_path / "ref")
    assert (out / "stats.json").read_bytes() == (tmp_path / "ref" / "stats.json").read_bytes()
    assert shard_rows(out, "kept") == shard_rows(tmp_path / "ref", "kept")


# -- item 13: duplicate ids -------------------------------------------------------------------

def dup_corpus(tmp_path: Path) -> list[Path]:
    docs = make_docs(40)
    docs[10]["id"] = docs[2]["id"]
    docs[30]["id"] = docs[2]["id"]
    other = make_docs(5)
    other[4]["id"] = docs[20]["id"]
    return [write_jsonl(tmp_path / "a.jsonl", docs), write_jsonl(tmp_path / "b.jsonl", other[4:])]


def test_duplicate_ids_keep_first(tmp_path: Path, run_fake: Run) -> None:
    stats = run_fake(dup_corpus(tmp_path), tmp_path / "o")
    assert stats["duplicate_ids"] == {"mode": "keep-first", "ids": 2, "records_rejected": 3,
                                      "examples": ["d002", "d020"]}
    assert stats["counts"]["input"] == 41 and stats["counts"]["rejected"] == 3
    assert stats["reject_reasons"] == {"duplicate id": 3}
    bad = rejects(tmp_path / "o")
    a = str(tmp_path / "a.jsonl")
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in bad] == [
        ("a.jsonl", 11, f"duplicate id 'd002' (first at {a}:3)"),
        ("a.jsonl", 31, f"duplicate id 'd002' (first at {a}:3)"),
        ("b.jsonl", 1, f"duplicate id 'd020' (first at {a}:21)")]
    ids = [r["id"] for r in shard_rows(tmp_path / "o", "kept") + shard_rows(tmp_path / "o",
                                                                              "dropped")]
    assert len(ids) == len(set(ids)) == 38
    report = (tmp_path / "o" / "report.html").read_text()
    assert "Duplicate ids" in report and "d002, d020" in report


def test_duplicate_ids_reject(tmp_path: Path, run_fake: Run) -> None:
    stats = run_fake(dup_corpus(tmp_path), tmp_path / "o", duplicate_ids="reject")
    assert stats["duplicate_ids"] == {"mode": "reject", "ids": 2, "records_rejected": 5,
                                      "examples": ["d002", "d020"]}
    reasons = [r["reason"] for r in rejects(tmp_path / "o")]
    assert reasons.count("duplicate id 'd002' (3 records)") == 3
    assert reasons.count("duplicate id 'd020' (2 records)") == 2
    ids = {r["id"] for r in shard_rows(tmp_path / "o", "kept") + shard_rows(tmp_path / "o",
                                                                              "dropped")}
    assert not ids & {"d002", "d020"} and len(ids) == 36


def test_no_duplicates_is_reported_too(tmp_path: Path, run_fake: Run) -> None:
    stats = run_fake([write_jsonl(tmp_path / "a.jsonl", make_docs(12))], tmp_path / "o")
    assert stats["duplicate_ids"] == {"mode": "keep-first", "ids": 0, "records_rejected": 0,
                                      "examples": []}


def test_duplicate_ids_flag() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_select_parser(parser.add_subparsers())
    args = parser.parse_args(["select", "x.jsonl", "--out", "o", "--duplicate-ids", "reject",
                              "--checkpoint-records", "50", "--checkpoint-seconds", "5"])
    assert (args.duplicate_ids, args.checkpoint_records, args.checkpoint_seconds) == (
        "reject", 50, 5.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["select", "x.jsonl", "--out", "o", "--duplicate-ids", "drop"])
