"""Online serving policies: fixed threshold and a target rate held under drift."""

from __future__ import annotations

import math

import numpy as np
import pytest
from serve_helpers import REPO

from router.policy import Policy, TargetRateRule, ThresholdRule, load_policy
from router.scoring import SignalSpec
from router.serve.online import TargetRateDecider, ThresholdDecider, decider_for

SIGNAL = SignalSpec("quantile_logprob", q=0.1)


def test_threshold_escalates_below_and_nan() -> None:
    d = ThresholdDecider(SIGNAL, -2.3)
    assert d.decide(-2.4) and not d.decide(-2.3) and not d.decide(-0.1)
    assert d.decide(math.nan)


@pytest.mark.parametrize("window", [200, 1000])
@pytest.mark.parametrize("shift", [(-1.5, 1.5), (2.0, 0.5), (-3.0, 0.3)])
def test_target_rate_holds_under_drift(window: int, shift: tuple[float, float]) -> None:
    """2,000 requests at target 0.3; the score distribution shifts half-way. The escalation
    rate over the last 500 requests of each half stays within 0.3 +/- 0.05."""
    rng = np.random.default_rng(7)
    d = TargetRateDecider(SIGNAL, TargetRateRule(0.3, window=window, initial_threshold=-2.3))
    first = rng.normal(-1.5, 1.0, 1000)
    second = rng.normal(-1.5 + shift[0], shift[1], 1000)
    escalated = np.array([d.decide(float(s)) for s in np.concatenate([first, second])])
    assert abs(escalated[500:1000].mean() - 0.3) <= 0.05
    assert abs(escalated[1500:].mean() - 0.3) <= 0.05


def test_target_rate_uses_initial_threshold_until_min_samples() -> None:
    d = TargetRateDecider(SIGNAL, TargetRateRule(0.5, window=100, initial_threshold=-1.0,
                                                 min_samples=10))
    assert d.threshold == -1.0
    for s in range(20):
        d.decide(float(s))
    assert d.threshold != -1.0
    assert d.decide(math.nan)  # NaN escalates and is not part of the window
    assert d.n_scores == 20


def test_presets_become_deciders() -> None:
    from router.learned import LearnedSignal

    policy = load_policy(REPO / "policies/support-cascade.yaml")
    cascade = decider_for(policy)
    assert isinstance(cascade, ThresholdDecider) and isinstance(policy.signal, LearnedSignal)
    assert cascade.threshold == policy.calibration["threshold"]
    assert policy.signal.fitted["model"] == "smollm2-135m-instruct"
    rate = decider_for(load_policy(REPO / "policies/support-target-rate.yaml"))
    assert isinstance(rate, TargetRateDecider) and rate.threshold == -0.2279


def test_selection_rule_cannot_serve() -> None:
    from router.errors import PolicyError

    with pytest.raises(PolicyError):
        decider_for(Policy("p", SIGNAL, ThresholdRule(keep_above=-1.0)))
