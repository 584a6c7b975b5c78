"""Opt-in decision log: one JSON line per request, written off the event loop.

Each line: time, id, endpoint, requested model, final tier and model, escalated/degraded, the
first escalation reason, signal and confidence, every tier tried (score, threshold, decision,
latency, tokens, cost), total latency, usage, cost and counterfactual top-tier cost, the worker
that served it (`router serve --workers N`), and either the prompt's SHA-256 or, only with
`include_prompt`, the prompt itself, the question and each judged answer's text (what
`router calibrate --learn --text` needs). It is the input of calibration and eval.

N workers append to one file: the file is opened with O_APPEND and every batch of whole lines is
one `write(2)`, which the kernel appends atomically (the offset update and the copy happen under
the file's lock), so lines of two workers never interleave or tear.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from router.serve.cascade import Outcome
from router.serve.tier_call import Attempt

log = logging.getLogger("router.serve")


def record_for(outcome: Outcome, *, rid: str, endpoint: str, requested_model: str,
               stream: bool, latency_s: float, prompt: str, include_prompt: bool,
               status: int = 200, prompt_tokens: int = 0,
               completion_tokens: int = 0, question: str = "") -> dict[str, Any]:
    rec: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "id": rid, "endpoint": endpoint, "requested_model": requested_model, "stream": stream,
        "status": status, "final_tier": outcome.tier.name, "model": outcome.tier.model,
        "escalated": outcome.escalated, "degraded": outcome.degraded, "reason": outcome.reason,
        "decision": "escalated" if outcome.escalated else "accepted",
        "signal": outcome.signal, "confidence": outcome.confidence,
        "tiers": [_attempt(a, include_prompt) for a in outcome.attempts],
        "latency_s": round(latency_s, 6),
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "cost_usd": outcome.cost_usd,
        "counterfactual_cost_usd": outcome.counterfactual_cost_usd,
    }
    if include_prompt:
        rec["prompt"] = prompt
        rec["question"] = question  # what a learned rule's text terms read (calibrate --text)
    else:
        rec["prompt_sha256"] = hashlib.sha256(prompt.encode()).hexdigest()
    return rec


def _attempt(attempt: Attempt, include_text: bool) -> dict[str, Any]:
    out = asdict(attempt)
    if not include_text or out.get("text") is None:
        out.pop("text", None)
    return out


class DecisionLog:
    """Appends records from a queue in a background task; `close` drains it."""

    def __init__(self, path: Path, *, include_prompt: bool = False,
                 worker: int | None = None) -> None:
        self.path = path
        self.include_prompt = include_prompt
        self.worker = worker
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._writer())

    def write(self, record: dict[str, Any]) -> None:
        if self.worker is not None:
            record["worker"] = self.worker
        self._queue.put_nowait(record)

    async def _writer(self) -> None:
        fd = await asyncio.to_thread(os.open, self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                                     0o644)
        try:
            while True:
                batch = [await self._queue.get()]
                while not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                lines = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                 for r in batch if r is not None)
                if lines:
                    try:
                        await asyncio.to_thread(_append, fd, lines)
                    except OSError:
                        log.exception("cannot write the decision log %s", self.path)
                if None in batch:
                    return
        finally:
            os.close(fd)

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task
            self._task = None


def _append(fd: int, data: bytes) -> None:
    """One O_APPEND write of whole lines. A short write (a full disk) goes on from where it
    stopped; only then could another process's line land in between."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
