"""Quality sampling: a fraction of *accepted* answers is also sent to the top tier, in the
background and off the request path, and the agreement of the two is recorded as metrics.

    sampler.maybe_sample(tier=..., request=..., prompt_text=..., answer=...) -> bool

For each sample the top tier (1) answers the same request itself, and (2) scores the accepted
answer after the prompt (prompt scoring). Recorded, by the tier that answered:
- `router_shadow_answer_logprob`: the top tier's mean token log-probability of the accepted answer
  (how plausible the large model finds the small model's answer),
- `router_shadow_similarity_ratio`: normalised text similarity of the two answers (0 to 1),
- `router_shadow_agreements_total`: samples where either signal clears its bar,
- `router_shadow_samples_total{outcome=scored|failed|dropped}`, `router_shadow_cost_usd_total`.

With a decision log, each scored sample also becomes a log line of its own,
`{"id": <request id>, "kind": "shadow", "shadow": {"tier", "agree", "similarity",
"answer_logprob"}}`, so `router calibrate --log --learn` can use the agreement as a label.

Concurrency is bounded: a sample that finds `max_concurrency` samples in flight is dropped (and
counted), never queued, so a slow top tier cannot pile up work. Nothing here touches the
client's response; every error is counted and logged, never raised into the request.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import math
import random
import re
import unicodedata
from collections.abc import Callable
from typing import Any

import numpy as np

from router import metrics
from router.backends.base import Backend, GenerationRequest
from router.config import TierConfig
from router.scoring import TokenLogprobs

log = logging.getLogger("router.serve.shadow")

DEFAULT_SCORE_TEMPLATE = "{prompt}\n{answer}"
_WORD = re.compile(r"\w+")


def normalise_words(text: str) -> list[str]:
    """Case-folded words without punctuation.

    Example: "The Answer: 42!" -> ["the", "answer", "42"]
    """
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def text_similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (difflib ratio over normalised words).

    Example: ("The answer is 42.", "the answer is 42") -> 1.0; ("yes", "no") -> 0.0.
    Two empty texts are identical (1.0).
    """
    wa, wb = normalise_words(a), normalise_words(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def suffix_mean_logprob(lp: TokenLogprobs, suffix_bytes: int) -> float:
    """Mean logprob of the tokens that lie entirely within the last `suffix_bytes` bytes.

    Counting from the end keeps this right when the backend drops the first token of the text
    (vLLM's prompt_logprobs start with None). A token straddling the boundary is left out.
    Example: token_bytes [5, 3, 2], logprobs [-9, -1, -3], suffix_bytes 5 -> (-1 + -3) / 2 = -2.0.
    NaN when no token fits.
    """
    if suffix_bytes <= 0 or len(lp) == 0:
        return math.nan
    to_end = np.cumsum(lp.token_bytes[::-1])[::-1]  # (n,) bytes from each token's start to the end
    mask = to_end <= suffix_bytes
    if not mask.any():
        return math.nan
    return float(lp.logprobs[mask].mean())


class ShadowSampler:
    """Samples accepted answers against the top tier (one instance per app, in the lifespan)."""

    def __init__(self, top_backend: Backend, top_tier: TierConfig, *, fraction: float,
                 max_concurrency: int = 2, min_similarity: float = 0.5,
                 min_logprob: float = -2.0, score_template: str = DEFAULT_SCORE_TEMPLATE,
                 rng: random.Random | None = None,
                 record: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.backend = top_backend
        self.top = top_tier
        self.fraction = fraction
        self.max_concurrency = max_concurrency
        self.min_similarity = min_similarity
        self.min_logprob = min_logprob
        self.score_template = score_template
        self._rng = rng if rng is not None else random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self.record = record

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def maybe_sample(self, *, tier: str, request: GenerationRequest, prompt_text: str,
                     answer: str, rid: str | None = None) -> bool:
        """Call on the event loop after an answer from a lower tier was accepted. Returns at once;
        True when a background sample was started."""
        if self.fraction <= 0.0 or self._rng.random() >= self.fraction:
            return False
        if len(self._tasks) >= self.max_concurrency:
            metrics.SHADOW_SAMPLES.labels(tier, "dropped").inc()
            return False
        task = asyncio.get_running_loop().create_task(
            self._sample(tier, request, prompt_text, answer, rid))
        self._tasks.add(task)
        metrics.SHADOW_IN_FLIGHT.inc()
        task.add_done_callback(self._done)
        return True

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        metrics.SHADOW_IN_FLIGHT.dec()

    async def _sample(self, tier: str, request: GenerationRequest, prompt_text: str,
                      answer: str, rid: str | None = None) -> None:
        try:
            top_answer, lp = await self.compare(request, prompt_text, answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.SHADOW_SAMPLES.labels(tier, "failed").inc()
            log.warning("shadow sample against %s failed: %s: %s", self.top.name,
                        type(exc).__name__, exc)
            return
        sim = await asyncio.to_thread(text_similarity, answer, top_answer)
        metrics.SHADOW_SAMPLES.labels(tier, "scored").inc()
        metrics.SHADOW_SIMILARITY.labels(tier).observe(sim)
        if math.isfinite(lp):
            metrics.SHADOW_LOGPROB.labels(tier).observe(lp)
        agree = sim >= self.min_similarity or (math.isfinite(lp) and lp >= self.min_logprob)
        if agree:
            metrics.SHADOW_AGREEMENTS.labels(tier).inc()
        if self.record is not None and rid is not None:
            self.record({"id": rid, "kind": "shadow",
                         "shadow": {"tier": tier, "agree": agree, "similarity": round(sim, 6),
                                    "answer_logprob": round(lp, 6) if math.isfinite(lp)
                                    else None}})

    async def compare(self, request: GenerationRequest, prompt_text: str,
                      answer: str) -> tuple[str, float]:
        """(the top tier's own answer, its mean logprob of `answer` after the prompt)."""
        text = self.score_template.format(prompt=prompt_text, answer=answer)
        gen, scored = await asyncio.gather(self.backend.generate(request),
                                           self.backend.score([text]))
        cost = self.top.price.cost(gen.usage.prompt_tokens, gen.usage.completion_tokens)
        cost += self.top.price.cost(len(scored[0]) + 1, 1)  # scoring: the prompt and one token
        metrics.SHADOW_COST.labels(self.top.model).inc(cost)
        return gen.text, suffix_mean_logprob(scored[0], len(answer.encode("utf-8")))

    async def aclose(self) -> None:
        """Cancel samples still running (call from the lifespan's shutdown)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
