"""Confidence probes: the pure parts against hand computations, the flow on a loopback-free
in-process backend (a unit-test double), and the real embedded SmolLM2 end to end."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence

import numpy as np
import pytest

from router.backends.base import (
    ChatMessage,
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.probes import (
    CONSISTENCY,
    PROMPT_FAMILIARITY,
    VERIFY,
    ProbeSettings,
    agreement,
    answer_key,
    answers_agree,
    needed_probes,
    run_probes,
    verification_request,
    yes_probability,
)
from router.scoring import TokenLogprobs


def test_yes_probability_by_hand() -> None:
    toks = [" Yes", "yes.", " No", "Maybe", "NO"]
    lps = [math.log(0.3), math.log(0.1), math.log(0.15), math.log(0.2), math.log(0.05)]
    # yes: 0.3 + 0.1 = 0.4; no: 0.15 + 0.05 = 0.2 -> 0.4 / 0.6
    assert yes_probability(toks, lps) == pytest.approx(2 / 3)
    assert math.isnan(yes_probability(["Maybe", "Perhaps"], [-0.1, -2.0]))
    assert yes_probability(["No"], [-0.01]) == 0.0
    assert yes_probability(["Yesterday", "yes"], [-0.1, -3.0]) == 1.0  # words, not prefixes


def test_answers_compare_numbers_as_numbers() -> None:
    assert answers_agree("3,000 meters", "The answer is 3000.")
    assert answers_agree("42", "42.0")
    assert not answers_agree("17 + 25 = 32", "17 + 25 = 42")
    assert not answers_agree("42", "forty-two")  # a number against words never agrees
    assert answers_agree("Paris", "paris!")
    assert answers_agree("The capital is Paris", "Paris is the capital")
    assert not answers_agree("Paris", "Lyon")
    assert answer_key("") == ("words", frozenset())
    assert answers_agree("", "")


def test_answers_are_compared_on_what_the_question_does_not_say() -> None:
    q = "What is 73 - 7? Answer with the number only."
    assert answer_key("73 - 7 = 66", q) == ("number", frozenset({"66"}))
    assert answers_agree("73 - 7 = 66", "The result is 66.", q)
    assert not answers_agree("73 - 7 = 3", "73 - 7 = 66", q)
    q = "What is the capital of Kenya?"
    assert answers_agree("The capital of Kenya is Nairobi.", "Nairobi", q)
    assert not answers_agree("The capital of Kenya is Nairobi.", "The capital is Mombasa.", q)


def test_agreement_is_the_fraction_of_samples_that_agree() -> None:
    assert agreement("42", ["42", "41", "42.", "The answer: 42"]) == pytest.approx(0.75)
    assert math.isnan(agreement("42", []))


def test_needed_probes() -> None:
    assert needed_probes(["mean_logprob"]) == frozenset()
    assert needed_probes([VERIFY, CONSISTENCY, "answer_tokens", "truncated"]) == {
        "verify", "consistency", "answer"}
    assert needed_probes([PROMPT_FAMILIARITY]) == {"prompt"}


def test_the_verification_prompt_holds_the_question_and_the_answer() -> None:
    req = GenerationRequest(messages=(ChatMessage("system", "Be brief."),
                                      ChatMessage("user", "What is 17 + 25?")), max_tokens=9)
    v = verification_request(req, " 17 + 25 = 32 ", top_k=20)
    assert v.max_tokens == 1 and v.temperature == 0.0 and v.top_logprobs == 20
    assert v.messages is not None and len(v.messages) == 1
    text = v.messages[0].content
    assert "Question: What is 17 + 25?" in text and "Proposed answer: 17 + 25 = 32\n" in text


def _lp(values: Sequence[float], top: Sequence[Sequence[float]] | None = None) -> TokenLogprobs:
    return TokenLogprobs.from_lists(list(values), [1] * len(values),
                                    None if top is None else [list(r) for r in top])


class Scripted:
    """A unit-test double of a tier: answers by request kind, and counts what it was asked."""

    model_id = "scripted"

    def __init__(self) -> None:
        self.requests: list[GenerationRequest] = []
        self.scored: list[str] = []

    async def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        if request.max_tokens == 1:  # the verifier
            return Generation("scripted", "No", "length", _lp([math.log(0.6)],
                                                               [[math.log(0.6), math.log(0.2)]]),
                              Usage(30, 1), TopAlternatives(((" No", " Yes"),)))
        text = "32" if request.seed in (1, 2, 3) else "42"
        return Generation("scripted", text, "stop", _lp([-0.5]), Usage(10, 2))

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        raise NotImplementedError

    async def score(self, texts: Sequence[str], *, top_k: int = 0) -> list[TokenLogprobs]:
        self.scored.extend(texts)
        return [TokenLogprobs.from_lists([-1.0, -3.0], [2, 2]) for _ in texts]

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_run_probes_runs_only_what_the_features_need() -> None:
    backend = Scripted()
    req = GenerationRequest(messages=(ChatMessage("user", "What is 17 + 25?"),), max_tokens=8,
                            temperature=0.0)
    gen = Generation("scripted", "17 + 25 = 32", "length", _lp([-0.1, -2.0, -0.3]), Usage(10, 3))
    values, costs = await run_probes(backend, req, gen, ["mean_logprob", "answer_tokens"])
    assert values == {"answer_tokens": 3.0, "truncated": 1.0} and backend.requests == []

    values, costs = await run_probes(backend, req, gen, [VERIFY, CONSISTENCY, PROMPT_FAMILIARITY],
                                     ProbeSettings(consistency_samples=4))
    assert values[VERIFY] == pytest.approx(0.2 / 0.8)  # P(yes) 0.2 vs P(no) 0.6
    # samples with seeds 1..4 answer "32", "32", "32", "42"; the greedy "17 + 25 = 32" answers
    # 32 (17 and 25 are the question's own numbers): three of four agree
    assert values[CONSISTENCY] == 0.75
    assert values[PROMPT_FAMILIARITY] == pytest.approx(-1.0)  # (-1 - 3) / (2 + 2) bytes
    assert backend.scored == ["What is 17 + 25?"]
    sampled = [r for r in backend.requests if r.max_tokens == 8]
    assert [r.seed for r in sampled] == [1, 2, 3, 4]
    assert all(r.temperature == 0.7 and r.top_p == 0.95 for r in sampled)
    assert costs["verify"].tokens == 31 and costs["consistency"].tokens == 4 * 12
    assert costs["consistency"].prompt_tokens == 40 and costs["prompt"].completion_tokens == 0
    assert costs["prompt"].tokens == 3 and all(c.seconds >= 0 for c in costs.values())


@pytest.mark.model
async def test_probes_on_the_embedded_small_model() -> None:
    from router.backends.embedded import EmbeddedBackend, EmbeddedSettings

    small = EmbeddedBackend("smollm2", EmbeddedSettings(model="smollm2-135m-instruct", n_ctx=512))
    req = GenerationRequest(messages=(ChatMessage("user", "What is 17 + 25?"),), max_tokens=12,
                            temperature=0.0)
    gen = await small.generate(req)
    values, costs = await run_probes(small, req, gen, [VERIFY, CONSISTENCY, PROMPT_FAMILIARITY],
                                     ProbeSettings(consistency_samples=2))
    assert 0.0 <= values[VERIFY] <= 1.0  # SmolLM2 puts yes or no among its top 20 tokens
    assert values[CONSISTENCY] in (0.0, 0.5, 1.0)
    assert -5.0 < values[PROMPT_FAMILIARITY] < 0.0
    assert costs["verify"].tokens > 20 and costs["consistency"].tokens > 2 * 10
    again, _ = await run_probes(small, req, gen, [CONSISTENCY], ProbeSettings(2))
    assert again[CONSISTENCY] == values[CONSISTENCY]  # seeded samples: reproducible
    greedy_again = await small.generate(req)  # the samples left the greedy path as it was
    np.testing.assert_array_equal(gen.logprobs.logprobs, greedy_again.logprobs.logprobs)
    await small.aclose()


@pytest.mark.model
@pytest.mark.timeout(300)
async def test_a_stream_under_a_probe_policy_on_the_embedded_engine_completes(
        tmp_path: object) -> None:
    """The probes ask the same llama.cpp engine that streams the answer: the cascade must not
    judge (and probe) while that stream still holds the engine."""
    from pathlib import Path

    from router.backends.base import StreamDelta
    from router.backends.embedded import EmbeddedBackend, EmbeddedSettings
    from router.config import settings_from_dict
    from router.serve.cascade import Cascade, Outcome

    repo = Path(__file__).resolve().parents[1]
    settings = settings_from_dict({
        "tiers": [{"name": n, "backend": "embedded", "model": "smollm2-135m-instruct",
                   "n_ctx": 512} for n in ("small", "large")],
        "cascade": {"policy": str(repo / "policies" / "support-cascade.yaml"),
                    "stream_buffer_tokens": 8}})
    backends = {n: EmbeddedBackend(n, EmbeddedSettings(model="smollm2-135m-instruct", n_ctx=512))
                for n in ("small", "large")}
    cascade = Cascade(settings, backends)
    req = GenerationRequest(messages=(ChatMessage("user", "How do I reset my password?"),),
                            max_tokens=24, temperature=0.0)
    items = [x async for x in cascade.stream(req)]
    outcome = items[0]
    assert isinstance(outcome, Outcome)
    text = "".join(d.text for d in items[1:] if isinstance(d, StreamDelta))
    assert text and outcome.attempts[0].probe_tokens > 0
    assert outcome.attempts[0].features is not None
    assert outcome.attempts[0].features["truncated"] in (0.0, 1.0)
    for b in backends.values():
        await b.aclose()
