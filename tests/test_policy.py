from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.errors import PolicyError
from router.policy import (
    BandRule,
    TargetRateRule,
    ThresholdRule,
    TopFractionRule,
    keep_interval,
    load_policy,
    policy_from_dict,
    save_policy,
    threshold_for_rate,
)

PRESETS = sorted(Path(__file__).resolve().parent.parent.joinpath("policies").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    policy = load_policy(path)
    again = load_policy(save_policy(policy, tmp_path / path.name))
    assert (again.name, again.signal, again.rule) == (policy.name, policy.signal, policy.rule)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"rule": {"kind": "threshold", "escalate_below": -1}}, "missing key 'signal'"),
        ({"signal": "nope", "rule": {"kind": "threshold", "escalate_below": -1}}, "unknown signal"),
        ({"signal": "mean_logprob", "rule": {"kind": "magic"}}, "rule.kind must be one of"),
        ({"signal": "mean_logprob", "rule": {"kind": "threshold"}}, "needs escalate_below"),
        ({"signal": "mean_logprob", "rule": {"kind": "top_fraction", "keep": 2}}, "in \\[0, 1\\]"),
        (
            {"signal": "mean_logprob", "rule": {"kind": "band", "keep_quantiles": [0.6, 0.1]}},
            "lo < hi",
        ),
        (
            {"signal": "mean_logprob", "rule": {"kind": "threshold", "escalate_below": -1, "x": 1}},
            "rule.x is not a key",
        ),
        (
            {"signal": "mean_logprob", "rule": {"kind": "band", "criterion": "huge"}},
            "low, medium or high",
        ),
    ],
)
def test_bad_policies_name_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        policy_from_dict(raw, "p.yaml")


def test_serving_and_selection_rules_are_kept_apart() -> None:
    serve = policy_from_dict(
        {"signal": "mean_logprob", "rule": {"kind": "threshold", "escalate_below": -1}}
    )
    serve.for_serving()
    with pytest.raises(PolicyError, match="cannot select data"):
        serve.for_selection()
    band = policy_from_dict(
        {"signal": "logprob_per_byte", "rule": {"kind": "band", "criterion": "low", "keep": 0.3}}
    )
    assert isinstance(band.rule, BandRule) and band.rule.keep_quantiles == pytest.approx((0.7, 1))
    with pytest.raises(PolicyError, match="cannot drive a cascade"):
        band.for_serving()


def test_threshold_for_rate_escalates_that_fraction() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(-2, 1, 10_000)
    for rate in (0.0, 0.1, 0.3, 0.5, 1.0):
        t = threshold_for_rate(scores, rate)
        assert np.mean(scores < t) == pytest.approx(rate, abs=1e-3)
    assert threshold_for_rate([1, 2, 3, 4], 0.25) == 1.5
    with pytest.raises(PolicyError, match="no finite scores"):
        threshold_for_rate([math.nan], 0.3)


def test_keep_intervals() -> None:
    scores = np.arange(100, dtype=float)
    lo, hi = keep_interval(TopFractionRule(keep=0.25), scores)
    assert np.sum((scores >= lo) & (scores <= hi)) == 25
    lo, hi = keep_interval(BandRule(keep_quantiles=(0.1, 0.6)), scores)
    assert np.sum((scores >= lo) & (scores <= hi)) == 50
    assert keep_interval(ThresholdRule(keep_above=90.0), scores) == (90.0, math.inf)
    assert isinstance(
        policy_from_dict(
            {"signal": "mean_logprob", "rule": {"kind": "target_rate", "escalation_rate": 0.3}}
        ).rule,
        TargetRateRule,
    )
