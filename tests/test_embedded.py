"""The embedded llama.cpp backend on the real packaged models."""

from __future__ import annotations

import numpy as np
import pytest

from router.backends._llama import LlamaEngine, SampleParams, log_softmax_rows, top_k_rows
from router.backends.base import ChatMessage, GenerationRequest
from router.backends.embedded import EmbeddedBackend, EmbeddedSettings
from router.errors import InputError, ModelError
from router.prompting import TranscriptTemplate
from router.scoring import score_sequences
from tests.harness.pairing import assert_same_pairing

pytestmark = pytest.mark.model

FLUENT = "The children walked to school in the morning."
SHUFFLED = "school morning the walked in children The to."
LONG = " ".join(
    f"Paragraph {i}: the support team answered every customer question about billing, "
    "refunds and passwords with patience and clear instructions."
    for i in range(12)
)


def _mean(engine: LlamaEngine, text: str, **kw: int) -> float:
    return float(np.mean(engine.score(text, **kw).logprobs))


def test_fluent_text_is_more_likely_than_shuffled(small_engine: LlamaEngine) -> None:
    fluent, shuffled = _mean(small_engine, FLUENT), _mean(small_engine, SHUFFLED)
    assert fluent > shuffled + 3.0  # measured: about -4.3 vs -9.3 per token
    assert -6.0 < fluent < -2.5


def test_batch_equals_one_by_one(small_engine: LlamaEngine) -> None:
    texts = [FLUENT, SHUFFLED, "Reset your password from the account page.", LONG[:300]]
    one_by_one = [score_sequences("m", [small_engine.score(t)]).row(0) for t in texts]
    together = score_sequences("m", [small_engine.score(t) for t in reversed(texts)])
    for i, row in enumerate(reversed(one_by_one)):
        for key in ("mean_logprob", "sum_logprob", "min_logprob", "logprob_per_byte"):
            assert together.signals[key][i] == pytest.approx(row[key], abs=1e-4)


def test_windowed_equals_unwindowed_when_the_text_fits(small_engine: LlamaEngine) -> None:
    full = small_engine.score(LONG)
    fits = small_engine.score(LONG, window=512, stride=128)
    np.testing.assert_allclose(fits.logprobs, full.logprobs, atol=1e-4)


def test_long_text_scored_in_windows_scores_every_token(small_engine: LlamaEngine) -> None:
    n_ids = len(small_engine.tokenize(LONG, add_bos=small_engine.add_bos))
    assert n_ids > 64
    full = small_engine.score(LONG)
    windowed = small_engine.score(LONG, window=64, stride=32)
    assert len(windowed) == len(full) == n_ids - 1  # no BOS: the first token is context
    assert windowed.tokens == full.tokens
    # with less context the text is less predictable on average, but not wildly so
    assert abs(float(windowed.logprobs.mean() - full.logprobs.mean())) < 0.6


def test_prompt_scoring_is_aligned_with_generation(small_engine: LlamaEngine) -> None:
    """Scoring prompt+answer must give the answer tokens the logprobs generation gave them
    (llama-cpp-python's own echo path is off by one for BOS-less models)."""
    prompt = "The capital of France is"
    ids = small_engine.tokenize(prompt, add_bos=small_engine.add_bos)
    steps = list(small_engine.generate(ids, SampleParams(8, 0.0, 1.0, (), 3, None)))
    text = "".join(s.text for s in steps)
    scored = small_engine.score(prompt + text)
    gen = np.array([s.logprob for s in steps])
    # llama.cpp's batched and single-token kernels round differently on Q4 weights, by an
    # amount that depends on the build and CPU; an off-by-one pairing is off by nats
    assert_same_pairing(scored.logprobs[-len(gen) :], gen, "prompt scoring vs generation")
    assert scored.tokens is not None and "".join(scored.tokens[-len(gen) :]) == text


def test_empty_text_is_an_input_error(small_engine: LlamaEngine) -> None:
    with pytest.raises(InputError, match="empty"):
        small_engine.score("")


def test_missing_model_file_is_a_model_error(tmp_path: object) -> None:
    with pytest.raises(ModelError, match="not found"):
        EmbeddedBackend("x", EmbeddedSettings(model="/nonexistent/model.gguf"))._load_sync()


def test_numpy_helpers() -> None:
    rows = log_softmax_rows(np.array([[0.0, 0.0], [1.0, 3.0]], np.float32))
    np.testing.assert_allclose(np.exp(rows).sum(axis=1), 1.0, rtol=1e-6)
    ids, vals = top_k_rows(np.array([[0.1, 0.5, 0.3, 0.9]], np.float32), 2)
    assert ids.tolist() == [[3, 1]] and vals[0, 0] == pytest.approx(0.9)


async def test_chat_generation_and_stop_sequences() -> None:
    large = EmbeddedBackend(
        "gemma3-270m", EmbeddedSettings(model="gemma3-270m", n_ctx=512), TranscriptTemplate()
    )
    req = GenerationRequest(
        messages=(ChatMessage("user", "What is the capital of France?"),),
        max_tokens=16,
        temperature=0.0,
    )
    gen = await large.generate(req)
    # greedy: every chosen token is its step's most likely one (exact, whatever the build)
    assert gen.logprobs.top_logprobs is not None and len(gen.logprobs) >= 1
    np.testing.assert_array_equal(gen.logprobs.logprobs, gen.logprobs.top_logprobs[:, 0])
    assert "Paris" in gen.text  # the answer is far from a near-tie on any build
    assert gen.finish_reason == "stop"  # the transcript template's stop sequence ended it
    assert gen.alternatives is not None and len(gen.alternatives.tokens) == len(gen.logprobs)
    assert gen.usage.prompt_tokens > 5


async def test_streaming_matches_generate_and_can_be_aborted() -> None:
    small = EmbeddedBackend("smollm2", EmbeddedSettings(model="smollm2-135m-instruct", n_ctx=512))
    req = GenerationRequest(
        messages=(ChatMessage("user", "How do I reset my password?"),),
        max_tokens=12,
        temperature=0.0,
    )
    whole = await small.generate(req)
    pieces = [d async for d in small.stream(req)]
    assert "".join(d.text for d in pieces) == whole.text
    assert pieces[-1].finish_reason == "length" and pieces[-1].usage is not None
    stream = small.stream(req)
    first = await stream.__anext__()
    await stream.aclose()  # abort mid-way: the next request must still work
    assert first.text
    again = await small.generate(req)
    assert again.text == whole.text
