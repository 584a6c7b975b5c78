"""One tier's answer as the cascade's tier loop sees it.

    Tier, Attempt            a tier of the cascade; one call of it (a decision-log entry)
    Received                 as much of an answer as the cascade has when it judges it
    WholeAnswer              `run`: the whole Generation is what is received
    StreamedAnswer           `stream`: deltas are buffered until the buffer is full or held
                             `stream_buffer_seconds`, the answer ends or the running confidence
                             early-escalates (a confidence that needs probes waits for the whole
                             answer); `rest` streams on
    Running                  a stream's running confidence: O(delta) per token for the
                             signals running sums give (`scoring.RunningSignal`), else the
                             scorer on a `TokenBuffer` of the tokens so far
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from router.backends.base import Backend, Generation, GenerationRequest, StreamDelta, Usage
from router.config import CascadeConfig, TierConfig
from router.decision import early_escalates
from router.learned import Confidence, LearnedSignal, confidence
from router.probes import ProbeSettings, is_probe_feature, question_of
from router.scoring import RUNNING_SIGNALS, RunningSignal, SignalSpec, TokenLogprobs
from router.serve.online import Decider
from router.text_features import QUESTION


class Running(Protocol):
    """A stream's running confidence: `add` every delta's tokens, read `value` (NaN: nothing
    to decide on yet, or a confidence that waits for the whole answer)."""

    def add(self, lp: TokenLogprobs) -> None: ...

    def value(self) -> float: ...


class _Waiting:
    """The running confidence of a tier judged on its whole answer: always NaN."""

    def add(self, lp: TokenLogprobs) -> None:
        return None

    def value(self) -> float:
        return math.nan


class _Rescored:
    """Any other confidence (a quantile, top-k signals, a learned rule on token signals and the
    question's words): the scorer on the tokens so far, kept in a `TokenBuffer`."""

    def __init__(self, signal: Confidence, texts: dict[str, str] | None) -> None:
        self.signal, self.texts = signal, texts
        self.parts = TokenBuffer()

    def add(self, lp: TokenLogprobs) -> None:
        self.parts.append(lp)

    def value(self) -> float:
        return confidence(self.signal, self.parts.view(), texts=self.texts)


@dataclass
class Tier:
    index: int
    config: TierConfig
    backend: Backend
    decider: Decider | None  # None for the last tier
    signal: Confidence  # the signal (or learned rule) its answers are scored with
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    # derived from the signal once (the request path reads them on every call, streams on
    # every token):
    #: the features its confidence is computed from
    features: tuple[str, ...] = field(init=False)
    #: the request-level features its confidence needs (router.probes); empty when the token
    #: logprobs of the answer are enough
    probe_features: tuple[str, ...] = field(init=False)
    #: its confidence needs the whole answer: probes, or a learned rule that reads the
    #: answer's words. A stream is then buffered to its end before it is judged.
    judges_whole_answer: bool = field(init=False)
    #: its confidence reads the words of the question or the answer (a learned rule's text
    #: blocks): only then are they handed to it
    reads_text: bool = field(init=False)
    #: the top-k alternatives it asks for at least (`top_logprobs`; with `auto`, none unless
    #: its confidence reads them)
    top_k: int = field(init=False)

    def __post_init__(self) -> None:
        sig = self.signal
        self.features = sig.features if isinstance(sig, LearnedSignal) else (sig.key,)
        self.probe_features = tuple(f for f in self.features if is_probe_feature(f))
        self.judges_whole_answer = bool(self.probe_features) or (
            isinstance(sig, LearnedSignal) and sig.reads_answer_text)
        self.reads_text = isinstance(sig, LearnedSignal) and bool(sig.text)
        self.top_k = self.config.top_logprobs_for(sig.needs_top_k)

    @property
    def name(self) -> str:
        return self.config.name

    def running(self, question: str) -> Running:
        """A fresh running confidence for one stream of this tier, for early escalation."""
        sig = self.signal
        if self.judges_whole_answer:
            return _Waiting()
        if isinstance(sig, SignalSpec) and sig.name in RUNNING_SIGNALS:
            return RunningSignal(sig)
        return _Rescored(sig, {QUESTION: question} if self.reads_text else None)

    @property
    def model(self) -> str:
        return self.config.model

    def request_for(self, request: GenerationRequest) -> GenerationRequest:
        """The request as this tier asks it: at least its own top-k, more if the client asked.

        Example: top_k 5 and a request for 2 -> 5; top_k 0 and a request for 3 -> 3.
        """
        if request.top_logprobs >= self.top_k:
            return request
        return replace(request, top_logprobs=self.top_k)


@dataclass
class Attempt:
    """One tier call of one request (a decision-log entry)."""

    tier: str
    model: str
    outcome: str = "answered"  # accepted | escalated | answered | failed | gated
    reason: str | None = None
    score: float | None = None
    threshold: float | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    probe_tokens: int = 0  # extra tokens this tier spent on confidence probes (in cost_usd)
    probe_latency_s: float = 0.0
    features: dict[str, float | None] | None = None  # the values its confidence came from
    text: str | None = None  # the answer it judged (set only with include_prompt)


def join_logprobs(parts: Sequence[TokenLogprobs]) -> TokenLogprobs:
    """Concatenate runs of tokens in one go (the chunks of a stream)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return TokenLogprobs(np.zeros(0, np.float64), np.zeros(0, np.int64))
    if len(parts) == 1:
        return parts[0]
    top = None
    tops = [p.top_logprobs for p in parts]
    if all(t is not None for t in tops):
        k = min(t.shape[1] for t in tops if t is not None)
        top = np.concatenate([t[:, :k] for t in tops if t is not None])
    return TokenLogprobs(np.concatenate([p.logprobs for p in parts]),
                         np.concatenate([p.token_bytes for p in parts]), top)


class TokenBuffer:
    """The tokens of a stream so far, in arrays that grow by doubling: appending a delta and
    reading the running total are O(delta), so a confidence after every token stays cheap."""

    def __init__(self, capacity: int = 64) -> None:
        self._lp = np.empty(capacity, np.float64)
        self._bytes = np.empty(capacity, np.int64)
        self._top: np.ndarray | None = None  # (capacity, k), allocated with the first top-k
        self._has_top = True
        self.n = 0

    def append(self, lp: TokenLogprobs) -> None:
        m = len(lp)
        if m == 0:
            return
        need = self.n + m
        if need > len(self._lp):
            cap = max(need, 2 * len(self._lp))
            self._lp = np.resize(self._lp, cap)
            self._bytes = np.resize(self._bytes, cap)
            if self._top is not None:
                self._top = np.resize(self._top, (cap, self._top.shape[1]))
        self._lp[self.n:need] = lp.logprobs
        self._bytes[self.n:need] = lp.token_bytes
        top = lp.top_logprobs
        if top is None or top.shape[1] == 0:
            self._has_top = False
        elif self._has_top:
            if self._top is None:
                self._top = np.empty((len(self._lp), top.shape[1]), np.float64)
            k = min(self._top.shape[1], top.shape[1])
            if k < self._top.shape[1]:
                self._top = np.ascontiguousarray(self._top[:, :k])
            self._top[self.n:need] = top[:, :k]
        self.n = need

    def view(self) -> TokenLogprobs:
        top = self._top[:self.n] if self._has_top and self._top is not None else None
        return TokenLogprobs(self._lp[:self.n], self._bytes[:self.n], top)


@dataclass
class Received:
    """As much of a tier's answer as the cascade has when it judges it."""

    logprobs: TokenLogprobs
    text: str | None = None  # the whole text; None while a stream is still incomplete
    finish: str | None = None
    usage: Usage | None = None

    @property
    def complete(self) -> bool:
        return self.text is not None


class TierCall(ABC):
    """One call of one tier: `receive` fetches enough of the answer to judge it (`judged`) or
    to commit to it (the last tier); `aclose` releases it. Subclasses: a whole answer (`run`),
    a stream (`stream`)."""

    request: GenerationRequest
    probe_usage: Usage | None = None  # tokens the confidence probes spent on this call
    _question: str | None = None
    accounted: bool = False  # its tokens and cost are counted (Cascade._account)

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.attempt = Attempt(tier.name, tier.model)
        self.started = time.perf_counter()

    @property
    def text_so_far(self) -> str:
        """The answer's text received so far."""
        return ""

    @property
    def question(self) -> str:
        """What the request asks (the last user message): a learned rule's text feature."""
        if self._question is None:
            self._question = question_of(self.request)
        return self._question

    @abstractmethod
    async def receive(self, *, judged: bool) -> Received: ...

    @property
    @abstractmethod
    def usage(self) -> Usage | None: ...

    @property
    @abstractmethod
    def logprobs(self) -> TokenLogprobs:
        """Every token received so far."""

    @property
    def n_tokens(self) -> int:
        """How many tokens were received so far."""
        return len(self.logprobs)

    async def aclose(self) -> None:
        return None


class WholeAnswer(TierCall):
    """A tier's whole answer (`run`): the Generation is the probe."""

    def __init__(self, tier: Tier, request: GenerationRequest) -> None:
        super().__init__(tier)
        self.request = tier.request_for(request)
        self.generation: Generation | None = None

    async def receive(self, *, judged: bool) -> Received:
        gen = self.generation = await self.tier.backend.generate(self.request)
        return Received(gen.logprobs, gen.text, gen.finish_reason, gen.usage)

    @property
    def text_so_far(self) -> str:
        return self.generation.text if self.generation is not None else ""

    @property
    def usage(self) -> Usage | None:
        return self.generation.usage if self.generation is not None else None

    @property
    def logprobs(self) -> TokenLogprobs:
        assert self.generation is not None
        return self.generation.logprobs


class StreamedAnswer(TierCall):
    """A tier's stream: the deltas received so far are `buffered`; `rest` streams the others."""

    def __init__(self, tier: Tier, request: GenerationRequest, cfg: CascadeConfig) -> None:
        super().__init__(tier)
        self.request = tier.request_for(request)
        self.cfg = cfg
        self.buffered: list[StreamDelta] = []
        self._it = tier.backend.stream(self.request)
        self._done = False

    async def receive(self, *, judged: bool) -> Received:
        if not judged:  # the last tier: its first delta, so a failure before any byte falls back
            async for delta in self._it:
                self.buffered.append(delta)
                break
            return Received(self.logprobs)
        tier, cfg = self.tier, self.cfg
        decider = tier.decider
        assert decider is not None
        running = tier.running(self.question)
        n = 0
        # a confidence that needs probes is judged on the whole answer: the probes ask the same
        # tier again, which a single-engine backend (llama.cpp) serves only once this stream is
        # over, and the rule was fitted on whole answers; neither bound applies to it
        bounded = not tier.judges_whole_answer
        finish: str | None = None
        deadline = math.inf  # stream_buffer_seconds after the first token
        async for delta in self._it:
            self.buffered.append(delta)
            running.add(delta.logprobs)
            n += len(delta.logprobs)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                break
            if deadline == math.inf and n:
                deadline = time.perf_counter() + cfg.stream_buffer_seconds
            enough = n >= cfg.stream_min_tokens  # no judgement on fewer tokens
            if enough and early_escalates(running.value(), decider.threshold):
                break  # early escalation: judged (and rejected) on what came so far
            # judged on the buffer: full, or held long enough (checked as tokens come: a
            # stream that stalls is judged on its next token, or fails on its read timeout)
            if bounded and (n >= cfg.stream_buffer_tokens
                            or (enough and time.perf_counter() >= deadline)):
                break
        text = "".join(d.text for d in self.buffered) if finish is not None else None
        if finish is not None and tier.judges_whole_answer:
            await self.aclose()  # the whole answer is buffered: free the engine for the probes
        return Received(self.logprobs, text, finish, self.usage)

    async def rest(self) -> AsyncIterator[StreamDelta]:
        """The deltas after the buffered ones (none once the stream is closed)."""
        if self._done:
            return
        async for delta in self._it:
            self.buffered.append(delta)
            yield delta

    @property
    def usage(self) -> Usage | None:
        for d in reversed(self.buffered):
            if d.usage is not None:
                return d.usage
        return None

    @property
    def logprobs(self) -> TokenLogprobs:
        return join_logprobs([d.logprobs for d in self.buffered])

    @property
    def n_tokens(self) -> int:
        return sum(len(d.logprobs) for d in self.buffered)

    @property
    def text_so_far(self) -> str:
        return "".join(d.text for d in self.buffered)

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._it.aclose()  # type: ignore[attr-defined]
