"""The one decision rule, and serve, select and calibrate agreeing on it (NaN included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.calibrate.fit import escalation_rate
from router.decision import early_escalates, escalates, finite, passes, rank, scorable
from router.policy import Policy, ThresholdRule, keep_interval
from router.scoring import SignalSpec
from router.select.decide import cut_points, decide
from router.serve.online import ThresholdDecider

score = st.one_of(st.floats(-10, 10), st.just(math.nan), st.just(math.inf), st.just(-math.inf))


def test_documented_examples() -> None:
    assert passes([-1.0, -3.0, math.nan], -2.0).tolist() == [True, False, False]
    assert passes([1.0, 2.0, 3.0], [0.0, 2.5, 0.0], [1.0, 3.0, 2.0]).tolist() == [
        True, False, False]
    assert escalates(-3.0, -2.0) and not escalates(-1.0, -2.0) and escalates(math.nan, -2.0)
    assert early_escalates(-3.0, -2.0) and not early_escalates(math.nan, -2.0)
    assert scorable(1.5) and not scorable(math.nan)
    assert finite([1.0, math.nan, 2.0]).tolist() == [1.0, 2.0]
    assert max([math.nan, -3.0, -1.0], key=rank) == -1.0 and rank(None) == -math.inf


@given(st.lists(score, min_size=1, max_size=30), st.floats(-5, 5))
@settings(max_examples=200, deadline=None)
def test_serve_select_and_calibrate_apply_the_same_rule(scores: list[float], t: float) -> None:
    """Serve escalates exactly what select (keep_above t) drops; calibrate counts the same."""
    values = np.array(scores, np.float64)
    serve = ThresholdDecider(SignalSpec("mean_logprob"), t)
    escalated = np.array([serve.decide(s) for s in scores])
    policy = Policy("p", SignalSpec("mean_logprob"), ThresholdRule(keep_above=t))
    kept = decide(values, cut_points(policy, values))
    assert (escalated == ~kept).all()
    assert (escalated == ~passes(values, t)).all()
    assert escalation_rate(values, t) == pytest.approx(escalated.mean())
    assert all(early_escalates(s, t) <= e for s, e in zip(scores, escalated, strict=True))


def test_unscorable_scores_are_left_out_of_every_fit() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, math.nan, math.inf])
    assert keep_interval(ThresholdRule(keep_above=0.0), values) == (0.0, math.inf)
    policy = Policy("p", SignalSpec("mean_logprob"), ThresholdRule(keep_above=0.0))
    assert decide(values, cut_points(policy, values)).tolist() == [True] * 4 + [False] * 2
