"""Threshold fitting for `router calibrate`: a target escalation rate, or risk control.

    fit_rate(scores, 0.3)                 -> escalate the least confident 30%
    fit_risk(scores, correct, 0.1)        -> accept as many as possible while the accepted
                                             answers' error rate stays <= 10%

Scores are tier 0's confidences (higher = more confident); a policy escalates `score < t`.
NaN scores always escalate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from router.decision import finite, passes
from router.errors import PolicyError
from router.policy import threshold_for_rate


@dataclass(frozen=True)
class Fit:
    threshold: float
    escalation_rate: float  # realised on the fitting data
    accepted: int
    n: int
    accepted_error: float | None = None  # risk control: error rate among accepted answers
    error_bound: float | None = None  # the bound that was held (empirical or upper confidence)


def escalation_rate(scores: npt.ArrayLike, threshold: float) -> float:
    """Fraction of scores a threshold policy escalates (NaN escalates).
    Example: ([1, 2, 3, nan], 2.5) -> 0.75."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return float("nan")
    return float(1.0 - passes(s, threshold).mean())


def fit_rate(scores: npt.ArrayLike, rate: float) -> Fit:
    """The threshold that escalates fraction `rate` of these scores (ties stay together)."""
    s = np.asarray(scores, dtype=np.float64)
    fin = finite(s)
    # NaN scores escalate anyway: take them out of the rate the threshold has to produce
    n_nan = s.size - fin.size
    if fin.size == 0:
        raise PolicyError("cannot fit a threshold: no finite scores")
    target = min(1.0, max(0.0, (rate * s.size - n_nan) / fin.size))
    t = threshold_for_rate(fin, target)
    esc = escalation_rate(s, t)
    return Fit(threshold=t, escalation_rate=esc, accepted=round((1 - esc) * s.size),
               n=int(s.size))


def wilson_upper(errors: npt.ArrayLike, n: npt.ArrayLike, confidence: float) -> np.ndarray:
    """One-sided Wilson upper confidence bound of a binomial rate.
    Example: (0, 10, 0.9) -> about 0.141."""
    e = np.asarray(errors, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    z = NormalDist().inv_cdf(confidence)
    p = e / m
    denom = 1 + z * z / m
    centre = p + z * z / (2 * m)
    half = z * np.sqrt(p * (1 - p) / m + z * z / (4 * m * m))
    return np.asarray((centre + half) / denom, dtype=np.float64)


def fit_risk(scores: npt.ArrayLike, correct: npt.ArrayLike, max_error: float,
             confidence: float | None = None) -> Fit:
    """The lowest threshold (fewest escalations) whose accepted answers have an error rate
    <= `max_error` on these labels; with `confidence`, its Wilson upper bound must be.

    Only thresholds between distinct scores are candidates, so tied scores share a decision.
    Example: scores [4, 3, 2, 1], correct [1, 1, 0, 1], max_error 0.25 -> accept all 4
    (1 error in 4); max_error 0.2 -> accept the top 2 (threshold 2.5).
    """
    if not 0.0 <= max_error < 1.0:
        raise PolicyError(f"max error must be in [0, 1), got {max_error}")
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(correct).astype(bool)
    n = s.size
    fin = np.isfinite(s)
    if not fin.any():
        raise PolicyError("cannot fit a threshold: no finite scores")
    order = np.argsort(-s[fin], kind="stable")
    ranked, ok = s[fin][order], y[fin][order]  # (m,) descending scores and their labels
    m = ranked.size
    k = np.arange(1, m + 1)
    wrong = np.cumsum(~ok)
    boundary = np.concatenate([ranked[1:] < ranked[:-1], [True]])  # k is a tie boundary
    err = wrong / k
    bound = err if confidence is None else wilson_upper(wrong, k, confidence)
    valid = boundary & (bound <= max_error + 1e-12)
    if not valid.any():
        t = float(np.nextafter(ranked[0], math.inf))  # escalate everything
        return Fit(t, 1.0, 0, n, None, None)
    best = int(np.flatnonzero(valid)[-1])  # index of the last accepted answer
    accepted = best + 1
    t = float(ranked[best]) if accepted == m else float((ranked[best] + ranked[best + 1]) / 2)
    return Fit(threshold=t, escalation_rate=1.0 - accepted / n, accepted=accepted, n=n,
               accepted_error=float(err[best]), error_bound=float(bound[best]))
