"""The metric functions against plain-loop references."""

from __future__ import annotations

import numpy as np
import pytest
from eval_helpers import brute_auroc, loop_oracle, loop_quality

from router.evaluate import metrics_math as mm


@pytest.mark.parametrize("seed", range(8))
def test_auroc_matches_pairwise(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    scores = np.round(rng.normal(size=n), 1)  # rounding makes ties
    labels = rng.random(n) < 0.5
    if labels.all() or not labels.any():
        labels[0] = not labels[0]
    assert mm.auroc(scores, labels) == pytest.approx(brute_auroc(scores.tolist(),
                                                                 labels.tolist()))


def test_auroc_edge_cases() -> None:
    assert mm.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert np.isnan(mm.auroc([1.0, 2.0], [1, 1]))
    # NaN is the least confident
    assert mm.auroc([np.nan, 1.0], [0, 1]) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_deferral_curve_matches_loop_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 7
    scores = rng.integers(0, 3, size=n).astype(float)  # heavy ties
    small = rng.integers(0, 2, size=n)
    large = rng.integers(0, 2, size=n)
    curve = mm.deferral_curve(scores, small, large)
    assert len(curve) == n + 1
    for k in range(n + 1):
        assert curve[k] == pytest.approx(loop_quality(scores.tolist(), small.tolist(),
                                                      large.tolist(), k))


@pytest.mark.parametrize("seed", range(4))
def test_oracle_and_random(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 8
    small, large = rng.integers(0, 2, size=n), rng.integers(0, 2, size=n)
    oracle = mm.oracle_curve(small, large)
    rand = mm.random_curve(small, large)
    for k in range(n + 1):
        assert oracle[k] == pytest.approx(loop_oracle(small.tolist(), large.tolist(), k))
        # random routing = the average over every subset of size k
        assert rand[k] == pytest.approx(small.mean() + k / n * (large.mean() - small.mean()))


def test_area_pgr_cost() -> None:
    curve = np.array([0.2, 0.5, 0.6, 0.6, 0.9])
    xs = np.linspace(0, 1, 5)
    trap = sum((xs[i + 1] - xs[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(4))
    assert mm.curve_area(curve) == pytest.approx(trap)
    assert mm.at_rate(curve, 0.5) == 0.6
    assert mm.pgr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert np.isnan(mm.pgr(0.7, 0.6, 0.6))
    scores = [3.0, 1.0, 2.0]
    cost = mm.cascade_cost_curve(scores, [1.0, 1.0, 1.0], [10.0, 20.0, 30.0])
    # k=1 escalates the score-1 prompt (large cost 20), k=2 adds the score-2 one (30)
    assert cost.tolist() == pytest.approx([1.0, 1 + 20 / 3, 1 + 50 / 3, 1 + 60 / 3])


def test_precision_recall() -> None:
    assert mm.precision_recall([1, 1, 0, 0], [1, 0, 1, 0]) == (0.5, 0.5, 0.5)
    p, r, _ = mm.precision_recall([0, 0], [1, 0])
    assert np.isnan(p) and r == 0.0
