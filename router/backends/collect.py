"""Helpers every backend shares: the empty token run, and a stream gathered into one answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from router.backends.base import FinishReason, Generation, StreamDelta, TopAlternatives, Usage
from router.scoring import TokenLogprobs


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


#: one shared empty run (read-only: a stream's role and finish chunks have no tokens, and
#: making new arrays for each was measurable on the request path)
_EMPTY = TokenLogprobs(_read_only(np.zeros(0, np.float64)), _read_only(np.zeros(0, np.int64)),
                       _read_only(np.zeros((0, 1), np.float64)), ())


def empty_logprobs() -> TokenLogprobs:
    """No tokens: logprobs (0,), token_bytes (0,), top_logprobs (0, 1), tokens ()."""
    return _EMPTY


async def collect(model_id: str, deltas: AsyncIterator[StreamDelta]) -> Generation:
    """Gather a stream into one Generation (a backend's `generate` over its own `stream`)."""
    text: list[str] = []
    lp = empty_logprobs()
    alts: list[tuple[str, ...]] = []
    finish: FinishReason = "stop"
    usage = Usage(0, 0)
    async for d in deltas:
        text.append(d.text)
        if len(d.logprobs):
            lp = lp.concat(d.logprobs) if len(lp) else d.logprobs
            if d.alternatives is not None:
                alts.extend(d.alternatives.tokens)
        if d.finish_reason is not None:
            finish = d.finish_reason
        if d.usage is not None:
            usage = d.usage
    return Generation(
        model=model_id,
        text="".join(text),
        finish_reason=finish,
        logprobs=lp,
        usage=usage,
        alternatives=TopAlternatives(tuple(alts)) if alts else None,
    )
