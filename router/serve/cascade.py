"""The cascade: tier k answers with logprobs, the shared scorer scores, the policy decides.

    run(request)    -> CascadeResult   (one Generation, the tiers tried and why)
    stream(request) -> Outcome, then StreamDelta...   (the Outcome is yielded once the answering
                       tier is committed; nothing of a rejected answer is ever yielded)

Streaming with early escalation: tier k streams into a buffer; from `stream_min_tokens` on, the
running confidence of the buffered tokens is checked after every delta and the tier is aborted
(its iterator closed) the moment it falls below the threshold. After `stream_buffer_tokens` (or
at the end of the answer) the buffer is judged like a whole answer, then flushed and the rest
streams straight through. The last tier always answers.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from router import metrics
from router.backends.base import Backend, Generation, GenerationRequest, StreamDelta, Usage
from router.config import CascadeConfig, Settings, TierConfig
from router.decision import early_escalates, rank, scorable
from router.errors import RouterError, UnknownModelError, UpstreamError, UpstreamTimeout
from router.policy import load_policy
from router.scoring import SignalSpec, TokenLogprobs, sequence_signal
from router.serve.online import Decider, decider_for

log = logging.getLogger("router.serve")


@dataclass
class Tier:
    index: int
    config: TierConfig
    backend: Backend
    decider: Decider | None  # None for the last tier
    signal: SignalSpec  # the signal its answers are scored with

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model


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


@dataclass
class Outcome:
    """Which tier answers and why; becomes the x-router-* headers and the decision log."""

    tier: Tier
    signal: str
    attempts: list[Attempt] = field(default_factory=list)
    escalated: bool = False
    degraded: bool = False
    confidence: float | None = None
    reason: str | None = None  # the first escalation's reason
    counterfactual_cost_usd: float = 0.0

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    def headers(self) -> dict[str, str]:
        conf = self.confidence
        out = {
            "x-router-tier": self.tier.name,
            "x-router-escalated": "true" if self.escalated else "false",
            "x-router-confidence": "nan" if conf is None or not math.isfinite(conf)
            else f"{conf:.4f}",
            "x-router-signal": self.signal,
        }
        if self.reason:
            out["x-router-reason"] = self.reason
        if self.degraded:
            out["x-router-degraded"] = "true"
        return out


@dataclass
class CascadeResult:
    outcome: Outcome
    generation: Generation


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


def _as_router_error(exc: Exception, tier: Tier) -> RouterError:
    if isinstance(exc, RouterError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"tier {tier.name} timed out", upstream=tier.model)
    log.exception("tier %s failed", tier.name, exc_info=exc)
    return UpstreamError(f"tier {tier.name} failed: {type(exc).__name__}: {exc}",
                         upstream=tier.model)


def _reason_for(err: RouterError) -> str:
    return "timeout" if isinstance(err, UpstreamTimeout) else "upstream_error"


# -- one tier's answer, as the tier loop sees it -----------------------------------------------


@dataclass
class Probe:
    """As much of a tier's answer as the cascade has when it judges it."""

    logprobs: TokenLogprobs
    text: str | None = None  # the whole text; None while a stream is still incomplete
    finish: str | None = None
    usage: Usage | None = None

    @property
    def complete(self) -> bool:
        return self.text is not None


class TierCall(ABC):
    """One call of one tier: `probe` fetches enough of the answer to judge it (`judged`) or
    to commit to it (the last tier); `aclose` releases it. Subclasses: a whole answer (`run`),
    a stream (`stream`)."""

    def __init__(self, tier: Tier) -> None:
        self.tier = tier
        self.attempt = Attempt(tier.name, tier.model)
        self.started = time.perf_counter()

    @abstractmethod
    async def probe(self, *, judged: bool) -> Probe: ...

    @property
    @abstractmethod
    def usage(self) -> Usage | None: ...

    @property
    @abstractmethod
    def logprobs(self) -> TokenLogprobs:
        """Every token received so far."""

    async def aclose(self) -> None:
        return None


class WholeAnswer(TierCall):
    def __init__(self, tier: Tier, request: GenerationRequest) -> None:
        super().__init__(tier)
        self.request = request
        self.generation: Generation | None = None

    async def probe(self, *, judged: bool) -> Probe:
        gen = self.generation = await self.tier.backend.generate(self.request)
        return Probe(gen.logprobs, gen.text, gen.finish_reason, gen.usage)

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
        self.cfg = cfg
        self.buffered: list[StreamDelta] = []
        self._it = tier.backend.stream(request)
        self._done = False

    async def probe(self, *, judged: bool) -> Probe:
        if not judged:  # the last tier: its first delta, so a failure before any byte falls back
            async for delta in self._it:
                self.buffered.append(delta)
                break
            return Probe(self.logprobs)
        decider = self.tier.decider
        assert decider is not None
        parts = TokenBuffer()
        finish: str | None = None
        async for delta in self._it:
            self.buffered.append(delta)
            parts.append(delta.logprobs)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                break
            if parts.n >= self.cfg.stream_min_tokens and early_escalates(
                    sequence_signal(parts.view(), self.tier.signal), decider.threshold):
                break  # early escalation: judged (and rejected) on what came so far
            if parts.n >= self.cfg.stream_buffer_tokens:
                break
        text = "".join(d.text for d in self.buffered) if finish is not None else None
        return Probe(parts.view(), text, finish, self.usage)

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

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            await self._it.aclose()  # type: ignore[attr-defined]


Call = TypeVar("Call", bound=TierCall)


class Cascade:
    def __init__(self, settings: Settings, backends: Mapping[str, Backend]) -> None:
        self.settings = settings
        cfg = settings.cascade
        default_policy = load_policy(settings.resolve(cfg.policy)).for_serving()
        self.tiers: list[Tier] = []
        n = len(settings.tiers)
        for i, tc in enumerate(settings.tiers):
            if tc.name not in backends:
                raise UnknownModelError(f"no backend for tier {tc.name!r}")
            policy = (load_policy(settings.resolve(tc.policy)).for_serving()
                      if tc.policy is not None else default_policy)
            decider = decider_for(policy) if i < n - 1 else None
            self.tiers.append(Tier(i, tc, backends[tc.name], decider, policy.signal))
        self.gate: Decider | None = None
        if cfg.prompt_gate is not None and n > 1:
            self.gate = decider_for(load_policy(settings.resolve(cfg.prompt_gate.policy)))
        for t in self.tiers:
            if t.decider is not None:
                metrics.THRESHOLD.labels(t.name).set(t.decider.threshold)

    @property
    def top(self) -> Tier:
        return self.tiers[-1]

    def route(self, model: str) -> Tier | None:
        """`cascade` -> None (go through the cascade); a tier's name or model -> that tier."""
        if model == self.settings.server.cascade_model:
            return None
        for t in self.tiers:
            if model in (t.name, t.model):
                return t
        known = [self.settings.server.cascade_model, *(t.model for t in self.tiers)]
        raise UnknownModelError(f"The model `{model}` does not exist. Models: {', '.join(known)}",
                                param="model")

    # -- bookkeeping ---------------------------------------------------------------------------

    def _account(self, call: TierCall, usage: Usage | None, n_tokens: int) -> None:
        tier, attempt = call.tier, call.attempt
        attempt.latency_s = time.perf_counter() - call.started
        pt = usage.prompt_tokens if usage else 0
        ct = usage.completion_tokens if usage else n_tokens
        attempt.prompt_tokens, attempt.completion_tokens = pt, ct
        attempt.cost_usd = tier.config.price.cost(pt, ct)
        metrics.TOKENS.labels(tier.model, "prompt").inc(pt)
        metrics.TOKENS.labels(tier.model, "completion").inc(ct)
        metrics.COST.labels(tier.model).inc(attempt.cost_usd)
        metrics.UPSTREAM_LATENCY.labels(tier.name, "ok").observe(attempt.latency_s)

    def _failed(self, tier: Tier, attempt: Attempt, err: RouterError, started: float) -> None:
        attempt.latency_s = time.perf_counter() - started
        attempt.outcome, attempt.error = "failed", err.message
        metrics.UPSTREAM_ERRORS.labels(tier.name, err.type).inc()
        metrics.UPSTREAM_LATENCY.labels(tier.name, "error").observe(attempt.latency_s)

    def _escalate(self, out: Outcome, tier: Tier, attempt: Attempt, reason: str) -> None:
        if attempt.outcome not in ("failed", "gated"):
            attempt.outcome = "escalated"
            metrics.WASTED_COST.labels(tier.model).inc(attempt.cost_usd)
        attempt.reason = reason
        nxt = self.tiers[min(tier.index + 1, len(self.tiers) - 1)]
        metrics.ESCALATIONS.labels(tier.name, nxt.name, reason).inc()
        out.escalated = True
        out.reason = out.reason or reason
        if attempt.score is not None:
            out.confidence = attempt.score

    def _score(self, tier: Tier, attempt: Attempt, lp: TokenLogprobs) -> float:
        score = sequence_signal(lp, tier.signal)
        attempt.score = score if scorable(score) else None
        if scorable(score):
            metrics.CONFIDENCE.labels(tier.name).observe(score)
        return score

    def _judge(self, tier: Tier, attempt: Attempt, probe: Probe) -> str | None:
        """Score the probe; None to accept, else the escalation reason (the decider records
        the score). The escalation rule: hard reasons first, then the policy's decision."""
        cfg = self.settings.cascade
        assert tier.decider is not None
        score = self._score(tier, attempt, probe.logprobs)
        attempt.threshold = tier.decider.threshold
        if probe.text is not None and cfg.escalate_on_empty and not probe.text.strip():
            return "empty"
        if probe.finish == "length" and cfg.escalate_on_length:
            return "truncated"
        escalate = tier.decider.decide(score)
        metrics.THRESHOLD.labels(tier.name).set(tier.decider.threshold)
        return "low_confidence" if escalate else None

    def _settle(self, out: Outcome, call: TierCall) -> None:
        """The answering tier has delivered: account for it (a degraded answer was accounted
        when it was rejected), score it if nothing judged it (the last tier), close the books."""
        usage = call.usage
        if not out.degraded:
            lp = call.logprobs
            self._account(call, usage, len(lp))
            if call.attempt.outcome == "answered":
                score = self._score(call.tier, call.attempt, lp)
                if not out.escalated:
                    out.confidence = score
        if usage is not None:
            out.counterfactual_cost_usd = self.top.config.price.cost(usage.prompt_tokens,
                                                                     usage.completion_tokens)
            metrics.COUNTERFACTUAL_COST.labels(self.top.model).inc(out.counterfactual_cost_usd)
        if out.degraded:
            metrics.DEGRADED.labels(out.tier.name).inc()

    async def _gate(self, out: Outcome, prompt_text: str) -> bool:
        """Prompt gate: score the prompt under tier 0; True to skip tier 0."""
        if self.gate is None or not prompt_text:
            return False
        tier = self.tiers[0]
        attempt = Attempt(tier.name, tier.model, outcome="gate")
        started = time.perf_counter()
        try:
            (lp,) = await tier.backend.score([prompt_text])
        except Exception as exc:  # the gate is an optimisation: never fail a request on it
            self._failed(tier, attempt, _as_router_error(exc, tier), started)
            return False
        attempt.latency_s = time.perf_counter() - started
        metrics.UPSTREAM_LATENCY.labels(tier.name, "ok").observe(attempt.latency_s)
        score = sequence_signal(lp, self.gate.signal)
        attempt.score = score if scorable(score) else None
        attempt.threshold = self.gate.threshold
        if self.gate.decide(score):
            out.attempts.append(attempt)
            attempt.outcome = "gated"
            self._escalate(out, tier, attempt, "prompt_gate")
            return True
        return False

    # -- the tier loop -------------------------------------------------------------------------

    async def _walk(self, plan: list[Tier], out: Outcome,
                    start: Callable[[Tier], Call]) -> Call:
        """THE tier loop of `run` and `stream`: call each tier of the plan in turn; judge every
        answer but the last tier's; escalate on a failure or a rejection, else commit.

        Returns the call that answers (accepted, the last tier, or with `degraded_fallback` the
        best rejected whole answer once every later tier failed) with `out.tier` set; raises
        the last tier's error when there is none. A rejected or failed call is closed here; the
        returned one is the caller's to deliver, `_settle` and close.
        """
        rejected: list[Call] = []
        err: RouterError | None = None
        for tier in plan:
            last = tier is plan[-1]
            call = start(tier)
            out.attempts.append(call.attempt)
            try:
                probe = await call.probe(judged=not last)
            except Exception as exc:
                await call.aclose()
                err = _as_router_error(exc, tier)
                self._failed(tier, call.attempt, err, call.started)
                if not last:
                    self._escalate(out, tier, call.attempt, _reason_for(err))
                continue
            except BaseException:  # cancelled, or the client went away
                await call.aclose()
                raise
            reason = None if last else self._judge(tier, call.attempt, probe)
            if reason is None:
                if not last:
                    call.attempt.outcome = "accepted"
                    out.confidence = call.attempt.score
                out.tier = tier
                return call
            await call.aclose()
            self._account(call, probe.usage, len(probe.logprobs))
            self._escalate(out, tier, call.attempt, reason)
            if probe.complete:
                rejected.append(call)
        if rejected and self.settings.cascade.degraded_fallback:
            best = max(rejected, key=lambda c: rank(c.attempt.score))
            out.tier, out.degraded = best.tier, True
            log.warning("every higher tier failed; serving tier %s's answer (degraded)",
                        best.tier.name)
            return best
        assert err is not None
        raise err

    def _start(self, direct: Tier | None) -> tuple[list[Tier], Outcome]:
        plan = [direct] if direct is not None else list(self.tiers)
        return plan, Outcome(tier=plan[-1], signal=plan[-1].signal.key)

    # -- whole answers and streams -------------------------------------------------------------

    async def run(self, request: GenerationRequest, *, direct: Tier | None = None,
                  prompt_text: str = "") -> CascadeResult:
        plan, out = self._start(direct)
        if direct is None and await self._gate(out, prompt_text):
            plan = plan[1:]
        call = await self._walk(plan, out, lambda tier: WholeAnswer(tier, request))
        self._settle(out, call)
        assert call.generation is not None
        return CascadeResult(out, call.generation)

    async def stream(self, request: GenerationRequest, *, direct: Tier | None = None,
                     prompt_text: str = "") -> AsyncGenerator[Outcome | StreamDelta, None]:
        plan, out = self._start(direct)
        if direct is None and await self._gate(out, prompt_text):
            plan = plan[1:]
        cfg = self.settings.cascade
        call = await self._walk(plan, out, lambda tier: StreamedAnswer(tier, request, cfg))
        try:
            yield out
            for delta in list(call.buffered):
                yield delta
            async for delta in call.rest():
                yield delta
        except Exception as exc:  # after the commit: the answer is cut, nothing to fall back to
            err = _as_router_error(exc, call.tier)
            self._failed(call.tier, call.attempt, err, call.started)
            raise err from None
        finally:
            await call.aclose()
        self._settle(out, call)
