"""Pass 1's work list: the ranges of records still to score, as task tables (`TASK_SCHEMA`).

Both engines get the same kind of list; the local engine runs it in order, the Ray engine
hands one range to each free worker. A range of an uncompressed input starts reading at an
indexed byte offset; a compressed one reads (and skips) from the start of its stream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa

from router.select.sources import Mark, Source, SourceIndex
from router.select.steps import TASK_SCHEMA
from router.select.workdir import Range


@dataclass(frozen=True)
class Task:
    source: Source
    start: int
    stop: int
    mark: Mark

    @property
    def records(self) -> int:
        return self.stop - self.start


def gaps(count: int, done: Sequence[Range]) -> list[Range]:
    """The ranges of [0, count) not covered by `done`.

    Example: gaps(10, [(0, 3), (5, 7)]) -> [(3, 5), (7, 10)].
    """
    out: list[Range] = []
    at = 0
    for start, stop in sorted(done):
        if start > at:
            out.append((at, min(start, count)))
        at = max(at, stop)
    if at < count:
        out.append((at, count))
    return [(a, b) for a, b in out if b > a]


def plan_tasks(sources: Sequence[Source], indexes: Mapping[int, SourceIndex],
               done: Mapping[int, Sequence[Range]], *, max_records: int) -> list[Task]:
    """Every unscored range, cut into tasks of at most `max_records` records.

    Example: one input of 10 records, (0, 3) done, max_records 4 -> tasks [3, 7) and [7, 10).
    """
    tasks: list[Task] = []
    for src in sources:
        index = indexes[src.index]
        for start, stop in gaps(index.count, done.get(src.index, ())):
            for a in range(start, stop, max_records):
                b = min(a + max_records, stop)
                tasks.append(Task(src, a, b, index.mark_before(a)))
    return tasks


def tasks_table(tasks: Sequence[Task]) -> pa.Table:
    return pa.Table.from_pylist([
        {"path": t.source.path, "index": t.source.index, "format": t.source.format,
         "compression": t.source.compression, "start": t.start, "stop": t.stop,
         "offset": t.mark.offset, "offset_seq": t.mark.seq, "offset_line": t.mark.line}
        for t in tasks], schema=TASK_SCHEMA)
