"""The step protocol, stats and the record schema every step speaks.

A batch is a `pyarrow.Table` with these columns (one row per input record, rejected ones too):

    file        str     the input file
    file_index  int32   its position in the sorted input list
    seq         int64   0-based record number within the file (rejected records count)
    line        int64   1-based line (JSONL, text lines), row (Parquet), 1 (one text per file)
    id          str     the id field, else "file:line"
    text        str     the text to score (null when rejected)
    stratum     str     the --stratify field's value (null without --stratify)
    reject      str     why the record cannot be used (null when fine)
    raw         str     the raw line of a rejected record (null otherwise)

The scorer step adds one float64 column per signal plus `tokens`, `bytes`, `model`,
`scorer_version` (and `ref_*` columns and `difference` with a reference model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import pyarrow as pa

Batch: TypeAlias = Any  # a pyarrow.Table (pyarrow ships no type hints)

RECORD_COLUMNS = ("file", "file_index", "seq", "line", "id", "text", "stratum", "reject", "raw")


def record_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("file", pa.string()), ("file_index", pa.int32()), ("seq", pa.int64()),
        ("line", pa.int64()), ("id", pa.string()), ("text", pa.string()),
        ("stratum", pa.string()), ("reject", pa.string()), ("raw", pa.string()),
    ])


class Stats(dict[str, float]):
    """Named counters that merge with `+`. Example: Stats(a=1) + Stats(a=2, b=1) -> {a: 3, b: 1}."""

    def __add__(self, other: dict[str, float]) -> Stats:  # type: ignore[override]
        out = Stats(self)
        for k, v in other.items():
            out[k] = out.get(k, 0.0) + v
        return out

    def update_stat(self, key: str, value: float = 1.0) -> None:
        self[key] = self.get(key, 0.0) + value


class Step:
    """One stage of the pipeline: override `run` (or a hook of a subclass)."""

    name = "step"

    def __init__(self) -> None:
        self.stats = Stats()

    def stat_update(self, key: str, value: float = 1.0) -> None:
        self.stats.update_stat(key, value)

    def run(self, batches: Iterable[Batch]) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        return self.run(batches)


def pipe(steps: Iterable[Step], batches: Iterable[Batch]) -> Iterator[Batch]:
    """Chain steps like datatrove's executor: each step's output feeds the next."""
    data: Iterable[Batch] = batches
    for step in steps:
        data = step(data)
    return iter(data)
