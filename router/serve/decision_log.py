"""Opt-in decision log: one JSON line per request, written off the event loop.

Each line: time, id, endpoint, requested model, final tier and model, escalated/degraded, the
first escalation reason, signal and confidence, every tier tried (score, threshold, decision,
latency, tokens, cost), total latency, usage, cost and counterfactual top-tier cost, and the
prompt (only when `include_prompt`) or its SHA-256. It is the input of calibration and eval.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from router.serve.cascade import Outcome

log = logging.getLogger("router.serve")


def record_for(outcome: Outcome, *, rid: str, endpoint: str, requested_model: str,
               stream: bool, latency_s: float, prompt: str, include_prompt: bool,
               status: int = 200, prompt_tokens: int = 0,
               completion_tokens: int = 0) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "id": rid, "endpoint": endpoint, "requested_model": requested_model, "stream": stream,
        "status": status, "final_tier": outcome.tier.name, "model": outcome.tier.model,
        "escalated": outcome.escalated, "degraded": outcome.degraded, "reason": outcome.reason,
        "decision": "escalated" if outcome.escalated else "accepted",
        "signal": outcome.signal, "confidence": outcome.confidence,
        "tiers": [asdict(a) for a in outcome.attempts],
        "latency_s": round(latency_s, 6),
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": outcome.cost_usd,
        "counterfactual_cost_usd": outcome.counterfactual_cost_usd,
    }
    if include_prompt:
        rec["prompt"] = prompt
    else:
        rec["prompt_sha256"] = hashlib.sha256(prompt.encode()).hexdigest()
    return rec


class DecisionLog:
    """Appends records from a queue in a background task; `close` drains it."""

    def __init__(self, path: Path, *, include_prompt: bool = False) -> None:
        self.path = path
        self.include_prompt = include_prompt
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._writer())

    def write(self, record: dict[str, Any]) -> None:
        self._queue.put_nowait(record)

    async def _writer(self) -> None:
        with self.path.open("ab") as f:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                lines = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                 for r in batch if r is not None)
                if lines:
                    try:
                        await asyncio.to_thread(_append, f, lines)
                    except OSError:
                        log.exception("cannot write the decision log %s", self.path)
                if None in batch:
                    return

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task
            self._task = None


def _append(f: Any, data: bytes) -> None:
    f.write(data)
    f.flush()
