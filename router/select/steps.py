"""The step protocol, its stats, and the schemas of the Arrow tables that flow between steps.

Every step has one signature, `run(tables) -> Iterator[pa.Table]` (datatrove's `PipelineStep`,
on Arrow tables), and `pipe` chains a list of them like datatrove's executor. The engines only
schedule: they feed the same list with task tables (`TASK_SCHEMA`, one row per input range).

A record table has one row per input record, rejected ones too (`record_schema`):

    file        str     the input file
    file_index  int32   its position in the sorted input list
    seq         int64   0-based record number within the file (rejected records count)
    line        int64   1-based line (JSONL, text lines), row (Parquet), 1 (one text per file)
    id          str     the id field, else "file:line"
    text        str     the text to score (null when rejected)
    stratum     str     the --stratify field's value (null without --stratify)
    reject      str     why the record cannot be used (null when fine)
    raw         str     the raw line of a rejected record (null otherwise)

`Score` adds one float64 column per signal plus `tokens`, `bytes`, `model`, `scorer_version`
(and `ref_*` columns and `difference` with a reference model); `Decide` adds `decision`,
`priority` and `weight`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

_RECORD_FIELDS: list[pa.Field[Any]] = [
    pa.field("file", pa.string()), pa.field("file_index", pa.int32()),
    pa.field("seq", pa.int64()), pa.field("line", pa.int64()), pa.field("id", pa.string()),
    pa.field("text", pa.string()), pa.field("stratum", pa.string()),
    pa.field("reject", pa.string()), pa.field("raw", pa.string()),
]
RECORD_SCHEMA = pa.schema(_RECORD_FIELDS)

# one row per range of an input to read: records seq in [start, stop) (stop -1: to the end);
# reading starts at byte `offset` (a record boundary at record `offset_seq`, line `offset_line`)
_TASK_FIELDS: list[pa.Field[Any]] = [
    pa.field("path", pa.string()), pa.field("index", pa.int32()),
    pa.field("format", pa.string()), pa.field("compression", pa.string()),
    pa.field("start", pa.int64()), pa.field("stop", pa.int64()),
    pa.field("offset", pa.int64()), pa.field("offset_seq", pa.int64()),
    pa.field("offset_line", pa.int64()),
]
TASK_SCHEMA = pa.schema(_TASK_FIELDS)


class Stats(dict[str, float]):
    """Named counters that merge with `+`. Example: Stats(a=1) + Stats(a=2, b=1) -> {a: 3, b: 1}."""

    def __add__(self, other: dict[str, float]) -> Stats:  # type: ignore[override]
        out = Stats(self)
        for k, v in other.items():
            out[k] = out.get(k, 0.0) + v
        return out


@dataclass(eq=False)
class Step:
    """One stage of the pipeline: override `run`. Count what it does with `stat_update`.
    Subclasses are dataclasses of their options (or call `super().__init__()`)."""

    name: ClassVar[str] = "step"
    stats: Stats = field(default_factory=lambda: Stats(), init=False)

    def stat_update(self, key: str, value: float = 1.0) -> None:
        self.stats[key] = self.stats.get(key, 0.0) + value

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:  # pragma: no cover
        raise NotImplementedError

    def close(self) -> None:
        """Release what the step holds (a model, open files); called by the engine."""

    def summary(self) -> dict[str, Any]:
        """Sections this step adds to stats.json once its input is done (none by default)."""
        return {}

    def __call__(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        return self.run(tables)


def pipe(steps: Iterable[Step], tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
    """Chain steps like datatrove's executor: each step's output feeds the next.

    Example: pipe([Read(...), Score(...)], [task_table]) -> scored record tables.
    """
    data: Iterable[pa.Table] = tables
    for step in steps:
        data = step(data)
    return iter(data)


def stats_of(steps: Iterable[Step]) -> Stats:
    """The merged stats of steps (datatrove's `sum(stats, start=PipelineStats())`)."""
    return sum((s.stats for s in steps), start=Stats())
