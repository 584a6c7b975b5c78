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
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from router import metrics
from router.backends.base import Backend, Generation, GenerationRequest, StreamDelta, Usage
from router.config import Settings, TierConfig
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


def confidence(model: str, lp: TokenLogprobs, spec: SignalSpec) -> float:
    """The policy signal of one answer (NaN when it has no tokens)."""
    del model  # one answer of one model: nothing to compare across models here
    return sequence_signal(lp, spec)


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

    def _account(self, tier: Tier, attempt: Attempt, usage: Usage | None, started: float,
                 n_tokens: int = 0) -> None:
        attempt.latency_s = time.perf_counter() - started
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
        if attempt.outcome != "failed":
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
        score = confidence(tier.model, lp, tier.signal)
        attempt.score = score if math.isfinite(score) else None
        if math.isfinite(score):
            metrics.CONFIDENCE.labels(tier.name).observe(score)
        return score

    def _judge(self, tier: Tier, attempt: Attempt, score: float, text: str | None,
               finish: str | None) -> str | None:
        """None to accept, else the escalation reason (the decider records the score)."""
        cfg = self.settings.cascade
        assert tier.decider is not None
        attempt.threshold = tier.decider.threshold
        if text is not None and cfg.escalate_on_empty and not text.strip():
            return "empty"
        if finish == "length" and cfg.escalate_on_length:
            return "truncated"
        escalate = tier.decider.decide(score)
        metrics.THRESHOLD.labels(tier.name).set(tier.decider.threshold)
        return "low_confidence" if escalate else None

    def _finish(self, out: Outcome, usage: Usage | None) -> None:
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
        score = confidence(tier.model, lp, self.gate.signal)
        attempt.score = score if math.isfinite(score) else None
        attempt.threshold = self.gate.threshold
        if self.gate.decide(score):
            out.attempts.append(attempt)
            attempt.outcome = "gated"
            self._escalate(out, tier, attempt, "prompt_gate")
            return True
        return False

    def _plan(self, direct: Tier | None) -> list[Tier]:
        return [direct] if direct is not None else list(self.tiers)

    # -- whole answers -------------------------------------------------------------------------

    async def run(self, request: GenerationRequest, *, direct: Tier | None = None,
                  prompt_text: str = "") -> CascadeResult:
        plan = self._plan(direct)
        out = Outcome(tier=plan[-1], signal=plan[-1].signal.key)
        if direct is None and await self._gate(out, prompt_text):
            plan = plan[1:]
        rejected: list[tuple[Tier, Generation, float]] = []
        err: RouterError | None = None
        for tier in plan:
            last = tier is plan[-1]
            attempt = Attempt(tier.name, tier.model)
            out.attempts.append(attempt)
            started = time.perf_counter()
            try:
                gen = await tier.backend.generate(request)
            except Exception as exc:
                err = _as_router_error(exc, tier)
                self._failed(tier, attempt, err, started)
                if not last:
                    self._escalate(out, tier, attempt, _reason_for(err))
                continue
            self._account(tier, attempt, gen.usage, started)
            score = self._score(tier, attempt, gen.logprobs)
            if not last:
                reason = self._judge(tier, attempt, score, gen.text, gen.finish_reason)
                if reason is not None:
                    self._escalate(out, tier, attempt, reason)
                    rejected.append((tier, gen, score))
                    continue
                attempt.outcome = "accepted"
            out.tier = tier
            if not out.escalated or direct is not None:
                out.confidence = score
            self._finish(out, gen.usage)
            return CascadeResult(out, gen)
        if rejected and self.settings.cascade.degraded_fallback:
            tier, gen, score = max(rejected, key=lambda r: -math.inf if math.isnan(r[2]) else r[2])
            out.tier, out.degraded = tier, True
            self._finish(out, gen.usage)
            log.warning("every higher tier failed; serving tier %s's answer (degraded)", tier.name)
            return CascadeResult(out, gen)
        assert err is not None
        raise err

    # -- streams -------------------------------------------------------------------------------

    async def _probe(self, tier: Tier, it: AsyncIterator[StreamDelta], buffered: list[StreamDelta],
                     attempt: Attempt) -> tuple[str | None, bool]:
        """Buffer tier's stream until it can be judged: (escalation reason or None, complete)."""
        cfg = self.settings.cascade
        decider = tier.decider
        assert decider is not None
        parts = TokenBuffer()
        n = 0
        finish: str | None = None
        async for delta in it:
            buffered.append(delta)
            if len(delta.logprobs):
                parts.append(delta.logprobs)
                n += len(delta.logprobs)
            if delta.finish_reason is not None:
                finish = delta.finish_reason
                break
            if n >= cfg.stream_min_tokens:
                running = confidence(tier.model, parts.view(), tier.signal)
                if running < decider.threshold:  # early escalation: abort this tier now
                    attempt.threshold = decider.threshold
                    self._score(tier, attempt, parts.view())
                    decider.decide(running)
                    metrics.THRESHOLD.labels(tier.name).set(decider.threshold)
                    return "low_confidence", False
            if n >= cfg.stream_buffer_tokens:
                break
        complete = finish is not None
        score = self._score(tier, attempt, parts.view())
        text = "".join(d.text for d in buffered) if complete else None
        return self._judge(tier, attempt, score, text, finish), complete

    async def stream(self, request: GenerationRequest, *, direct: Tier | None = None,
                     prompt_text: str = "") -> AsyncGenerator[Outcome | StreamDelta, None]:
        plan = self._plan(direct)
        out = Outcome(tier=plan[-1], signal=plan[-1].signal.key)
        if direct is None and await self._gate(out, prompt_text):
            plan = plan[1:]
        rejected: list[tuple[Tier, Attempt, list[StreamDelta]]] = []
        err: RouterError | None = None
        for tier in plan:
            last = tier is plan[-1]
            attempt = Attempt(tier.name, tier.model)
            out.attempts.append(attempt)
            started = time.perf_counter()
            buffered: list[StreamDelta] = []
            committed = False
            it = tier.backend.stream(request)
            try:
                if last:
                    async for delta in it:
                        buffered.append(delta)
                        break
                else:
                    reason, complete = await self._probe(tier, it, buffered, attempt)
                    if reason is not None:
                        n = sum(len(d.logprobs) for d in buffered)
                        self._account(tier, attempt, _usage_of(buffered), started, n)
                        self._escalate(out, tier, attempt, reason)
                        if complete:
                            rejected.append((tier, attempt, buffered))
                        continue
                    attempt.outcome = "accepted"
                    out.confidence = attempt.score
                out.tier = tier
                committed = True
                yield out
                for delta in buffered:
                    yield delta
                async for delta in it:
                    buffered.append(delta)
                    yield delta
                n = sum(len(d.logprobs) for d in buffered)
                usage = _usage_of(buffered)
                self._account(tier, attempt, usage, started, n)
                if last:
                    score = self._score(tier, attempt, join_logprobs([d.logprobs
                                                                      for d in buffered]))
                    if direct is not None:
                        out.confidence = score
                self._finish(out, usage)
                return
            except Exception as exc:
                err = _as_router_error(exc, tier)
                self._failed(tier, attempt, err, started)
                if committed:
                    raise err from None
                if not last:
                    self._escalate(out, tier, attempt, _reason_for(err))
            finally:
                await it.aclose()  # type: ignore[attr-defined]
        if rejected and self.settings.cascade.degraded_fallback:
            tier, attempt, buffered = max(
                rejected, key=lambda r: -math.inf if r[1].score is None else r[1].score)
            out.tier, out.degraded = tier, True
            self._finish(out, _usage_of(buffered))
            yield out
            for delta in buffered:
                yield delta
            return
        assert err is not None
        raise err


def _usage_of(deltas: Sequence[StreamDelta]) -> Usage | None:
    for d in reversed(deltas):
        if d.usage is not None:
            return d.usage
    return None
