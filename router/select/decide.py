"""Decisions from scores: exact cut points over the complete score column (optionally per
stratum), keep/drop per record, and the priority rank and sampling weight of kept records.

Only scores are read here, never text: pass 1 wrote them, pass 2 cuts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.decision import passes
from router.errors import PolicyError
from router.policy import DifferenceRule, Policy, keep_interval

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
GLOBAL = "*"  # the stratum key when there is no --stratify


def decision_column(policy: Policy) -> str:
    """The score column a policy cuts: 'difference' for Moore-Lewis, else the signal's key."""
    return "difference" if isinstance(policy.rule, DifferenceRule) else policy.signal.key


@dataclass(frozen=True)
class Cuts:
    """Kept interval [lo, hi] per stratum (GLOBAL without stratification)."""

    intervals: Mapping[str, tuple[float, float]]

    def interval(self, stratum: str | None) -> tuple[float, float]:
        key = GLOBAL if stratum is None else stratum
        if key not in self.intervals:  # a stratum with no finite score: keep nothing
            return (math.inf, -math.inf)
        return self.intervals[key]

    def as_json(self) -> dict[str, list[float | None]]:
        return {k: [_j(lo), _j(hi)] for k, (lo, hi) in self.intervals.items()}


def _j(x: float) -> float | None:
    return x if math.isfinite(x) else None


def cut_points(policy: Policy, values: FloatArray, strata: list[str | None] | None = None) -> Cuts:
    """Cut points of `policy` from the complete column of `values` (NaN = unscorable).

    Example: top_fraction keep 0.5 over [1, 2, 3, 4] -> {'*': (3.0, inf)}.
    With strata, each value of the stratify field gets its own interval (CCNet per language).
    """
    rule = policy.rule
    if strata is None:
        return Cuts({GLOBAL: keep_interval(rule, values)})
    keys = np.asarray(["(missing)" if s is None else s for s in strata], dtype=object)
    out: dict[str, tuple[float, float]] = {}
    for key in sorted(set(keys.tolist())):
        out[str(key)] = keep_interval(rule, values[keys == key])
    return Cuts(out)


def decide(values: FloatArray, cuts: Cuts, strata: list[str | None] | None = None) -> BoolArray:
    """Kept mask: the value passes lo..hi of the record's stratum (NaN is never kept)."""
    if strata is None:
        return passes(values, *cuts.interval(None))
    los = np.array([cuts.interval(s if s is not None else "(missing)")[0] for s in strata])
    his = np.array([cuts.interval(s if s is not None else "(missing)")[1] for s in strata])
    return passes(values, los, his)


def priorities(values: FloatArray) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """Rank (1 = highest score, ties by input order) and sampling weight of kept records.

    The weight is linear in the rank and averages 1: 2 * (n - rank + 1) / (n + 1).
    Example: [0.5, 0.9, 0.1] -> ranks [2, 1, 3], weights [1.0, 1.5, 0.5].
    """
    n = len(values)
    order = np.lexsort((np.arange(n), -values))  # descending value, stable
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    weight = 2.0 * (n - rank + 1) / (n + 1) if n else np.zeros(0)
    return rank, np.asarray(weight, dtype=np.float64)


def check_signal(policy: Policy, columns: list[str], where: str) -> str:
    col = decision_column(policy)
    if col not in columns:
        have = ", ".join(c for c in columns if c not in {"file", "id", "raw", "reject"})
        raise PolicyError(f"{where}: no score column {col!r} (have: {have})")
    return col
