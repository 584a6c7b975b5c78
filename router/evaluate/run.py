"""Run every tier on every prompt (greedy, with logprobs) and record what each answered."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from router.backends import Backend, ChatMessage, GenerationRequest
from router.config import Settings, TierConfig
from router.errors import RouterError
from router.evalset import DEFAULT_MAX_TOKENS, EvalItem, check_answer
from router.evaluate.data import Recorded, TierOutput
from router.probes import PROBE_FEATURES, ProbeSettings, question_of, run_probes
from router.scoring import TokenLogprobs
from router.text_features import texts_of

TOP_K = 5


def request_for(item: EvalItem, max_tokens: int, top_k: int = TOP_K) -> GenerationRequest:
    """The request `serve` would build for this prompt sent as a chat with temperature 0."""
    return GenerationRequest(messages=(ChatMessage("user", item.prompt),),
                             max_tokens=item.max_tokens or max_tokens, temperature=0.0,
                             top_logprobs=top_k)


def item_texts(item: EvalItem, answer: str) -> dict[str, str]:
    """The question (as `serve` reads it from this prompt's request) and an answer: what a
    learned rule's text blocks read."""
    return texts_of(question_of(request_for(item, 1)), answer)


async def answer_all(items: Sequence[EvalItem], tier: TierConfig, backend: Backend, *,
                     max_tokens: int = DEFAULT_MAX_TOKENS,
                     probes: ProbeSettings | None = None,
                     log: Callable[[str], None] = lambda _m: None) -> list[TierOutput]:
    """One tier answers every prompt as `serve` asks it (greedy, with logprobs). A failed
    generation is recorded as an empty, incorrect answer with its error. With `probes`, every
    probe of `router.probes` runs on each answer too, and what it cost is recorded."""
    outs: list[TierOutput] = []
    started = time.perf_counter()
    for i, item in enumerate(items):
        req = request_for(item, max_tokens, tier.top_logprobs_for(True))  # any signal may read it
        try:
            gen = await backend.generate(req)
        except RouterError as exc:
            empty = TokenLogprobs(np.zeros(0, np.float64), np.zeros(0, np.int64))
            outs.append(TierOutput(tier.name, tier.model, "", "error", 0, 0, 0.0, empty,
                                   False, exc.message))
            continue
        correct = check_answer(item.check, gen.text) if item.check is not None else False
        features: dict[str, float] = {}
        costs: dict[str, tuple[int, float]] = {}
        seen: dict[str, Any] = {}
        if probes is not None:
            try:
                features, spent = await run_probes(backend, req, gen, PROBE_FEATURES, probes,
                                                   record=seen)
            except RouterError as exc:
                log(f"{tier.name}: probes failed on {item.id}: {exc.message}")
            else:
                costs = {k: (c.tokens, c.seconds) for k, c in spent.items()}
        outs.append(TierOutput(
            tier=tier.name, model=backend.model_id, text=gen.text,
            finish_reason=gen.finish_reason, prompt_tokens=gen.usage.prompt_tokens,
            completion_tokens=gen.usage.completion_tokens,
            cost_usd=tier.price.cost(gen.usage.prompt_tokens, gen.usage.completion_tokens),
            logprobs=gen.logprobs, correct=correct, features=features, probe_costs=costs,
            samples=tuple(seen.get("consistency_samples", ()))))
        if (i + 1) % 10 == 0 or i + 1 == len(items):
            log(f"{tier.name}: {i + 1}/{len(items)} prompts "
                f"({time.perf_counter() - started:.0f} s)")
    return outs


async def run_tiers(items: Sequence[EvalItem], settings: Settings,
                    backends: Mapping[str, Backend], *,
                    max_tokens: int = DEFAULT_MAX_TOKENS,
                    probes: ProbeSettings | None = ProbeSettings(),
                    log: Callable[[str], None] = lambda _m: None) -> list[Recorded]:
    """Each tier answers every prompt, one tier after the other (so one model is hot at a
    time). Every tier that can escalate also runs the probes (unless `probes` is None), so
    that any policy's signal can be evaluated from the recording."""
    last = len(settings.tiers) - 1
    per_tier = [await answer_all(items, tier, backends[tier.name], max_tokens=max_tokens,
                                 probes=probes if t < last else None, log=log)
                for t, tier in enumerate(settings.tiers)]
    return [Recorded(item, tuple(outs[i] for outs in per_tier)) for i, item in enumerate(items)]


async def rerun_tier(records: Sequence[Recorded], t: int, settings: Settings,
                     backend: Backend, *, max_tokens: int = DEFAULT_MAX_TOKENS,
                     probes: ProbeSettings | None = ProbeSettings(),
                     log: Callable[[str], None] = lambda _m: None) -> list[Recorded]:
    """The recording with tier `t` answered (and probed) again, every other tier kept: to try
    other probe settings without paying for the large tier again."""
    tier = settings.tiers[t]
    outs = await answer_all([r.item for r in records], tier, backend, max_tokens=max_tokens,
                            probes=probes if t < len(settings.tiers) - 1 else None, log=log)
    return [Recorded(r.item, (*r.outputs[:t], o, *r.outputs[t + 1:]))
            for r, o in zip(records, outs, strict=True)]
