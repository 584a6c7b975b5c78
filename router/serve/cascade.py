"""The cascade: tier k answers with logprobs, the shared scorer scores, the policy decides.

    run(request)    -> CascadeResult   (one Generation, the tiers tried and why)
    stream(request) -> Outcome, then StreamDelta...   (the Outcome is yielded once the answering
                       tier is committed; nothing of a rejected answer is ever yielded)

Both walk the tiers with one loop, `_walk`: each tier's call (`tier_call.WholeAnswer` for
`run`, `StreamedAnswer` for `stream`) receives an answer, `_judge` decides on every one but
the last tier's (empty, truncated, then the policy), and the loop escalates or commits;
`_settle` closes the books of the answering tier. The last tier always answers.

Streaming with early escalation: tier k streams into a buffer; from `stream_min_tokens` on, the
running confidence of the buffered tokens is checked after every delta and the tier is aborted
(its iterator closed) the moment it falls below the threshold. After `stream_buffer_tokens`,
`stream_buffer_seconds` after its first token, or at the end of the answer (whichever comes
first; a confidence that needs the whole answer waits for its end) the buffer is judged like a
whole answer, then flushed and the rest streams straight through.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TypeVar

from router import metrics
from router.backends.base import Backend, Generation, GenerationRequest, StreamDelta, Usage
from router.config import Settings
from router.decision import rank, scorable
from router.errors import RouterError, UnknownModelError, UpstreamError, UpstreamTimeout
from router.learned import LearnedSignal, confidence, confidence_and_values
from router.probes import probe_settings, run_probes
from router.scoring import TokenLogprobs
from router.serve.online import Decider, serving_plan
from router.serve.tier_call import Attempt, Received, StreamedAnswer, Tier, TierCall, WholeAnswer
from router.text_features import Texts, texts_of

log = logging.getLogger("router.serve")


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


def _answer_text(call: TierCall, got: Received) -> str:
    """What the tier answered: the whole answer, or a stream's buffered first tokens."""
    return got.text if got.text is not None else call.text_so_far


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

Call = TypeVar("Call", bound=TierCall)


class Cascade:
    def __init__(self, settings: Settings, backends: Mapping[str, Backend]) -> None:
        self.settings = settings
        cfg = settings.cascade
        plan = serving_plan(settings)  # loads and checks every policy now
        self.tiers: list[Tier] = []
        for i, tc in enumerate(settings.tiers):
            if tc.name not in backends:
                raise UnknownModelError(f"no backend for tier {tc.name!r}")
            self.tiers.append(Tier(i, tc, backends[tc.name], plan.deciders[i],
                                   plan.policies[i].signal, probe_settings(cfg.probes)))
        self.gate: Decider | None = plan.gate
        dl = settings.server.decision_log
        #: the judged answer's text goes into the decision log (with the question) only then
        self._log_text = dl is not None and dl.include_prompt
        #: the threshold each tier's gauge shows (set again only when it moves)
        self._shown: dict[str, float] = {}
        for t in self.tiers:
            if t.decider is not None:
                self._show_threshold(t.name, t.decider.threshold)

    def _show_threshold(self, tier: str, threshold: float) -> None:
        if self._shown.get(tier) != threshold:
            self._shown[tier] = threshold
            metrics.THRESHOLD.labels(tier).set(threshold)

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
        call.accounted = True
        attempt.latency_s = time.perf_counter() - call.started
        pt = usage.prompt_tokens if usage else 0
        ct = usage.completion_tokens if usage else n_tokens
        attempt.prompt_tokens, attempt.completion_tokens = pt, ct
        if call.probe_usage is not None:  # the confidence probes' tokens are spent too
            pt += call.probe_usage.prompt_tokens
            ct += call.probe_usage.completion_tokens
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

    def _score(self, tier: Tier, attempt: Attempt, lp: TokenLogprobs,
               features: Mapping[str, float] | None = None,
               texts: Texts | None = None) -> float:
        score, values = confidence_and_values(tier.signal, lp, features, texts)
        attempt.score = score if scorable(score) else None
        if isinstance(tier.signal, LearnedSignal):  # log what a learned rule decided on
            attempt.features = {f: (v if math.isfinite(v) else None) for f, v in values.items()}
        if scorable(score):
            metrics.CONFIDENCE.labels(tier.name).observe(score)
        return score

    async def _probe(self, call: TierCall, got: Received) -> dict[str, float]:
        """Run the confidence probes the tier's signal needs on what it answered (the whole
        answer, or a stream's buffered first tokens); their tokens are the tier's cost too."""
        tier, attempt = call.tier, call.attempt
        gen = Generation(tier.model, _answer_text(call, got),
                         "length" if got.finish == "length" else "stop", got.logprobs,
                         got.usage or Usage(0, len(got.logprobs)))
        values, costs = await run_probes(tier.backend, call.request, gen, tier.probe_features,
                                         tier.probes, partial=not got.complete)
        attempt.probe_tokens = sum(c.tokens for c in costs.values())
        attempt.probe_latency_s = sum(c.seconds for c in costs.values())
        call.probe_usage = Usage(sum(c.prompt_tokens for c in costs.values()),
                                 sum(c.completion_tokens for c in costs.values()))
        return values

    async def _judge(self, call: TierCall, got: Received) -> str | None:
        """Score what the tier answered; None to accept, else the escalation reason (the decider
        records the score). The escalation rule: hard reasons first, then the policy's
        decision on the confidence (probes run first when the policy's signal needs them)."""
        tier, attempt = call.tier, call.attempt
        cfg = self.settings.cascade
        assert tier.decider is not None
        if got.text is not None and cfg.escalate_on_empty and not got.text.strip():
            self._score(tier, attempt, got.logprobs)
            attempt.threshold = tier.decider.threshold
            return "empty"
        if got.finish == "length" and cfg.escalate_on_length:
            self._score(tier, attempt, got.logprobs)
            attempt.threshold = tier.decider.threshold
            return "truncated"
        features = await self._probe(call, got) if tier.probe_features else {}
        texts = None
        if tier.reads_text or self._log_text:  # a stream's text is joined only then
            text = _answer_text(call, got)
            texts = texts_of(call.question, text) if tier.reads_text else None
            attempt.text = text if self._log_text else None
        score = self._score(tier, attempt, got.logprobs, features, texts)
        attempt.threshold = tier.decider.threshold
        escalate = tier.decider.decide(score)
        self._show_threshold(tier.name, tier.decider.threshold)
        return "low_confidence" if escalate else None

    def _settle(self, out: Outcome, call: TierCall) -> None:
        """The answering tier has delivered: account for it (unless it was when it was
        rejected: a degraded answer), score it if nothing judged it (the last tier, or a tier
        asked again for a degraded answer), close the books."""
        usage = call.usage
        if not call.accounted:
            self._account(call, usage, call.n_tokens)
            if call.attempt.outcome == "answered":
                lp = call.logprobs
                texts = (texts_of(call.question, call.text_so_far) if call.tier.reads_text
                         else None)  # a stream's text is joined only for a rule that reads it
                score = self._score(call.tier, call.attempt, lp, texts=texts)
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
        score = confidence(self.gate.signal, lp)
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

        Returns the call that answers (accepted, the last tier, or with `degraded_fallback` a
        rejected tier's answer once every later tier failed: `_fall_back`) with `out.tier` set;
        raises the last tier's error when there is none. A rejected or failed call is closed
        here; the returned one is the caller's to deliver, `_settle` and close.
        """
        rejected: list[tuple[Call, bool]] = []  # (call, its whole answer was received)
        err: RouterError | None = None
        for tier in plan:
            last = tier is plan[-1]
            call = start(tier)
            out.attempts.append(call.attempt)
            try:
                got = await call.receive(judged=not last)
            except Exception as exc:
                await call.aclose()
                # kept without its traceback, which holds this frame: with it, a cycle per
                # failed call that only the collector frees (and its collections pause the
                # server); `_as_router_error` logged what an unexpected one needs
                err = _as_router_error(exc, tier).with_traceback(None)
                self._failed(tier, call.attempt, err, call.started)
                if not last:
                    self._escalate(out, tier, call.attempt, _reason_for(err))
                continue
            except BaseException:  # cancelled, or the client went away
                await call.aclose()
                raise
            try:
                reason = None if last else await self._judge(call, got)
            except Exception as exc:  # a probe failed: the tier cannot vouch for its answer
                err = _as_router_error(exc, tier).with_traceback(None)
                self._account(call, got.usage, len(got.logprobs))
                self._escalate(out, tier, call.attempt, _reason_for(err))
                call.attempt.error = err.message
                await call.aclose()
                continue
            if reason is None:
                if not last:
                    call.attempt.outcome = "accepted"
                    out.confidence = call.attempt.score
                out.tier = tier
                return call
            await call.aclose()
            self._account(call, got.usage, len(got.logprobs))
            self._escalate(out, tier, call.attempt, reason)
            rejected.append((call, got.complete))
        if rejected and self.settings.cascade.degraded_fallback:
            return await self._fall_back(rejected, out, start)
        assert err is not None
        try:
            raise err
        finally:  # as above: the raised error's traceback holds this frame
            del err

    async def _fall_back(self, rejected: list[tuple[Call, bool]], out: Outcome,
                         start: Callable[[Tier], Call]) -> Call:
        """Every later tier failed: serve a rejected answer, marked degraded. The best whole
        one by score, as it came (`run`'s answers are all whole). A stream rejected on its first
        tokens was closed then (early escalation frees the tier at once; a rejected stream kept
        open would spend the tier's time on every escalation, and hold a single-engine tier),
        so there is only a partial answer: the best such tier is asked again and its new answer
        is served unjudged, like a last tier's. Raises that call's error if it fails too."""
        whole = [c for c, complete in rejected if complete]
        best = max(whole or [c for c, _ in rejected], key=lambda c: rank(c.attempt.score))
        out.tier, out.degraded = best.tier, True
        if whole:
            log.warning("every higher tier failed; serving tier %s's answer (degraded)",
                        best.tier.name)
            return best
        log.warning("every higher tier failed; asking tier %s again for a whole answer "
                    "(degraded)", best.tier.name)
        call = start(best.tier)
        out.attempts.append(call.attempt)
        try:
            await call.receive(judged=False)
        except Exception as exc:
            await call.aclose()
            err = _as_router_error(exc, best.tier)
            self._failed(best.tier, call.attempt, err, call.started)
            raise err from None
        except BaseException:  # cancelled, or the client went away
            await call.aclose()
            raise
        return call

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
        """The committed Outcome, then the answer's deltas one by one."""
        async with aclosing(self.stream_batches(request, direct=direct,
                                                prompt_text=prompt_text)) as batches:
            async for item in batches:
                if isinstance(item, Outcome):
                    yield item
                else:
                    for delta in item:
                        yield delta

    async def stream_batches(self, request: GenerationRequest, *, direct: Tier | None = None,
                             prompt_text: str = ""
                             ) -> AsyncGenerator[Outcome | list[StreamDelta], None]:
        """The committed Outcome, then the answer's deltas in batches: everything the judged
        buffer holds as one (the server sends it in one write, not one per token), then each
        later delta as it comes."""
        plan, out = self._start(direct)
        if direct is None and await self._gate(out, prompt_text):
            plan = plan[1:]
        cfg = self.settings.cascade
        call = await self._walk(plan, out, lambda tier: StreamedAnswer(tier, request, cfg))
        try:
            yield out
            if call.buffered:
                yield list(call.buffered)
            async for delta in call.rest():
                yield [delta]
        except Exception as exc:  # after the commit: the answer is cut, nothing to fall back to
            err = _as_router_error(exc, call.tier)
            self._failed(call.tier, call.attempt, err, call.started)
            raise err from None
        finally:
            await call.aclose()
        self._settle(out, call)
