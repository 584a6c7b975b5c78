"""Confidence probes: request-level signals that the answer's own token logprobs do not carry.

The token logprobs of tier 0's answer are one view of its confidence. These probes ask tier 0
more (each at a measured cost in extra tokens and seconds) and return named numbers that join
the token-logprob signals in one flat `name -> value` mapping (higher = more confident, except
the answer-shape features, which a learned rule weighs either way):

    verify_p_yes          self-verification, P(True) (Kadavath et al. 2022; AutoMix): tier 0
                          reads "question, proposed answer: correct?" and we read P(yes) against
                          P(no) from its next-token distribution. One prompt pass, one token.
    consistency           agreement of the greedy answer with k sampled answers of tier 0
                          (answers normalised; numbers compared as numbers). k generations.
    prompt_logprob_per_byte  prompt familiarity: the question's own likelihood per byte under
                          tier 0 (one prompt-scoring pass through the shared scorer).
    answer_tokens         answer length in tokens (free)
    truncated             1.0 when the answer hit max_tokens (free)

`needed_probes(features)` says which probes a policy's feature list needs; `run_probes` runs only
those. The pure parts (`yes_probability`, `answer_key`, `agreement`) are tested by hand.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from router.backends.base import Backend, ChatMessage, Generation, GenerationRequest
from router.evalset.checks import fold, numbers_in
from router.scoring import FEATURES, SignalSpec, score_sequences

VERIFY = "verify_p_yes"
CONSISTENCY = "consistency"
PROMPT_FAMILIARITY = "prompt_logprob_per_byte"
ANSWER_TOKENS = "answer_tokens"
TRUNCATED = "truncated"

#: feature name -> the probe that produces it ("answer" probes cost nothing)
PROBE_OF: dict[str, str] = {
    VERIFY: "verify",
    CONSISTENCY: "consistency",
    PROMPT_FAMILIARITY: "prompt",
    ANSWER_TOKENS: "answer",
    TRUNCATED: "answer",
}
PROBE_FEATURES: tuple[str, ...] = tuple(PROBE_OF)
assert set(PROBE_OF) == set(FEATURES), "every request-level feature of the scorer has a probe"

VERIFY_TEMPLATE = (
    "Question: {question}\n"
    "Proposed answer: {answer}\n"
    "Is the proposed answer correct? Answer with yes or no."
)
MAX_QUESTION_CHARS = 2000
MAX_ANSWER_CHARS = 1000
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ProbeSettings:
    """How the probes ask tier 0 (config `cascade.probes`)."""

    consistency_samples: int = 4
    consistency_temperature: float = 0.7
    consistency_top_p: float = 0.95
    verify_top_k: int = 20


@dataclass(frozen=True)
class ProbeCost:
    """What one probe added to a request: tier-0 prompt and completion tokens, wall time."""

    prompt_tokens: int
    completion_tokens: int
    seconds: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def is_probe_feature(name: str) -> bool:
    """Whether a signal name is measured by a probe (a request-level feature of the scorer)."""
    return name in PROBE_OF


def needed_probes(features: Collection[str]) -> frozenset[str]:
    """The probes a feature list needs. Example: ["mean_logprob", "verify_p_yes"] -> {"verify"}."""
    return frozenset(PROBE_OF[f] for f in features if f in PROBE_OF)


# -- pure parts --------------------------------------------------------------------------------


def yes_probability(tokens: Sequence[str], logprobs: Sequence[float]) -> float:
    """P(yes) / (P(yes) + P(no)) from a next-token top-k list (strings and logprobs).

    Token strings are folded (" Yes", "yes", "YES." all count as yes). NaN when neither
    appears: the probe then says nothing.

    >>> round(yes_probability([" Yes", " No", "Maybe"], [math.log(0.6), math.log(0.2), -1]), 3)
    0.75
    """
    p_yes = p_no = 0.0
    for tok, lp in zip(tokens, logprobs, strict=True):
        word = "".join(_WORD.findall(fold(tok)))
        if word == "yes":
            p_yes += math.exp(lp)
        elif word == "no":
            p_no += math.exp(lp)
    total = p_yes + p_no
    return p_yes / total if total > 0 else math.nan


STOPWORDS = frozenset((
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "for", "with", "is", "are",
    "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "as", "by",
    "from", "you", "your", "we", "our", "they", "their", "i", "my", "me", "he", "she", "his",
    "her", "there", "here", "which", "what", "who", "how", "do", "does", "did", "can", "could",
    "will", "would", "should", "may", "might", "not", "no", "yes", "so", "if", "then", "than",
    "also", "just", "about", "into", "out", "up", "all", "any", "some", "such", "very", "more",
    "most", "one",
))


def answer_key(text: str, question: str = "") -> tuple[str, frozenset[str]]:
    """What two answers to `question` must share to agree.

    - the final number of the answer that the question does not already contain (compared as
      numbers: "3,000" == "3000.0"), when there is one: "73 - 7 = 66" -> 66;
    - else its content words (not stop words, not words of the question).

    >>> answer_key("17 + 25 = 42.", "What is 17 + 25?")
    ('number', frozenset({'42'}))
    >>> sorted(answer_key("The capital of Kenya is Nairobi.", "What is the capital of Kenya?")[1])
    ['nairobi']
    """
    asked = set(numbers_in(question))
    new = [x for x in numbers_in(text) if x not in asked]
    if new:
        return "number", frozenset({f"{new[-1]:g}"})
    qwords = set(_WORD.findall(fold(question)))
    words = [w for w in _WORD.findall(fold(text)) if w not in STOPWORDS and w not in qwords]
    return "words", frozenset(words[:12])


def answers_agree(a: str, b: str, question: str = "") -> bool:
    """The same final number, or content words with Jaccard similarity >= 1/3 (two answers
    with no content words agree).

    >>> answers_agree("The answer is 42", "42"), answers_agree("17 + 25 = 32", "17 + 25 = 42")
    (True, False)
    """
    ka, kb = answer_key(a, question), answer_key(b, question)
    if ka[0] != kb[0]:
        return False
    if ka[0] == "number":
        return ka[1] == kb[1]
    union = ka[1] | kb[1]
    return not union or 3 * len(ka[1] & kb[1]) >= len(union)


def agreement(greedy: str, samples: Sequence[str], question: str = "") -> float:
    """Fraction of `samples` that agree with `greedy` (NaN without samples).

    >>> agreement("42", ["42.", "The answer is 42", "41", "forty"])
    0.5
    """
    if not samples:
        return math.nan
    return float(np.mean([answers_agree(greedy, s, question) for s in samples]))


def question_of(request: GenerationRequest) -> str:
    """The text a probe asks about: the last user message, or the raw prompt."""
    if request.messages is not None:
        users = [m.content for m in request.messages if m.role == "user"]
        text = users[-1] if users else request.messages[-1].content
    else:
        text = request.prompt or ""
    return text[-MAX_QUESTION_CHARS:]


def verification_request(request: GenerationRequest, answer: str, top_k: int) -> GenerationRequest:
    """A one-token chat request whose next-token distribution holds P(yes) and P(no)."""
    prompt = VERIFY_TEMPLATE.format(question=question_of(request).strip(),
                                    answer=answer.strip()[:MAX_ANSWER_CHARS])
    return GenerationRequest(messages=(ChatMessage("user", prompt),), max_tokens=1,
                             temperature=0.0, top_logprobs=top_k)


def answer_features(gen: Generation) -> dict[str, float]:
    """The free features of an answer. Example: 12 tokens, finish "length" -> 12.0, 1.0."""
    return {ANSWER_TOKENS: float(len(gen.logprobs)),
            TRUNCATED: 1.0 if gen.finish_reason == "length" else 0.0}


# -- the probes --------------------------------------------------------------------------------


Spent = tuple[int, int]  # prompt, completion tokens


async def _verify(backend: Backend, request: GenerationRequest, gen: Generation,
                  settings: ProbeSettings) -> tuple[float, Spent]:
    out = await backend.generate(verification_request(request, gen.text, settings.verify_top_k))
    tokens = (out.usage.prompt_tokens, out.usage.completion_tokens)
    top = out.logprobs.top_logprobs
    if out.alternatives is None or top is None or len(out.logprobs) == 0:
        return math.nan, tokens
    return yes_probability(out.alternatives.tokens[0], top[0].tolist()), tokens


async def _consistency(backend: Backend, request: GenerationRequest, gen: Generation,
                       settings: ProbeSettings, partial: bool,
                       record: dict[str, Any] | None) -> tuple[float, Spent]:
    k = settings.consistency_samples
    base = request.seed if request.seed is not None else 0
    # a stream judges the first tokens of its answer: samples of the same length compare
    budget = max(1, len(gen.logprobs)) if partial else request.max_tokens
    reqs = [replace(request, temperature=settings.consistency_temperature,
                    top_p=settings.consistency_top_p, seed=base + i + 1, top_logprobs=1,
                    max_tokens=budget)
            for i in range(k)]
    outs = await asyncio.gather(*(backend.generate(r) for r in reqs))
    tokens = (sum(o.usage.prompt_tokens for o in outs), sum(o.usage.completion_tokens
                                                            for o in outs))
    if record is not None:
        record["consistency_samples"] = [o.text for o in outs]
    return agreement(gen.text, [o.text for o in outs], question_of(request)), tokens


async def _prompt(backend: Backend, request: GenerationRequest) -> tuple[float, Spent]:
    text = question_of(request)
    if not text.strip():
        return math.nan, (0, 0)
    [seq] = await backend.score([text])
    spec = SignalSpec("logprob_per_byte")
    value = float(score_sequences(backend.model_id, [seq], [spec]).signal(spec)[0])
    return value, (len(seq) + 1, 0)


async def run_probes(backend: Backend, request: GenerationRequest, gen: Generation,
                     features: Collection[str], settings: ProbeSettings = ProbeSettings(),
                     *, partial: bool = False, record: dict[str, Any] | None = None,
                     ) -> tuple[dict[str, float], dict[str, ProbeCost]]:
    """The probe features in `features` for tier 0's answer `gen` to `request`, and what each
    probe cost. Probes run one after the other (an embedded engine runs one request at a time;
    on vLLM the k consistency samples run concurrently). `partial`: `gen` is the first tokens
    of a streamed answer (judged at the stream buffer), not the whole answer. `record`, when
    given, receives what the probes saw (the sampled answers), for offline analysis."""
    probes = needed_probes(features)
    values: dict[str, float] = {}
    costs: dict[str, ProbeCost] = {}
    if "answer" in probes:
        values.update(answer_features(gen))
        if partial:
            values[TRUNCATED] = 0.0  # not known yet
        costs["answer"] = ProbeCost(0, 0, 0.0)
    runners = {
        "verify": lambda: _verify(backend, request, gen, settings),
        "consistency": lambda: _consistency(backend, request, gen, settings, partial, record),
        "prompt": lambda: _prompt(backend, request),
    }
    names = {"verify": VERIFY, "consistency": CONSISTENCY, "prompt": PROMPT_FAMILIARITY}
    for probe in ("prompt", "verify", "consistency"):
        if probe not in probes:
            continue
        started = time.perf_counter()
        value, (pt, ct) = await runners[probe]()
        values[names[probe]] = value
        costs[probe] = ProbeCost(pt, ct, time.perf_counter() - started)
    return values, costs


def probe_settings(config: Any) -> ProbeSettings:
    """`cascade.probes` of the config (a router.config.ProbesConfig) -> ProbeSettings."""
    return ProbeSettings(consistency_samples=config.consistency_samples,
                         consistency_temperature=config.consistency_temperature,
                         consistency_top_p=config.consistency_top_p,
                         verify_top_k=config.verify_top_k)
