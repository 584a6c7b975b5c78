"""Pass 2's deciding steps: `CutPoints` (cut points from the complete score column) and `Decide`
(keep/drop per record, the priority rank and sampling weight of kept records).

Both are barriers: a cut point or a rank needs every score first. They hold the score tables
of the run (scores, never text) and let them through once the whole column is known. The math
is `router.select.decide`'s; these steps only gather columns and spread results back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.errors import InputError
from router.policy import Policy
from router.select.decide import (
    Cuts,
    FloatArray,
    check_signal,
    cut_points,
    decide,
    decision_column,
    priorities,
)
from router.select.steps import Step

CUTS_KEY = b"router.cut_points"  # schema metadata: the cut points, as JSON


def cuts_from_json(data: dict[str, list[float | None]]) -> Cuts:
    """The inverse of `Cuts.as_json`. Example: {'*': [-1.5, None]} -> Cuts({'*': (-1.5, inf)})."""
    return Cuts({k: (-math.inf if lo is None else lo, math.inf if hi is None else hi)
                 for k, (lo, hi) in data.items()})


def valid_mask(table: pa.Table) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Rows that are not rejected."""
    return np.asarray(pc.is_null(table.column("reject")).to_numpy(zero_copy_only=False))


def _column(tables: Sequence[pa.Table], masks: Sequence[np.ndarray[Any, Any]],
            name: str) -> FloatArray:
    parts = [np.asarray(t.column(name).to_numpy(zero_copy_only=False), np.float64)[m]
             for t, m in zip(tables, masks, strict=True)]
    return np.concatenate(parts) if parts else np.zeros(0)


def _strata(tables: Sequence[pa.Table], masks: Sequence[np.ndarray[Any, Any]]
            ) -> list[str | None]:
    out: list[str | None] = []
    for t, m in zip(tables, masks, strict=True):
        col = t.column("stratum").to_pylist()
        out.extend(s for s, ok in zip(col, m, strict=True) if ok)
    return out


@dataclass(eq=False)
class CutPoints(Step):
    """Cut points of `policy` over every valid record; tables pass on carrying them in their
    schema metadata (`CUTS_KEY`). `where` names the scores in error messages."""

    name = "cut_points"
    policy: Policy
    stratify: bool
    where: str
    cuts: Cuts | None = field(default=None, init=False)

    @property
    def column(self) -> str:
        return decision_column(self.policy)

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        held = [t for t in tables if t.num_rows]
        masks = [valid_mask(t) for t in held]
        models: set[str] = set()
        for t, m in zip(held, masks, strict=True):
            check_signal(self.policy, t.column_names, self.where)
            ok = t.filter(pa.array(m))
            models.update(f"{a} (scorer {b})" for a, b in zip(
                ok.column("model").to_pylist(), ok.column("scorer_version").to_pylist(),
                strict=True))
        if len(models) > 1:
            raise InputError(f"scores from different models cannot be cut together: "
                             f"{', '.join(sorted(models))}")
        values = _column(held, masks, self.column)
        strata = _strata(held, masks) if self.stratify else None
        if strata and not any(s is not None for s in strata):
            raise InputError(f"{self.where}: scored without --stratify; rescore to stratify")
        self.cuts = cut_points(self.policy, values, strata)
        meta = json.dumps(self.cuts.as_json()).encode()
        self.stat_update("records_cut", float(values.size))
        for t in held:
            yield t.replace_schema_metadata({**(t.schema.metadata or {}), CUTS_KEY: meta})

    def summary(self) -> dict[str, Any]:
        return {"signal": self.column,
                "cut_points": self.cuts.as_json() if self.cuts is not None else {}}


class Decide(Step):
    """Adds `decision` (kept | dropped | rejected), `priority` and `weight` (kept records)."""

    name = "decide"

    def __init__(self, policy: Policy, *, stratify: bool) -> None:
        super().__init__()
        self.column = decision_column(policy)
        self.stratify = stratify

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        held = list(tables)
        if not held:
            return
        meta = held[0].schema.metadata or {}
        cuts = cuts_from_json(json.loads(meta[CUTS_KEY]))
        masks = [valid_mask(t) for t in held]
        values = _column(held, masks, self.column)  # (valid records,)
        strata = _strata(held, masks) if self.stratify else None
        kept = decide(values, cuts, strata)
        rank, weight = priorities(values[kept])
        rank_all = np.zeros(values.size, np.int64)
        rank_all[kept] = rank
        weight_all = np.full(values.size, np.nan)
        weight_all[kept] = weight
        offset = 0
        for t, ok in zip(held, masks, strict=True):
            n_ok = int(ok.sum())
            yield self._decided(t, ok, kept[offset:offset + n_ok],
                                rank_all[offset:offset + n_ok], weight_all[offset:offset + n_ok])
            offset += n_ok

    def _decided(self, t: pa.Table, ok: np.ndarray[Any, Any], kept: np.ndarray[Any, Any],
                 rank: np.ndarray[Any, Any], weight: FloatArray) -> pa.Table:
        n = t.num_rows
        rows = np.flatnonzero(ok)
        decision = np.full(n, "rejected", dtype=object)
        decision[rows[kept]] = "kept"
        decision[rows[~kept]] = "dropped"
        prio = np.zeros(n, np.int64)
        prio[ok] = rank
        wt = np.full(n, np.nan)
        wt[ok] = weight
        is_kept = decision == "kept"
        self.stat_update("kept", float(is_kept.sum()))
        self.stat_update("dropped", float(len(rows) - is_kept.sum()))
        t = t.append_column("decision", pa.array(decision.tolist(), pa.string()))
        t = t.append_column("priority", pa.array(prio, pa.int64(), mask=~is_kept))
        return t.append_column("weight", pa.array(wt, pa.float64(), mask=~is_kept))
