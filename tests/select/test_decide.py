from __future__ import annotations

import math

import numpy as np
import pytest

from router.policy import BandRule, Policy, ThresholdRule, TopFractionRule, band_for_criterion
from router.scoring import SignalSpec
from router.select.decide import cut_points, decide, priorities

SIG = SignalSpec("logprob_per_byte")


def pol(rule: object) -> Policy:
    return Policy("p", SIG, rule)  # type: ignore[arg-type]


def test_top_fraction_and_nan_never_kept() -> None:
    v = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    cuts = cut_points(pol(TopFractionRule(0.5)), v)
    assert cuts.interval(None) == (3.0, math.inf)
    assert decide(v, cuts).tolist() == [False, False, True, True, False]


@pytest.mark.parametrize(("criterion", "kept"), [
    ("low", {6, 7, 8, 9}), ("high", {0, 1, 2, 3}), ("medium", {3, 4, 5, 6})])
def test_band_criteria(criterion: str, kept: set[int]) -> None:
    v = np.arange(10, dtype=np.float64)
    rule = BandRule(keep_quantiles=band_for_criterion(criterion, 0.4), criterion=criterion)
    got = decide(v, cut_points(pol(rule), v))
    assert set(np.flatnonzero(got).tolist()) == kept


def test_threshold() -> None:
    v = np.array([-1.0, -0.5, 0.2])
    cuts = cut_points(pol(ThresholdRule(keep_above=-0.5)), v)
    assert decide(v, cuts).tolist() == [False, True, True]


def test_stratified_cut_points() -> None:
    v = np.array([1, 2, 3, 4, 10, 20, 30, 40], dtype=np.float64)
    strata: list[str | None] = ["a"] * 4 + ["b"] * 4
    cuts = cut_points(pol(TopFractionRule(0.5)), v, strata)
    assert cuts.interval("a") == (3.0, math.inf)
    assert cuts.interval("b") == (30.0, math.inf)
    assert decide(v, cuts, strata).tolist() == [False, False, True, True] * 2
    glob = decide(v, cut_points(pol(TopFractionRule(0.5)), v))
    assert glob.tolist() == [False] * 4 + [True] * 4


def test_priorities() -> None:
    rank, weight = priorities(np.array([0.5, 0.9, 0.1]))
    assert rank.tolist() == [2, 1, 3]
    assert weight.tolist() == pytest.approx([1.0, 1.5, 0.5])
    assert weight.mean() == pytest.approx(1.0)
