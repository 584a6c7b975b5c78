"""The `DuplicateIds` step: records that share an id, found over the whole run.

`keep-first`: the first record with an id goes on; every later one is rejected ("duplicate id
'x' (first at FILE:LINE)"). `reject`: every record of a repeated id is rejected (a barrier: the
counts come first). Only usable records count: a rejected record's id is not claimed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from router.select.options import DuplicateIds as Mode
from router.select.steps import Step

EXAMPLES = 10  # repeated ids listed in stats.json and the report


def _with_rejects(table: pa.Table, reasons: dict[int, str]) -> pa.Table:
    if not reasons:
        return table
    reject = table.column("reject").to_pylist()
    for i, why in reasons.items():
        reject[i] = why
    return table.set_column(table.schema.get_field_index("reject"), "reject",
                            pa.array(reject, pa.string()))


def _usable(table: pa.Table) -> Iterator[tuple[int, str, str]]:
    """(row, id, 'file:line') of every row that is not rejected."""
    cols = table.select(["id", "file", "line", "reject"]).to_pydict()
    for i, (rid, file, line, reject) in enumerate(zip(
            cols["id"], cols["file"], cols["line"], cols["reject"], strict=True)):
        if reject is None:
            yield i, rid, f"{file}:{line}"


class DuplicateIds(Step):
    name = "duplicate_ids"

    def __init__(self, mode: Mode) -> None:
        super().__init__()
        self.mode = mode
        self.repeated: Counter[str] = Counter()  # id -> records beyond the first

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        if self.mode == "keep-first":
            yield from self._keep_first(tables)
        else:
            yield from self._reject_all(tables)

    def _keep_first(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        first: dict[str, str] = {}
        for table in tables:
            reasons: dict[int, str] = {}
            for i, rid, where in _usable(table):
                if rid in first:
                    reasons[i] = f"duplicate id {rid!r} (first at {first[rid]})"
                    self.repeated[rid] += 1
                else:
                    first[rid] = where
            self.stat_update("duplicate_records_rejected", float(len(reasons)))
            yield _with_rejects(table, reasons)

    def _reject_all(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        held = list(tables)
        seen: Counter[str] = Counter(rid for t in held for _, rid, _ in _usable(t))
        self.repeated = Counter({rid: n - 1 for rid, n in seen.items() if n > 1})
        for table in held:
            reasons = {i: f"duplicate id {rid!r} ({seen[rid]} records)"
                       for i, rid, _ in _usable(table) if seen[rid] > 1}
            self.stat_update("duplicate_records_rejected", float(len(reasons)))
            yield _with_rejects(table, reasons)

    def summary(self) -> dict[str, Any]:
        rejected = int(self.stats.get("duplicate_records_rejected", 0))
        return {"duplicate_ids": {
            "mode": self.mode, "ids": len(self.repeated), "records_rejected": rejected,
            "examples": sorted(self.repeated, key=lambda k: (-self.repeated[k], k))[:EXAMPLES]}}
