"""Packed scoring's pure helpers: the logit math against plain loops, and the batch plan."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.backends._llama import log_softmax_rows, top_k_rows
from router.backends._packing import (
    Segment,
    gather_logprobs,
    pack_segments,
    row_logsumexp,
    top_k_logprobs,
)


def _logits(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, vocab)) * 4.0 + 30.0).astype(np.float32)


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 130])
def test_row_logsumexp_equals_a_plain_loop(n: int) -> None:
    x = _logits(n, 257)
    got = row_logsumexp(x, block=64)
    want = [math.log(sum(math.exp(float(v)) for v in row)) for row in x.astype(np.float64)]
    np.testing.assert_allclose(got, np.array(want, np.float32), rtol=1e-6, atol=1e-5)


def test_gather_and_top_k_equal_the_full_log_softmax() -> None:
    x = _logits(70, 301, seed=1)
    targets = np.random.default_rng(2).integers(0, 301, 70).astype(np.int64)
    full = log_softmax_rows(x)  # (70, 301)
    lse = row_logsumexp(x)
    np.testing.assert_allclose(gather_logprobs(x, targets, lse),
                               full[np.arange(70), targets], atol=2e-5)
    np.testing.assert_allclose(top_k_logprobs(x, lse, 5), top_k_rows(full, 5)[1], atol=2e-5)
    assert top_k_logprobs(x, lse, 1000).shape == (70, 301)  # k is capped at the vocabulary


def test_pack_segments_example_and_long_segments() -> None:
    assert pack_segments([300, 200, 250, 100], n_batch=512, max_seqs=8) == [[0, 1], [2, 3]]
    assert pack_segments([600, 10, 10], n_batch=512, max_seqs=8) == [[0], [1, 2]]
    assert pack_segments([10] * 5, n_batch=512, max_seqs=2) == [[0, 1], [2, 3], [4]]
    assert pack_segments([], n_batch=512, max_seqs=2) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(2, 700), max_size=40), st.integers(8, 512), st.integers(1, 16))
def test_pack_segments_places_every_segment_once_within_the_limits(
    lengths: list[int], n_batch: int, max_seqs: int
) -> None:
    plan = pack_segments(lengths, n_batch=n_batch, max_seqs=max_seqs)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for b in plan:
        assert len(b) <= max_seqs
        if len(b) > 1:
            assert sum(lengths[i] for i in b) <= n_batch
    # first fit: of the batches that still had a free sequence id, at most one is half empty
    # (a later half-empty batch's segments would all have fitted into the earlier one)
    open_loads = [sum(lengths[i] for i in b) for b in plan
                  if len(b) < max_seqs and lengths[b[0]] <= n_batch]
    assert sum(2 * load <= n_batch for load in open_loads) <= 1


def test_segment_rows() -> None:
    s = Segment(doc=0, start=10, end=20, out_from=4)
    assert s.length == 10 and s.n_out == 5  # rows 4..8 predict tokens 15..19
