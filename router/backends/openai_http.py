"""The `openai_http` backend: any OpenAI-compatible server, vLLM first.

One pooled `aiohttp.ClientSession` per upstream, bounded concurrency, timeouts, and retries
with exponential backoff on connection errors, 429 and 5xx (before any byte of an answer was
used). aiohttp rather than httpx: measured on this project's machines, httpx spent 0.75-0.95 ms
of CPU per pooled request and its pool's work grows with connections and waiters, against
0.12-0.22 ms for aiohttp (see bench/RESULTS.md); on the router's request path that was half of
its CPU. Responses are parsed in vLLM's exact shapes:

- chat:        choices[0].logprobs.content[] = {token, logprob, bytes, top_logprobs: [...]}
- completions: choices[0].logprobs = {tokens, token_logprobs, top_logprobs, text_offset}
- scoring:     `max_tokens: 1, prompt_logprobs: 0` ->
               choices[0].prompt_logprobs = [null, {"<id>": {logprob, rank, decoded_token}}, ...]
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import orjson

from router.backends.base import (
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.backends.embedded import collect
from router.errors import (
    InputError,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from router.scoring import TokenLogprobs

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpSettings:
    base_url: str  # e.g. http://127.0.0.1:8001/v1
    model: str  # the upstream's model name
    api_key: str | None = None
    timeout_s: float = 60.0
    connect_timeout_s: float = 5.0
    max_concurrency: int = 64
    max_retries: int = 2
    continuous_usage: bool = False
    backoff_s: float = 0.25
    score_concurrency: int = 8


class OpenAIHttpBackend:
    def __init__(self, model_id: str, settings: HttpSettings) -> None:
        self._model_id = model_id
        self.settings = settings
        self._base = settings.base_url.rstrip("/") + "/"
        self._headers = {"content-type": "application/json"}
        if settings.api_key:
            self._headers["authorization"] = f"Bearer {settings.api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_s,
                                              connect=settings.connect_timeout_s)
        # streams: no total limit, but no more than timeout_s of silence between chunks
        self._stream_timeout = aiohttp.ClientTimeout(total=None,
                                                     connect=settings.connect_timeout_s,
                                                     sock_read=settings.timeout_s)

    @property
    def model_id(self) -> str:
        return self._model_id

    def _client(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (created on first use: aiohttp binds a
        session to the loop it was made in)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency,
                                               keepalive_timeout=30.0),
                headers=self._headers, auto_decompress=True, raise_for_status=False)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    # -- transport --------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> UpstreamError:
        """aiohttp's and asyncio's errors -> ours (the boundary of the error tree)."""
        where = f"upstream {self.model_id} ({self.settings.base_url})"
        if isinstance(exc, TimeoutError):  # aiohttp's timeouts subclass it
            return UpstreamTimeout(
                f"{where} timed out: {type(exc).__name__}", upstream=self.model_id, retryable=True
            )
        if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError):
            return UpstreamUnavailable(
                f"{where} is unreachable: {exc}", upstream=self.model_id, retryable=True
            )
        return UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}",
                             upstream=self.model_id, retryable=True)

    def _status_error(self, status: int, body: bytes) -> RouterError:
        message = body.decode("utf-8", errors="replace")[:500]
        try:
            message = orjson.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            pass
        where = f"upstream {self.model_id} answered {status}"
        if status in RETRY_STATUS:
            cls = UpstreamUnavailable if status == 503 else UpstreamError
            return cls(f"{where}: {message}", upstream=self.model_id, retryable=True)
        if 400 <= status < 500:
            err = InputError(f"{where}: {message}")
            err.status_code = status
            return err
        return UpstreamError(f"{where}: {message}", upstream=self.model_id)

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                async with self._slots, self._client().post(
                    self._base + path, data=orjson.dumps(body), timeout=self._timeout
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                if status >= 400:
                    raise self._status_error(status, raw)
                try:
                    data = orjson.loads(raw)
                except ValueError:
                    raise UpstreamError(
                        f"upstream {self.model_id} sent a body that is not JSON: "
                        f"{raw[:200]!r}",
                        upstream=self.model_id,
                    ) from None
                if not isinstance(data, dict):
                    raise UpstreamError(
                        f"upstream {self.model_id} sent {type(data).__name__}, not a JSON object",
                        upstream=self.model_id,
                    )
                return data
            except (aiohttp.ClientError, TimeoutError) as exc:
                err: RouterError = self._translate(exc)
            except UpstreamError as exc:
                err = exc
            if not getattr(err, "retryable", False) or attempt >= self.settings.max_retries:
                raise err
            attempt += 1
            jitter = 0.5 + random.random()
            await asyncio.sleep(self.settings.backoff_s * 2 ** (attempt - 1) * jitter)

    # -- requests ---------------------------------------------------------------------------

    def _body(self, req: GenerationRequest, stream: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            if self.settings.continuous_usage:  # vLLM: usage on every chunk
                body["stream_options"]["continuous_usage_stats"] = True
        if req.messages is not None:
            body["messages"] = [{"role": m.role, "content": m.content} for m in req.messages]
            body["logprobs"] = True
            body["top_logprobs"] = req.top_logprobs
            path = "chat/completions"
        else:
            body["prompt"] = req.prompt
            body["logprobs"] = req.top_logprobs
            path = "completions"
        body.update(req.extra)
        return path, body

    async def generate(self, request: GenerationRequest) -> Generation:
        path, body = self._body(request, stream=False)
        data = await self._post(path, body)
        try:
            choice = data["choices"][0]
            if request.is_chat:
                text = choice["message"].get("content") or ""
                lp, alts = parse_chat_logprobs(choice.get("logprobs"))
            else:
                text = choice.get("text") or ""
                lp, alts = parse_completion_logprobs(choice.get("logprobs"))
            usage = data.get("usage") or {}
            return Generation(
                model=self.model_id,
                text=text,
                finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                logprobs=lp,
                usage=Usage(
                    int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", len(lp)))
                ),
                alternatives=alts,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"upstream {self.model_id} sent an unexpected response shape: "
                f"{type(exc).__name__}: {exc}",
                upstream=self.model_id,
            ) from None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        path, body = self._body(request, stream=True)
        content = orjson.dumps(body)
        attempt = 0
        while True:
            try:
                async with self._slots, self._client().post(
                    self._base + path, data=content, timeout=self._stream_timeout
                ) as resp:
                    if resp.status >= 400:
                        raise self._status_error(resp.status, await resp.read())
                    async for delta in self._parse_sse(resp, request.is_chat):
                        attempt = -1  # bytes were used: never retry from here on
                        yield delta
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                err: UpstreamError = self._translate(exc)
            except UpstreamError as exc:
                err = exc
            if attempt < 0 or not err.retryable or attempt >= self.settings.max_retries:
                raise err
            attempt += 1
            await asyncio.sleep(self.settings.backoff_s * 2 ** (attempt - 1))

    async def _parse_sse(self, resp: aiohttp.ClientResponse, chat: bool
                         ) -> AsyncIterator[StreamDelta]:
        finish: str | None = None
        usage: Usage | None = None
        done = False
        async for line in sse_lines(resp.content):
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                continue  # read to the end, so the connection goes back to the pool
            try:
                chunk = orjson.loads(payload)
            except ValueError:
                raise UpstreamError(
                    f"upstream {self.model_id} streamed a chunk that is not "
                    f"JSON: {payload[:200]!r}",
                    upstream=self.model_id,
                ) from None
            if "error" in chunk:
                raise UpstreamError(
                    f"upstream {self.model_id} failed mid-stream: {chunk['error']}",
                    upstream=self.model_id,
                )
            chunk_usage = None
            if chunk.get("usage"):
                u = chunk["usage"]
                usage = chunk_usage = Usage(int(u.get("prompt_tokens", 0)),
                                            int(u.get("completion_tokens", 0)))
            for choice in chunk.get("choices") or []:
                if chat:
                    text = (choice.get("delta") or {}).get("content") or ""
                    lp, alts = parse_chat_logprobs(choice.get("logprobs"))
                else:
                    text = choice.get("text") or ""
                    lp, alts = parse_completion_logprobs(choice.get("logprobs"))
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                if text or len(lp):
                    yield StreamDelta(text=text, logprobs=lp, alternatives=alts, usage=chunk_usage)
        if not done:
            raise UpstreamError(
                f"upstream {self.model_id} closed the stream before [DONE]", upstream=self.model_id
            )
        yield StreamDelta(
            text="",
            logprobs=_empty(),
            finish_reason=finish or "stop",  # type: ignore[arg-type]
            usage=usage or Usage(0, 0),
        )

    async def generate_via_stream(self, request: GenerationRequest) -> Generation:
        return await collect(self.model_id, self.stream(request))

    # -- scoring ----------------------------------------------------------------------------

    async def score(self, texts: Sequence[str], *, top_k: int = 0) -> list[TokenLogprobs]:
        gate = asyncio.Semaphore(self.settings.score_concurrency)

        async def one(text: str) -> TokenLogprobs:
            if not text:
                raise InputError("cannot score an empty text")
            async with gate:
                data = await self._post(
                    "completions",
                    {
                        "model": self.settings.model,
                        "prompt": text,
                        "max_tokens": 1,
                        "temperature": 0.0,
                        "prompt_logprobs": top_k,
                    },
                )
            try:
                return parse_prompt_logprobs(data["choices"][0]["prompt_logprobs"], top_k)
            except (KeyError, IndexError, TypeError) as exc:
                raise UpstreamError(
                    f"upstream {self.model_id} returned no prompt_logprobs ({exc}); it must be "
                    "vLLM or another server that supports them",
                    upstream=self.model_id,
                ) from None

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def check(self) -> None:
        try:
            async with self._client().get(
                self._base + "models",
                timeout=aiohttp.ClientTimeout(total=self.settings.connect_timeout_s),
            ) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._translate(exc) from None
        if status >= 400:
            raise self._status_error(status, raw)
        try:
            served = {m["id"] for m in orjson.loads(raw).get("data", [])}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UpstreamError(
                f"upstream {self.model_id}: /models is not an OpenAI model list",
                upstream=self.model_id,
            ) from None
        if self.settings.model not in served:
            raise UpstreamUnavailable(
                f"upstream {self.settings.base_url} does not serve {self.settings.model!r} "
                f"(it serves: {', '.join(sorted(served))})",
                upstream=self.model_id,
            )


async def sse_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The lines of an event stream, whatever their length (aiohttp's own line iterator stops
    at 64 KiB, and a chunk with many top-k alternatives can be longer)."""
    buf = b""
    async for piece in content.iter_any():
        buf += piece
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buf:
        yield buf.rstrip(b"\r").decode("utf-8", errors="replace")


def _empty() -> TokenLogprobs:
    return TokenLogprobs(
        np.zeros(0, np.float64), np.zeros(0, np.int64), np.zeros((0, 1), np.float64), ()
    )


def parse_chat_logprobs(obj: Any) -> tuple[TokenLogprobs, TopAlternatives | None]:
    """vLLM/OpenAI chat `logprobs` -> TokenLogprobs (+ top-k token strings)."""
    if not obj or not obj.get("content"):
        return _empty(), None
    content = obj["content"]
    lps = [float(c["logprob"]) for c in content]
    nbytes = [
        len(c["bytes"]) if c.get("bytes") is not None else len(c["token"].encode()) for c in content
    ]
    tops = [[float(t["logprob"]) for t in c.get("top_logprobs") or []] for c in content]
    alts = tuple(tuple(t["token"] for t in c.get("top_logprobs") or []) for c in content)
    has_top = all(tops)
    return (
        TokenLogprobs.from_lists(
            lps, nbytes, tops if has_top else None, [c["token"] for c in content]
        ),
        TopAlternatives(alts) if has_top else None,
    )


def parse_completion_logprobs(obj: Any) -> tuple[TokenLogprobs, TopAlternatives | None]:
    """Completions `logprobs` {tokens, token_logprobs, top_logprobs} -> TokenLogprobs."""
    if not obj or not obj.get("tokens"):
        return _empty(), None
    tokens = list(obj["tokens"])
    lps = [float(x) if x is not None else float("nan") for x in obj["token_logprobs"]]
    nbytes = [len(t.encode()) for t in tokens]
    raw_top = obj.get("top_logprobs") or []
    tops = [sorted(((float(v), k) for k, v in (d or {}).items()), reverse=True) for d in raw_top]
    has_top = bool(tops) and all(tops) and len(tops) == len(tokens)
    alts = TopAlternatives(tuple(tuple(k for _, k in row) for row in tops)) if has_top else None
    return (
        TokenLogprobs.from_lists(
            lps, nbytes, [[v for v, _ in row] for row in tops] if has_top else None, tokens
        ),
        alts,
    )


def parse_prompt_logprobs(entries: Sequence[Any], top_k: int = 0) -> TokenLogprobs:
    """vLLM `prompt_logprobs` -> TokenLogprobs of every scored prompt token.

    Example: [None, {"42": {"logprob": -1.5, "rank": 3, "decoded_token": " cat"}}] ->
    logprobs [-1.5], token_bytes [4]. vLLM puts the prompt token itself first, then the top-k
    alternatives (rank 1..k); the prompt token may appear among them only once.
    """
    lps: list[float] = []
    nbytes: list[int] = []
    toks: list[str] = []
    tops: list[list[float]] = []
    for entry in entries:
        if entry is None:
            continue
        items = list(entry.values())
        chosen = items[0]
        lps.append(float(chosen["logprob"]))
        tok = chosen.get("decoded_token") or ""
        toks.append(tok)
        nbytes.append(len(tok.encode("utf-8")))
        if top_k > 0:
            ranked = sorted(
                (float(v["logprob"]) for v in items if v.get("rank", 1) <= top_k), reverse=True
            )
            tops.append(ranked[:top_k])
    top = tops if top_k > 0 and tops and all(len(r) >= 1 for r in tops) else None
    return TokenLogprobs.from_lists(lps, nbytes, top, toks)
