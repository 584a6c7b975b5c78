"""The scorer's math against plain-loop references (hypothesis for the ragged cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import ScoringError
from router.scoring import (
    SIGNALS,
    RaggedBatch,
    ScoreResult,
    SignalSpec,
    TokenLogprobs,
    check_comparable,
    compute_signals,
    score_sequences,
    segment_quantile,
    sequence_signal,
    topk_entropy,
    window_plan,
)

logprob = st.floats(min_value=-30.0, max_value=0.0, allow_nan=False)
sequence = st.lists(logprob, min_size=1, max_size=30)


def _seq(values: list[float], nbytes: int = 3, k: int = 0) -> TokenLogprobs:
    top = None
    if k:
        top = np.array(
            [sorted([v] + [v - 1.0 - j for j in range(k - 1)], reverse=True) for v in values]
        )
    return TokenLogprobs(np.array(values, float), np.full(len(values), nbytes, np.int64), top)


@given(st.lists(sequence, min_size=1, max_size=8), st.floats(0.0, 1.0))
@settings(max_examples=200, deadline=None)
def test_signals_match_plain_loops(seqs: list[list[float]], q: float) -> None:
    spec_q = SignalSpec("quantile_logprob", q=q)
    out = compute_signals(
        RaggedBatch.from_sequences([_seq(s) for s in seqs]),
        [
            SignalSpec("mean_logprob"),
            SignalSpec("sum_logprob"),
            SignalSpec("min_logprob"),
            spec_q,
            SignalSpec("logprob_per_byte"),
            SignalSpec("neg_perplexity"),
        ],
    )
    for i, s in enumerate(seqs):
        mean = sum(s) / len(s)
        assert out["mean_logprob"][i] == pytest.approx(mean, abs=1e-9)
        assert out["sum_logprob"][i] == pytest.approx(sum(s), abs=1e-9)
        assert out["min_logprob"][i] == pytest.approx(min(s))
        assert out[spec_q.key][i] == pytest.approx(float(np.quantile(s, q)), abs=1e-9)
        assert out["logprob_per_byte"][i] == pytest.approx(sum(s) / (3 * len(s)), abs=1e-9)
        assert out["neg_perplexity"][i] == pytest.approx(-math.exp(-mean), rel=1e-9)
        assert out["bits_per_byte"][i] == pytest.approx(-sum(s) / (3 * len(s)) / math.log(2))


@given(sequence, st.sampled_from(sorted(SIGNALS)), st.floats(0.0, 1.0), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_single_sequence_signal_equals_the_batch_scorer(values: list[float], name: str, q: float,
                                                        k: int) -> None:
    seq = _seq(values, k=k)
    spec = SignalSpec(name, q=q)
    batch = compute_signals(RaggedBatch.from_sequences([seq]), [spec])[spec.key][0]
    single = sequence_signal(seq, spec)
    if math.isnan(batch):
        assert math.isnan(single)
    else:
        assert single == pytest.approx(batch, rel=1e-9, abs=1e-9)


def test_documented_example() -> None:
    r = score_sequences("m", [TokenLogprobs(np.array([-1.0, -3.0]), np.array([2, 2]))])
    assert r.signals["mean_logprob"][0] == -2.0
    assert r.signals["sum_logprob"][0] == -4.0
    assert r.signals["min_logprob"][0] == -3.0
    assert r.signals["logprob_per_byte"][0] == -1.0
    assert r.row(0)["model"] == "m"


def test_empty_sequence_gives_nan_not_a_crash() -> None:
    out = compute_signals(RaggedBatch.from_sequences([_seq([-1.0]), _seq([])]))
    assert out["mean_logprob"][0] == -1.0
    assert math.isnan(out["mean_logprob"][1])
    assert math.isnan(segment_quantile(np.array([]), np.array([0]), 0.5)[0])


def test_topk_signals() -> None:
    seq = _seq([-0.1, -0.2], k=3)
    r = score_sequences("m", [seq])
    rows = topk_entropy(seq.top_logprobs)  # type: ignore[arg-type]
    assert r.signals["neg_mean_entropy"][0] == pytest.approx(-rows.mean())
    assert r.signals["mean_margin"][0] == pytest.approx(1.0)
    uniform = topk_entropy(np.log(np.array([[0.5, 0.5]])))
    assert uniform[0] == pytest.approx(math.log(2))
    assert math.isnan(score_sequences("m", [_seq([-1.0])]).signals["mean_margin"][0])


def test_higher_is_more_confident_for_every_signal() -> None:
    confident = _seq([-0.1, -0.2, -0.1], k=3)
    unsure = TokenLogprobs(
        np.array([-3.0, -4.0, -2.5]), np.full(3, 3, np.int64), np.log(np.full((3, 3), 1 / 3))
    )
    r = score_sequences("m", [confident, unsure])
    for spec in (
        "mean_logprob",
        "sum_logprob",
        "min_logprob",
        "quantile_logprob_q0.1",
        "neg_perplexity",
        "logprob_per_byte",
        "neg_bits_per_byte",
        "neg_mean_entropy",
        "mean_margin",
    ):
        assert r.signals[spec][0] > r.signals[spec][1], spec


def test_signal_spec_parse_and_errors() -> None:
    assert SignalSpec.parse("quantile_logprob_q0.25") == SignalSpec("quantile_logprob", 0.25)
    assert SignalSpec.parse("quantile_logprob:0.5").key == "quantile_logprob_q0.5"
    assert SignalSpec.parse("mean_logprob").key == "mean_logprob"
    with pytest.raises(ScoringError, match="unknown signal 'perplexity'"):
        SignalSpec("perplexity")
    with pytest.raises(ScoringError, match="q must be"):
        SignalSpec("quantile_logprob", q=1.5)


def test_scores_of_different_models_are_not_comparable() -> None:
    a = score_sequences("a", [_seq([-1.0])])
    check_comparable(a, score_sequences("a", [_seq([-2.0])]))
    with pytest.raises(ScoringError, match="not comparable"):
        check_comparable(a, score_sequences("b", [_seq([-1.0])]))
    with pytest.raises(ScoringError, match="not comparable"):
        check_comparable(a, ScoreResult("a", a.signals, scorer_version="0"))


@given(st.integers(1, 400), st.integers(2, 64), st.data())
@settings(max_examples=300, deadline=None)
def test_window_plan_scores_every_token_once(n: int, window: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, window))
    plan = window_plan(n, window, stride)
    scored: list[int] = []
    for w in plan:
        assert 0 <= w.start <= w.score_from < w.end <= n
        assert w.end - w.start <= window
        scored.extend(range(w.score_from, w.end))
    assert scored == list(range(n))
    if n <= window:
        assert len(plan) == 1


def test_window_plan_example_and_errors() -> None:
    assert [(w.start, w.end, w.score_from) for w in window_plan(10, 4, 2)] == [
        (0, 4, 0),
        (2, 6, 4),
        (4, 8, 6),
        (6, 10, 8),
    ]
    with pytest.raises(ScoringError):
        window_plan(10, 4, 0)
    with pytest.raises(ScoringError):
        window_plan(10, 1, 1)


def test_token_logprobs_validates_shapes() -> None:
    with pytest.raises(ScoringError):
        TokenLogprobs(np.zeros(3), np.zeros(2, np.int64))
