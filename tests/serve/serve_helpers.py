"""Serve test helpers: fake backends (unit tests only), config builders, a real uvicorn server in
a thread on a free loopback port. Fixtures built on them live in conftest.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import yaml

from router.backends.base import (
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.config import Settings, settings_from_dict
from router.errors import RouterError
from router.scoring import TokenLogprobs

REPO = Path(__file__).resolve().parents[2]


def token_lp(lps: Sequence[float], tokens: Sequence[str]) -> TokenLogprobs:
    top = np.array([[lp, lp - 1.0] for lp in lps], np.float64).reshape(len(lps), 2)
    return TokenLogprobs(np.asarray(lps, np.float64),
                         np.array([len(t.encode()) for t in tokens], np.int64), top,
                         tuple(tokens))


@dataclass
class FakeBackend:
    """Answers `tokens` with per-token logprob `logprob`, or raises `error`."""

    model: str
    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", "!"])
    logprob: float | list[float] = -0.1
    error: RouterError | None = None
    finish: str = "stop"
    delay_s: float = 0.0
    fail_after: int | None = None  # stream: raise `error` after this many deltas
    fail_from_call: int | None = None  # `error` only from this call on (1 = the first)
    calls: int = 0
    closed_early: int = 0
    score_logprob: float = -1.0

    @property
    def model_id(self) -> str:
        return self.model

    @property
    def _failing(self) -> bool:
        return self.error is not None and (self.fail_from_call is None
                                           or self.calls >= self.fail_from_call)

    def _lps(self) -> list[float]:
        if isinstance(self.logprob, list):
            return self.logprob
        return [self.logprob] * len(self.tokens)

    async def generate(self, request: GenerationRequest) -> Generation:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self._failing:
            assert self.error is not None
            raise self.error
        lp = token_lp(self._lps(), self.tokens)
        return Generation(self.model, "".join(self.tokens), self.finish,  # type: ignore[arg-type]
                          lp, Usage(5, len(self.tokens)),
                          TopAlternatives(tuple((t, "x") for t in self.tokens)))

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        self.calls += 1
        finished = False
        try:
            if self._failing and self.fail_after is None:
                assert self.error is not None
                raise self.error
            lps = self._lps()
            for i, tok in enumerate(self.tokens):
                if self.fail_after is not None and i >= self.fail_after and self._failing:
                    assert self.error is not None
                    raise self.error
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield StreamDelta(tok, token_lp([lps[i]], [tok]), TopAlternatives(((tok, "x"),)))
            finished = True
            yield StreamDelta("", token_lp([], []), None, self.finish,  # type: ignore[arg-type]
                              Usage(5, len(self.tokens)))
        finally:
            if not finished:
                self.closed_early += 1

    async def score(self, texts: Sequence[str]) -> list[TokenLogprobs]:
        return [token_lp([self.score_logprob] * 3, ["a", "b", "c"]) for _ in texts]

    async def check(self) -> None:
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        pass


def http_tier(model: str, url: str, **options: Any) -> dict[str, Any]:
    """An `openai_http` tier on the fake vLLM (tests/serve/fake_vllm.py) at `url`, named
    `t-<model>`."""
    return {"name": f"t-{model}", "backend": "openai_http", "base_url": url, "model": model,
            "timeout_s": 5.0, "connect_timeout_s": 1.0, "max_retries": 1, **options}


def write_policy(tmp: Path, name: str, rule: dict[str, Any],
                 signal: str | dict[str, Any] = "mean_logprob") -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "signal": signal, "rule": rule}))
    return p


def make_settings(tmp: Path, *, escalate_below: float = -1.0, tiers: list[dict[str, Any]] | None
                  = None, server: dict[str, Any] | None = None,
                  cascade: dict[str, Any] | None = None) -> Settings:
    policy = write_policy(tmp, "policy", {"kind": "threshold", "escalate_below": escalate_below})
    raw: dict[str, Any] = {
        "server": server or {},
        "tiers": tiers or [
            {"name": "small", "backend": "embedded", "model": "fake-small",
             "price": {"prompt_per_mtok": 1.0, "completion_per_mtok": 2.0}},
            {"name": "large", "backend": "embedded", "model": "fake-large",
             "price": {"prompt_per_mtok": 10.0, "completion_per_mtok": 20.0}},
        ],
        "cascade": {"policy": str(policy), **(cascade or {})},
    }
    s = settings_from_dict(raw)
    return s.model_copy(update={"source": tmp / "config.yaml"})




@dataclass
class Answer:
    """What a client got: status, headers, the answer's text (a stream's deltas joined), the
    error body or event, and the seconds to the first byte of answer text."""

    status: int
    headers: httpx.Headers
    text: str
    error: dict[str, Any] | None
    first_text_s: float | None


def ask(base: str, content: str, *, chat: bool = True, stream: bool = False,
        model: str = "cascade", timeout: float = 30.0) -> Answer:
    """One request to a router on loopback, read to its end."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"model": model, "max_tokens": 32, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": content}]
    else:
        body["prompt"] = content
    started = time.perf_counter()
    first: float | None = None
    texts: list[str] = []
    error: dict[str, Any] | None = None
    with httpx.stream("POST", base + path, json=body, timeout=timeout) as r:
        if not stream or r.status_code != 200:
            data = orjson.loads(r.read())
            error = data.get("error")
            for c in data.get("choices") or []:
                texts.append((c.get("message") or {}).get("content") or c.get("text") or "")
        else:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                event = orjson.loads(line[6:])
                error = event.get("error", error)
                for c in event.get("choices") or []:
                    piece = (c.get("delta") or {}).get("content") or c.get("text") or ""
                    if piece and first is None:
                        first = time.perf_counter() - started
                    texts.append(piece)
    if not stream and texts:
        first = time.perf_counter() - started
    return Answer(r.status_code, r.headers, "".join(texts), error, first)
