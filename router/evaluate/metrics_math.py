"""Cascade metrics as pure numpy functions: AUROC, deferral curves, PGR, routing baselines.

Conventions: `scores` are tier 0's confidences (higher = more confident; NaN = nothing to
score, treated as the least confident, as the serving cascade does); `small` and `large` are
0/1 correctness of the two tiers on the same prompts. Escalating `k` of `n` prompts means the
k least confident ones answer with the large tier. Ties in the score are broken at random, and
every figure is the *expectation* over that tie-breaking, so no figure depends on input order.

    auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) -> 0.75
    deferral_curve(scores, small, large) -> (n+1,) quality after escalating k = 0..n prompts
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
RATES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)


TIE_DECIMALS = 9  # scores equal to 1e-9 are ties: float noise must not order equal answers


def _clean(scores: npt.ArrayLike) -> FloatArray:
    """NaN -> -inf (least confident), rounded to TIE_DECIMALS. Example: [1, nan] -> [1, -inf]."""
    arr = np.round(np.asarray(scores, dtype=np.float64), TIE_DECIMALS)
    return np.where(np.isnan(arr), -np.inf, arr)


def average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, ties get their mean rank. Example: [10, 20, 10] -> [1.5, 3, 1.5]."""
    order = np.argsort(values, kind="stable")
    ranked = values[order]
    n = len(values)
    # boundaries of runs of equal values in sorted order
    new_run = np.concatenate([[True], ranked[1:] != ranked[:-1]])
    run_id = np.cumsum(new_run) - 1  # (n,) run index of each sorted position
    starts = np.flatnonzero(new_run)
    ends = np.concatenate([starts[1:], [n]])
    mean_rank = (starts + 1 + ends) / 2.0  # mean of 1-based positions start+1 .. end
    out = np.empty(n, dtype=np.float64)
    out[order] = mean_rank[run_id]
    return out


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the Mann-Whitney U statistic
    over n_pos * n_neg. NaN when either class is empty.

    Example: auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) -> 0.75
    """
    s = _clean(scores)
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def tie_mean(scores: FloatArray, values: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Sort by score ascending and replace each value by the mean over its tie group, so a
    prefix sum is the expected sum under random tie-breaking.

    Example: scores [2, 1, 1], values [5, 0, 4] -> (sorted scores [1, 1, 2], [2, 2, 5]).
    """
    order = np.argsort(scores, kind="stable")
    s, v = scores[order], values[order]
    new_run = np.concatenate([[True], s[1:] != s[:-1]]) if len(s) else np.zeros(0, bool)
    run_id = np.cumsum(new_run) - 1
    sums = np.bincount(run_id, weights=v)
    counts = np.bincount(run_id)
    return s, (sums / counts)[run_id]


def escalation_prefix(scores: npt.ArrayLike, values: npt.ArrayLike) -> FloatArray:
    """(n+1,) expected sum of `values` over the k least confident prompts, k = 0..n.

    Example: scores [3, 1, 2], values [1, 10, 100] -> [0, 10, 110, 111].
    """
    s = _clean(scores)
    v = np.asarray(values, dtype=np.float64)
    _, mean_v = tie_mean(s, v)
    return np.concatenate([[0.0], np.cumsum(mean_v)])


def deferral_curve(scores: npt.ArrayLike, small: npt.ArrayLike,
                   large: npt.ArrayLike) -> FloatArray:
    """(n+1,) quality (mean correctness) after escalating the k least confident, k = 0..n.

    Example: scores [3, 1, 2], small [1, 0, 0], large [1, 1, 0] -> [1/3, 2/3, 2/3, 2/3].
    """
    s_ok = np.asarray(small, dtype=np.float64)
    l_ok = np.asarray(large, dtype=np.float64)
    n = len(s_ok)
    if n == 0:
        return np.zeros(1)
    gain = escalation_prefix(scores, l_ok - s_ok)
    return np.asarray((s_ok.sum() + gain) / n, dtype=np.float64)


def oracle_curve(small: npt.ArrayLike, large: npt.ArrayLike) -> FloatArray:
    """(n+1,) the best quality reachable escalating exactly k prompts: the ones the large tier
    fixes first, harmless ones next, the ones it breaks last."""
    s_ok = np.asarray(small, dtype=np.float64)
    l_ok = np.asarray(large, dtype=np.float64)
    return deferral_curve(-(l_ok - s_ok), s_ok, l_ok)


def random_curve(small: npt.ArrayLike, large: npt.ArrayLike) -> FloatArray:
    """(n+1,) expected quality of escalating k prompts chosen at random: a straight line."""
    s_ok = np.asarray(small, dtype=np.float64)
    l_ok = np.asarray(large, dtype=np.float64)
    n = len(s_ok)
    k = np.arange(n + 1, dtype=np.float64)
    if n == 0:
        return np.zeros(1)
    return np.asarray(s_ok.mean() + k / n * (l_ok.mean() - s_ok.mean()), dtype=np.float64)


def curve_area(curve: FloatArray) -> float:
    """Area under a (n+1,)-point curve over escalation fraction 0..1 (trapezoids).

    Example: [0, 1] -> 0.5; a flat curve at q -> q.
    """
    n = len(curve) - 1
    if n <= 0:
        return float(curve[0]) if len(curve) else float("nan")
    return float((curve[:-1] + curve[1:]).sum() / (2.0 * n))


def k_for_rate(rate: float, n: int) -> int:
    """Prompts escalated at `rate` (rounded like router.policy.threshold_for_rate)."""
    return min(n, max(0, round(rate * n)))


def at_rate(curve: FloatArray, rate: float) -> float:
    """A (n+1,)-point curve's value at escalation fraction `rate`."""
    return float(curve[k_for_rate(rate, len(curve) - 1)])


def pgr(quality: float, p_small: float, p_large: float) -> float:
    """Performance gap recovered: (quality - P_small) / (P_large - P_small); NaN when the
    tiers are equally good. Example: pgr(0.7, 0.6, 0.8) -> 0.5."""
    gap = p_large - p_small
    if gap == 0:
        return float("nan")
    return (quality - p_small) / gap


def cascade_cost_curve(scores: npt.ArrayLike, small_cost: npt.ArrayLike,
                       large_cost: npt.ArrayLike) -> FloatArray:
    """(n+1,) mean cost per prompt when the k least confident escalate: every prompt pays the
    small tier, escalated ones pay the large tier too."""
    c_s = np.asarray(small_cost, dtype=np.float64)
    n = len(c_s)
    if n == 0:
        return np.zeros(1)
    return np.asarray((c_s.sum() + escalation_prefix(scores, large_cost)) / n, dtype=np.float64)


def random_cost_curve(small_cost: npt.ArrayLike, large_cost: npt.ArrayLike) -> FloatArray:
    c_s = np.asarray(small_cost, dtype=np.float64)
    c_l = np.asarray(large_cost, dtype=np.float64)
    n = len(c_s)
    if n == 0:
        return np.zeros(1)
    k = np.arange(n + 1, dtype=np.float64)
    return np.asarray(c_s.mean() + k / n * c_l.mean(), dtype=np.float64)


def oracle_cost_curve(small: npt.ArrayLike, large: npt.ArrayLike, small_cost: npt.ArrayLike,
                      large_cost: npt.ArrayLike) -> FloatArray:
    """Cost of the oracle's escalation order (the one `oracle_curve` uses)."""
    gain = np.asarray(large, dtype=np.float64) - np.asarray(small, dtype=np.float64)
    return cascade_cost_curve(-gain, small_cost, large_cost)


def precision_recall(kept: npt.ArrayLike, good: npt.ArrayLike) -> tuple[float, float, float]:
    """Precision and recall of the kept set against `good` labels, and their F1.

    Example: kept [1, 1, 0, 0], good [1, 0, 1, 0] -> (0.5, 0.5, 0.5). NaN when undefined.
    """
    k = np.asarray(kept).astype(bool)
    g = np.asarray(good).astype(bool)
    tp = float((k & g).sum())
    precision = tp / k.sum() if k.sum() else float("nan")
    recall = tp / g.sum() if g.sum() else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if precision + recall > 0 else float("nan"))
    return float(precision), float(recall), float(f1)
