"""The scorer's math against plain-loop references (hypothesis for the ragged cases)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.errors import InputError, ScoringError
from router.ragged import ragged, segment_min, segment_quantile, topk_entropy
from router.scoring import (
    DEFAULT_SIGNALS,
    FEATURES,
    RUNNING_SIGNALS,
    SIGNALS,
    Feature,
    RaggedBatch,
    RunningSignal,
    ScoreResult,
    SignalSpec,
    TokenLogprobs,
    TokenSignal,
    check_comparable,
    compute_signals,
    parse_signal_option,
    score_sequences,
    sequence_signal,
    signal_vector,
    window_plan,
)

logprob = st.floats(min_value=-30.0, max_value=0.0, allow_nan=False)
sequence = st.lists(logprob, min_size=1, max_size=30)


def _seq(values: list[float], nbytes: int = 3, k: int = 0) -> TokenLogprobs:
    top = None
    if k:
        top = np.array(
            [sorted([v] + [v - 1.0 - j for j in range(k - 1)], reverse=True) for v in values]
        ).reshape(len(values), k)
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


@given(sequence, st.sampled_from(sorted(SIGNALS)), st.floats(0.0, 1.0), st.integers(0, 3),
       st.lists(st.lists(logprob, max_size=10), max_size=4), st.integers(0, 4))
@settings(max_examples=300, deadline=None)
def test_single_sequence_signal_equals_the_batch_scorer(values: list[float], name: str, q: float,
                                                        k: int, others: list[list[float]],
                                                        at: int) -> None:
    """The hot path (a batch of one, no copies) equals the general ragged path with `seq`
    among neighbours, empty ones included: a signal does not depend on its batch."""
    seq = _seq(values, k=k)
    spec = SignalSpec(name, q=q)
    neighbours = [_seq(o, k=k) for o in others]
    at = min(at, len(neighbours))
    batch = RaggedBatch.from_sequences([*neighbours[:at], seq, *neighbours[at:]])
    batched = compute_signals(batch, [spec])[spec.key][at]
    single = sequence_signal(seq, spec)
    if math.isnan(batched):
        assert math.isnan(single)
    else:
        assert single == pytest.approx(batched, rel=1e-9, abs=1e-9)
    assert single == pytest.approx(signal_vector(seq, [spec])[spec.key], nan_ok=True)


@given(st.lists(st.lists(st.one_of(logprob, st.just(-math.inf), st.just(math.nan)),
                        max_size=4), max_size=8),
       st.sampled_from(sorted(RUNNING_SIGNALS)), st.integers(0, 4))
@settings(max_examples=300, deadline=None)
def test_running_signal_equals_the_scorer_on_every_prefix(deltas: list[list[float]], name: str,
                                                          nbytes: int) -> None:
    """A stream's running confidence, delta by delta (empty deltas, -inf and NaN tokens, no
    bytes included), is the scorer's value on the tokens so far."""
    spec = SignalSpec(name)
    running = RunningSignal(spec)
    so_far: list[float] = []
    for delta in [[], *deltas]:
        running.add(_seq(delta, nbytes))
        so_far += delta
        with np.errstate(invalid="ignore"):
            expected = sequence_signal(_seq(so_far, nbytes), spec)
        assert running.value() == pytest.approx(expected, rel=1e-9, abs=1e-9, nan_ok=True)


def test_running_signals_are_the_ones_sums_give() -> None:
    assert RUNNING_SIGNALS.issubset(SIGNALS)
    with pytest.raises(ScoringError, match="no running form"):
        RunningSignal(SignalSpec("quantile_logprob"))


@given(st.lists(st.lists(logprob, max_size=8), min_size=1, max_size=6))
@settings(max_examples=200, deadline=None)
def test_segment_min_matches_a_loop(seqs: list[list[float]]) -> None:
    out = segment_min(np.array([v for s in seqs for v in s], float),
                      np.array([len(s) for s in seqs], np.int64))
    for i, s in enumerate(seqs):
        assert math.isnan(out[i]) if not s else out[i] == min(s)


def test_every_signal_is_one_documented_table_entry() -> None:
    for name, sig in SIGNALS.items():
        assert sig.fn.__doc__ and "Example" in sig.fn.__doc__, name
        assert not math.isnan(sequence_signal(_seq([-1.0, -2.0], k=2), SignalSpec(name))), name


def test_an_empty_sequence_is_nan_for_every_signal() -> None:
    empty = _seq([], k=2)
    out = compute_signals(RaggedBatch.from_sequences([_seq([-1.0], k=2), empty]))
    for spec in DEFAULT_SIGNALS:
        assert not math.isnan(out[spec.key][0]), spec.key
        assert math.isnan(out[spec.key][1]), spec.key
        assert math.isnan(sequence_signal(empty, spec)), spec.key


def test_a_new_token_signal_is_a_single_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    def neg_n_tokens(b: RaggedBatch, q: float) -> np.ndarray:
        """Shorter is more confident. Example: ragged([-1, -3], [-2]) -> [-2, -1]."""
        return np.asarray(-b.lengths, np.float64)

    monkeypatch.setitem(SIGNALS, "neg_n_tokens", TokenSignal(neg_n_tokens))
    spec = SignalSpec.parse("neg_n_tokens")
    assert list(compute_signals(ragged([-1.0, -3.0], [-2.0]), [spec])["neg_n_tokens"]) == [-2, -1]
    assert sequence_signal(_seq([-1.0, -2.0, -3.0]), spec) == -3.0


def test_request_level_features_merge_into_one_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FEATURES, "p_yes", Feature("a verifier's P(yes) that the answer is right"))
    spec = SignalSpec.parse("p_yes")
    assert spec.is_feature and spec.key == "p_yes" and not spec.needs_top_k
    seq = _seq([-1.0, -3.0], nbytes=2)
    flat = signal_vector(seq, [SignalSpec("mean_logprob"), spec], {"p_yes": 0.9})
    assert flat["mean_logprob"] == -2.0 and flat["p_yes"] == 0.9 and flat["n_tokens"] == 2.0
    assert sequence_signal(seq, spec, {"p_yes": 0.9}) == 0.9
    assert math.isnan(sequence_signal(seq, spec))  # not measured: nothing to score
    cols = compute_signals(ragged([-1.0], [-2.0]), [spec], {"p_yes": [0.1, 0.7]})
    assert list(cols["p_yes"]) == [0.1, 0.7]
    assert "p_yes" in compute_signals(ragged([-1.0]), (), {"p_yes": [0.5]})  # merged unasked
    with pytest.raises(ScoringError, match="unknown request-level feature 'p_no'"):
        compute_signals(ragged([-1.0]), (), {"p_no": [0.5]})
    with pytest.raises(ScoringError, match="1 values for 2 sequences"):
        compute_signals(ragged([-1.0], [-2.0]), [spec], {"p_yes": [0.5]})


def test_parse_signal_option_names_the_option() -> None:
    assert parse_signal_option("quantile_logprob:0.25").key == "quantile_logprob_q0.25"
    with pytest.raises(InputError, match="--signal: unknown signal 'nope'"):
        parse_signal_option("nope")


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
