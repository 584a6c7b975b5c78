"""Scores -> decisions: the one rule that `serve`, `select`, `calibrate` and `eval` apply.

A score *passes* an interval when it is scorable and lo <= score <= hi. A score that is not
finite (NaN: nothing to score, e.g. an empty answer or a top-k signal without top-k) never
passes and is left out of every fitted distribution:

    serve     escalates(score, threshold)    = not passes(score, threshold)   NaN escalates
    select    passes(values, lo, hi)         keep mask, per-record lo/hi      NaN is dropped
    fitting   finite(scores)                 what thresholds and cuts are fitted on
    streams   early_escalates(running, t)    abort mid-stream only on a scorable score below
                                             t; an unscorable running score waits for tokens
    fallback  rank(score)                    unscorable answers rank below every other one

The stateful serving rules (online threshold) live in `serve/online.py`, the per-stratum cuts
in `select/decide.py`, the fitting of a policy's rule in `policy.py`; all of them decide here.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def passes(scores: npt.ArrayLike, lo: npt.ArrayLike,
           hi: npt.ArrayLike = math.inf) -> BoolArray:
    """Scorable scores with lo <= score <= hi (lo/hi broadcast: one per record, or one).

    Example: passes([-1, -3, nan], -2) -> [True, False, False].
    """
    s = np.asarray(scores, dtype=np.float64)
    low, high = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    return np.asarray(np.isfinite(s) & (s >= low) & (s <= high), dtype=np.bool_)


def escalates(score: float, threshold: float) -> bool:
    """Serve's decision on one answer: escalate unless it passes the threshold.

    Example: (-3, -2) -> True, (-1, -2) -> False, (nan, -2) -> True.
    """
    # `passes` on one score, without numpy's per-call cost (once per answer, every request)
    return not (math.isfinite(score) and score >= threshold)


def early_escalates(running: float, threshold: float) -> bool:
    """Abort a stream mid-way: only a scorable running score below the threshold counts (an
    unscorable one is judged again when the buffer is complete).

    Example: (-3, -2) -> True, (nan, -2) -> False.
    """
    return math.isfinite(running) and running < threshold


def scorable(score: float) -> bool:
    """Whether a score carries information (enters online windows and fitted distributions).

    Example: 1.5 -> True, nan -> False.
    """
    return math.isfinite(score)


def finite(scores: npt.ArrayLike) -> FloatArray:
    """The scorable scores, in order: what thresholds and cut points are fitted on.

    Example: [1, nan, 2] -> [1, 2].
    """
    s = np.asarray(scores, dtype=np.float64)
    return s[np.isfinite(s)]


def rank(score: float | None) -> float:
    """Sort key of an answer's confidence: unscorable (None, NaN) ranks below every score.

    Example: max([nan, -3, -1], key=rank) -> -1.
    """
    return score if score is not None and math.isfinite(score) else -math.inf
