"""The building blocks of the select steps: pipe and stats, task planning, byte-offset reading,
score slices and the checkpoint step."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pytest
from select_helpers import FakeBackend, make_docs, write_jsonl

from router.scoring import TokenLogprobs
from router.select.options import ReadOptions
from router.select.readers import Read
from router.select.scorer import Score, slices
from router.select.sources import MARK_EVERY, Mark, SourceIndex, expand_inputs, index_source
from router.select.steps import RECORD_SCHEMA, Stats, Step, pipe, stats_of
from router.select.tasks import gaps, plan_tasks, tasks_table
from router.select.workdir import Checkpoint, WorkDir


class AddOne(Step):
    def run(self, tables: object) -> Iterator[pa.Table]:
        for t in tables:  # type: ignore[attr-defined]
            self.stat_update("tables")
            yield t.set_column(0, "x", pa.compute.add(t.column("x"), 1))


def test_pipe_chains_steps_and_stats_merge() -> None:
    steps = [AddOne(), AddOne(), AddOne()]
    out = list(pipe(steps, [pa.table({"x": [1, 2]}), pa.table({"x": [5]})]))
    assert [t.column("x").to_pylist() for t in out] == [[4, 5], [8]]
    assert stats_of(steps) == {"tables": 6.0}
    assert Stats(a=1) + Stats(a=2, b=1) == {"a": 3, "b": 1}


def test_gaps_and_plan_tasks(tmp_path: Path) -> None:
    assert gaps(10, [(0, 3), (5, 7)]) == [(3, 5), (7, 10)]
    assert gaps(10, []) == [(0, 10)]
    assert gaps(10, [(0, 10)]) == []
    src = expand_inputs([str(write_jsonl(tmp_path / "a.jsonl", make_docs(10)))])[0]
    tasks = plan_tasks([src], {0: SourceIndex(10)}, {0: [(0, 3)]}, max_records=4)
    assert [(t.start, t.stop) for t in tasks] == [(3, 7), (7, 10)]
    assert tasks_table(tasks).num_rows == 2


def test_reading_from_an_indexed_byte_offset_equals_reading_from_the_start(
        tmp_path: Path) -> None:
    n = 3 * MARK_EVERY + 5
    p = write_jsonl(tmp_path / "a.jsonl", make_docs(n), {10: b"{bad", 100: b""})
    src = expand_inputs([str(p)])[0]
    index = index_source(src)
    assert index.count == n + 1  # the blank line is not a record
    assert [m.seq for m in index.marks] == [0, MARK_EVERY, 2 * MARK_EVERY, 3 * MARK_EVERY]
    reader = Read(ReadOptions(batch_size=7))
    whole = [r for t in reader.read(src) for r in t.to_pylist()]
    start = 2 * MARK_EVERY + 3
    mark = index.mark_before(start)
    assert mark.seq == 2 * MARK_EVERY and mark.offset > 0
    part = [r for t in reader.read(src, start=start, stop=start + 20, mark=mark)
            for r in t.to_pylist()]
    assert part == whole[start:start + 20]
    assert index.mark_before(5) == Mark(0, 0, 1)


def test_compressed_inputs_are_indexed_at_the_start_only(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "a.jsonl.gz", make_docs(2 * MARK_EVERY))
    index = index_source(expand_inputs([str(p)])[0])
    assert index.count == 2 * MARK_EVERY and index.marks == (Mark(0, 0, 1),)


def _records(valid: list[bool]) -> pa.Table:
    n = len(valid)
    return pa.Table.from_pydict({
        "file": ["f"] * n, "file_index": [0] * n, "seq": list(range(n)),
        "line": list(range(1, n + 1)), "id": [str(i) for i in range(n)],
        "text": ["a b" if v else None for v in valid], "stratum": [None] * n,
        "reject": [None if v else "bad" for v in valid], "raw": [None] * n},
        schema=RECORD_SCHEMA)


def test_score_slices_hold_at_most_a_batch_of_texts() -> None:
    t = _records([True, True, False, True, True])
    got = [s.column("seq").to_pylist() for s in slices(t, 2)]
    assert got == [[0, 1, 2], [3, 4]]
    assert [s.num_rows for s in slices(t, 10)] == [5]
    assert [s.num_rows for s in slices(_records([False, False]), 2)] == [2]


def _scored(start: int, n: int) -> pa.Table:
    t = _records([True] * (start + n)).slice(start, n)
    return t.append_column("tokens", pa.array([2] * n, pa.int64()))


def test_checkpoint_saves_by_records_or_seconds(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    work.start({}, resume=False)

    def slow(tables: list[pa.Table], pause: float) -> Iterator[pa.Table]:
        for t in tables:
            time.sleep(pause)
            yield t

    by_records = Checkpoint(work, every_records=6, every_seconds=60)
    list(by_records.run(_scored(i * 3, 3) for i in range(5)))
    assert work.done_ranges() == {0: [(0, 6), (6, 12), (12, 15)]}
    work.remove()
    work.start({}, resume=False)
    by_time = Checkpoint(work, every_records=1000, every_seconds=0.05)
    list(by_time.run(slow([_scored(i * 2, 2) for i in range(4)], 0.06)))
    assert work.done_ranges() == {0: [(0, 2), (2, 4), (4, 6), (6, 8)]}
    assert work.totals() == {"records": 8, "documents_scored": 8, "tokens_scored": 16,
                             "rejected": 0}


def test_unmarked_chunks_are_redone(tmp_path: Path) -> None:
    work = WorkDir(tmp_path)
    work.start({"a": 1}, resume=False)
    work.write_chunk(_scored(0, 4))
    (work.done / "00000-000000000000.json").unlink()  # killed between chunk and marker
    work.start({"a": 1}, resume=True)
    assert work.done_ranges() == {} and not list(work.scores.iterdir())
    with pytest.raises(Exception, match="a changed"):
        work.start({"a": 2}, resume=True)


class _CountingBackend(FakeBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    async def score(self, texts: Sequence[str]) -> list[TokenLogprobs]:
        self.calls.append(len(texts))
        return await super().score(texts)


@pytest.mark.parametrize(("bad", "calls"), [((), 1), ((5,), 11), ((0, 31), 19), ((3, 4), 15)])
def test_a_refused_text_is_found_by_halving_and_the_rest_stay_packed(
        bad: tuple[int, ...], calls: int) -> None:
    good = ["the cat sat " + "on the mat " * (i + 1) for i in range(32)]
    # a refused text is one word as long as the good text it replaces: length order = index
    texts = ["x" * len(t) if i in bad else t for i, t in enumerate(good)]
    backend = _CountingBackend()
    step = Score(backend, batch_size=32)
    seqs, reasons = step._score_texts(backend, texts)
    step.close()
    assert [i for i, r in enumerate(reasons) if r] == sorted(bad)
    assert all("cannot score (fake-lm)" in str(reasons[i]) for i in bad)
    assert [i for i, s in enumerate(seqs) if s is None] == sorted(bad)
    alone = _CountingBackend()
    for i, text in enumerate(texts):
        if i not in bad:
            [ref] = asyncio.run(alone.score([text]))
            seq = seqs[i]
            assert seq is not None and seq.logprobs.tolist() == ref.logprobs.tolist()
    assert len(backend.calls) == calls
    assert sum(n for n in backend.calls if n == 1) <= len(bad) * 2  # singles only near culprits
