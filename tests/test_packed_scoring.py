"""Packed scoring on the real SmolLM2 model: the same scores as one text at a time.

llama.cpp's batched kernels round differently for different batch shapes, so packed and single
scores are compared against a control rather than a tolerance fitted to one build: pairing
each token with its neighbour's single-path score (the off-by-one mistake llama-cpp-python's
own echo path makes) must be far further off than the aligned pairing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from router.backends._llama import LlamaEngine, SampleParams
from router.backends._packing import Segment
from router.errors import InputError
from router.models import resolve_packaged
from tests.conftest import SMALL

pytestmark = pytest.mark.model

PROSE = (
    "The children walked to school in the morning, kicking the first fallen leaves along the "
    "path. Their teacher was waiting at the gate with a basket of apples from her garden. "
)
TEXTS = [
    "The children walked to school in the morning.",
    "school morning the walked in children The to.",
    PROSE * 3,
    "Reset your password from the account page.",
    "qz xv kkp wrrt ylp mmn oq",
    PROSE,
    "Bees communicate the location of flowers by dancing.",
]


@pytest.fixture(scope="module")
def tiny_batch_engine() -> Iterator[LlamaEngine]:
    """n_batch 64: several packed batches, sequence caps and windows longer than a batch."""
    yield LlamaEngine(resolve_packaged(SMALL), n_ctx=512, n_batch=64, n_threads=2)


def _compare(packed: list[np.ndarray], single: list[np.ndarray]) -> tuple[float, float, float]:
    """(largest aligned |difference|, mean aligned |difference|, mean shifted |difference|)."""
    aligned = np.concatenate([np.abs(p - s) for p, s in zip(packed, single, strict=True)])
    shifted = np.concatenate([np.abs(p[1:] - s[:-1]) for p, s in zip(packed, single,
                                                                       strict=True)])
    return float(aligned.max()), float(aligned.mean()), float(shifted.mean())


def _assert_same_scores(packed: list[np.ndarray], single: list[np.ndarray]) -> None:
    worst, mean, shifted = _compare(packed, single)
    # most tokens agree exactly; a window that does not start the batch sums its attention
    # in a different SIMD order, which now and then flips an 8-bit activation rounding
    assert mean < 0.02 * shifted, (worst, mean, shifted)
    assert worst < 0.5 * shifted, (worst, mean, shifted)


@pytest.mark.parametrize("window", [None, 48])
def test_packed_scores_equal_one_at_a_time(tiny_batch_engine: LlamaEngine,
                                           window: int | None) -> None:
    e = tiny_batch_engine
    stride = 16 if window else None
    single = [e.score(t, window=window, stride=stride, top_k=3) for t in TEXTS]
    packed = e.score_many(TEXTS, window=window, stride=stride, top_k=3)
    for p, s in zip(packed, single, strict=True):  # same tokens, same order as the input
        assert p.tokens == s.tokens
        np.testing.assert_array_equal(p.token_bytes, s.token_bytes)
        assert p.top_logprobs is not None and s.top_logprobs is not None
        assert p.top_logprobs.shape == s.top_logprobs.shape
    _assert_same_scores([p.logprobs for p in packed], [s.logprobs for s in single])
    top_diff = np.concatenate([np.abs(p.top_logprobs - s.top_logprobs)  # type: ignore[operator]
                               for p, s in zip(packed, single, strict=True)])
    assert float(top_diff.mean()) < 0.02 * _compare([p.logprobs for p in packed],
                                                    [s.logprobs for s in single])[2]


def test_a_window_longer_than_the_batch_is_decoded_in_chunks(
    tiny_batch_engine: LlamaEngine
) -> None:
    e = tiny_batch_engine
    text = PROSE * 4  # about 150 tokens in one window of 512: three decodes of 64
    assert len(e.tokenize(text, add_bos=e.add_bos)) > 2 * e.n_batch
    (packed,) = e.score_many([text])
    single = e.score(text)
    assert packed.tokens == single.tokens
    _assert_same_scores([packed.logprobs], [single.logprobs])


def test_a_packed_window_sees_nothing_of_its_neighbours(small_engine: LlamaEngine) -> None:
    assert_blind_to_neighbours(small_engine)


def assert_blind_to_neighbours(e: LlamaEngine, first: int | None = None) -> None:
    """Same position in the batch, a neighbour of the same length but other tokens: the
    window's log-probabilities are bit for bit the same (the mask isolates sequences)."""
    a = e.tokenize(PROSE, add_bos=e.add_bos)[:first]
    b = list(np.random.default_rng(0).permutation(a))  # same length, other content
    t = e.tokenize(TEXTS[3], add_bos=e.add_bos)
    segs = [Segment(0, 0, len(a), 0), Segment(1, 0, len(t), 0)]
    with_a = e._eval_segments([a, t], segs, 0)
    with_b = e._eval_segments([b, t], segs, 0)
    assert not np.array_equal(with_a[0][0], with_b[0][0])  # the neighbours do differ
    np.testing.assert_array_equal(with_a[1][0], with_b[1][0])


def test_a_text_that_cannot_be_scored_fails_the_call_before_any_work(
    small_engine: LlamaEngine
) -> None:
    with pytest.raises(InputError, match="empty"):
        small_engine.score_many(["The children walked to school.", ""])


def test_generation_after_packed_scoring_is_unchanged(small_engine: LlamaEngine) -> None:
    ids = small_engine.tokenize("The capital of France is", add_bos=small_engine.add_bos)
    params = SampleParams(6, 0.0, 1.0, (), 2, None)
    before = [s.token for s in small_engine.generate(ids, params)]
    small_engine.score_many(TEXTS)  # leaves cells of many sequence ids behind, then clears
    after = [s.token for s in small_engine.generate(ids, params)]
    assert after == before
