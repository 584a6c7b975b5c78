"""The `openai_http` backend: any OpenAI-compatible server, vLLM first.

One keep-alive pool (`http1.Pool`) per upstream, bounded concurrency, timeouts, and retries
with exponential backoff on connection errors, 429 and 5xx (before any byte of an answer was
used). Our own small HTTP/1.1 client rather than httpx or aiohttp: measured on this project's
machines, httpx spent 0.75-0.95 ms of CPU per pooled request, and aiohttp's client was still a
fifth of the router's CPU per request (see bench/RESULTS.md and `http1`'s docstring). Answers
are read up to `max_response_bytes` (`server.max_upstream_response_bytes`) and parsed and
validated in vLLM's exact shapes by `openai_parse`; an answer that is too big or malformed is
an `UpstreamError` (the cascade escalates past it), never the client's error.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from router.backends import http1
from router.backends.base import FinishReason, Generation, GenerationRequest, StreamDelta, Usage
from router.backends.collect import collect, empty_logprobs
from router.backends.openai_parse import (
    MalformedAnswer,
    first_choice,
    parse_answer,
    parse_chunk,
    parse_prompt_logprobs,
)
from router.errors import (
    InputError,
    RouterError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from router.scoring import TokenLogprobs

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: upstream 4xx answers that are about the client's request (relayed); any other 4xx (401, 403,
#: 404: the router's own key, URL or model name is wrong) is the upstream failing
CLIENT_STATUS = frozenset({400, 413, 422})
DEFAULT_MAX_RESPONSE_BYTES = 8 << 20
T = TypeVar("T")


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
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # of one answer, stream or body


class OpenAIHttpBackend:
    def __init__(self, model_id: str, settings: HttpSettings) -> None:
        self._model_id = model_id
        self.settings = settings
        self._base = settings.base_url.rstrip("/") + "/"
        self._headers = {"content-type": "application/json"}
        if settings.api_key:
            self._headers["authorization"] = f"Bearer {settings.api_key}"
        self._pool: http1.Pool | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrency)

    @property
    def model_id(self) -> str:
        return self._model_id

    def _client(self) -> http1.Pool:
        """The connection pool (made on first use, and again after `aclose`)."""
        if self._pool is None or self._pool.closed:
            self._pool = http1.Pool(self._base, headers=self._headers,
                                    connect_timeout_s=self.settings.connect_timeout_s,
                                    max_idle=self.settings.max_concurrency)
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        self._pool = None

    # -- transport --------------------------------------------------------------------------

    def _translate(self, exc: Exception) -> UpstreamError:
        """The HTTP client's errors -> ours (the boundary of the error tree)."""
        where = f"upstream {self.model_id} ({self.settings.base_url})"
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(
                f"{where} timed out: {exc or type(exc).__name__}", upstream=self.model_id,
                retryable=True)
        if isinstance(exc, http1.ConnectError | http1.Disconnected):
            return UpstreamUnavailable(
                f"{where} is unreachable: {exc}", upstream=self.model_id, retryable=True
            )
        return UpstreamError(f"{where} failed: {type(exc).__name__}: {exc}",
                             upstream=self.model_id, retryable=True)

    def _status_error(self, status: int, body: bytes) -> RouterError:
        message = body.decode("utf-8", errors="replace")[:500]
        try:
            message = str(orjson.loads(body)["error"]["message"])[:500]
        except (ValueError, KeyError, TypeError):
            pass
        where = f"upstream {self.model_id} answered {status}"
        if status in RETRY_STATUS:
            cls = UpstreamUnavailable if status == 503 else UpstreamError
            return cls(f"{where}: {message}", upstream=self.model_id, retryable=True)
        if status in CLIENT_STATUS:
            err = InputError(f"{where}: {message}")
            err.status_code = status
            return err
        return UpstreamError(f"{where}: {message}", upstream=self.model_id)

    async def _retried(self, attempt: Callable[[], AsyncIterator[T]]) -> AsyncGenerator[T, None]:
        """Everything `attempt()` yields; a retryable failure (connection error, timeout, 429,
        5xx) before it yielded anything runs it again after a jittered exponential backoff, up
        to `max_retries` times. Once an item was handed out, a failure is raised as it is."""
        tries = 0
        while True:
            used = False
            try:
                async for item in attempt():
                    used = True
                    yield item
                return
            except (http1.HttpError, TimeoutError, UpstreamError) as exc:
                self._raise_unless_retried(exc, retry=not used, tries=tries)
            tries += 1
            await self._backoff(tries)

    def _raise_unless_retried(self, exc: Exception, *, retry: bool, tries: int) -> None:
        """A failed attempt's error (translated), raised unless the attempt may run again:
        `retry` (nothing of it was used), the error is retryable, and `tries` retries are
        fewer than `max_retries`."""
        err = exc if isinstance(exc, UpstreamError) else self._translate(exc)
        if not retry or not err.retryable or tries >= self.settings.max_retries:
            try:
                raise err from None
            finally:  # its traceback holds this frame, which must not hold it: no cycle
                del err, exc

    async def _backoff(self, tries: int) -> None:
        """The jittered exponential pause before retry number `tries` (1, 2, ...)."""
        jitter = 0.5 + random.random()
        await asyncio.sleep(self.settings.backoff_s * 2 ** (tries - 1) * jitter)

    def _too_big(self) -> UpstreamError:
        return UpstreamError(
            f"upstream {self.model_id} sent an answer over "
            f"{self.settings.max_response_bytes} bytes (server.max_upstream_response_bytes)",
            upstream=self.model_id)

    async def _read(self, resp: http1.Response, *, truncate: bool = False) -> bytes:
        """The body, at most `max_response_bytes` of it (counted after decompression): past
        that an UpstreamError, or with `truncate` the first bytes (error bodies)."""
        cap = self.settings.max_response_bytes
        if not truncate and resp.content_length is not None and resp.content_length > cap:
            raise self._too_big()
        try:
            return await resp.read(cap, truncate=truncate)
        except http1.BodyTooBig:
            raise self._too_big() from None

    async def _post_once(self, path: str, content: bytes) -> dict[str, Any]:
        async with self._slots, self._client().request(
            "POST", path, content, timeout_s=self.settings.timeout_s
        ) as resp:
            if resp.status >= 400:
                raise self._status_error(resp.status, await self._read(resp, truncate=True))
            raw = await self._read(resp)
        try:
            data = orjson.loads(raw)
        except ValueError:
            raise self._malformed(f"the body is not JSON: {raw[:200]!r}") from None
        if not isinstance(data, dict):
            raise self._malformed(f"{type(data).__name__}, not a JSON object")
        return data

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """One JSON answer, retried as `_retried` retries (a plain loop: no generator on the
        request path for one value)."""
        content = orjson.dumps(body)
        tries = 0
        while True:
            try:
                return await self._post_once(path, content)
            except (http1.HttpError, TimeoutError, UpstreamError) as exc:
                self._raise_unless_retried(exc, retry=True, tries=tries)
            tries += 1
            await self._backoff(tries)

    def _malformed(self, what: str) -> UpstreamError:
        return UpstreamError(f"upstream {self.model_id} sent a malformed answer: {what}",
                             upstream=self.model_id)

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
            text, finish, (lp, alts), usage = parse_answer(data, request.is_chat)
        except MalformedAnswer as exc:
            raise self._malformed(str(exc)) from None
        return Generation(model=self.model_id, text=text, finish_reason=finish, logprobs=lp,
                          usage=usage, alternatives=alts)

    def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamDelta, None]:
        path, body = self._body(request, stream=True)
        content = orjson.dumps(body)
        return self._retried(lambda: self._stream_once(path, content, request.is_chat))

    async def _stream_once(self, path: str, content: bytes, chat: bool
                           ) -> AsyncIterator[StreamDelta]:
        """One streamed answer: the body's pieces cut into event lines and parsed here, in one
        generator (each layer of generators costs on every token)."""
        finish: FinishReason | None = None
        usage: Usage | None = None
        done = False

        def parsed(payload: str) -> list[StreamDelta]:
            nonlocal finish, usage, done
            if payload == "[DONE]":
                done = True  # read on to the end, so the connection goes back to the pool
                return []
            deltas, chunk_finish, chunk_usage = self._chunk(payload, chat)
            finish = chunk_finish or finish
            usage = chunk_usage or usage
            return deltas

        lines = SseLines(self.settings.max_response_bytes)
        # no total limit on a stream, but no more than timeout_s of silence between chunks
        async with self._slots, self._client().request(
            "POST", path, content, quiet_s=self.settings.timeout_s
        ) as resp:
            if resp.status >= 400:
                raise self._status_error(resp.status, await self._read(resp, truncate=True))
            async for piece in resp.chunks():
                for payload in lines.feed(piece):
                    for delta in parsed(payload):
                        yield delta
            for payload in lines.close():
                for delta in parsed(payload):
                    yield delta
        if not done:
            raise UpstreamError(
                f"upstream {self.model_id} closed the stream before [DONE]", upstream=self.model_id
            )
        yield StreamDelta(text="", logprobs=empty_logprobs(), finish_reason=finish or "stop",
                          usage=usage or Usage(0, 0))

    def _chunk(self, payload: str, chat: bool
               ) -> tuple[list[StreamDelta], FinishReason | None, Usage | None]:
        """One event's data -> its deltas, finish reason and usage (an error event or bad JSON
        is an UpstreamError)."""
        try:
            chunk = orjson.loads(payload)
        except ValueError:
            raise self._malformed(f"a streamed chunk is not JSON: {payload[:200]!r}") from None
        if isinstance(chunk, dict) and "error" in chunk:
            raise UpstreamError(
                f"upstream {self.model_id} failed mid-stream: {str(chunk['error'])[:500]}",
                upstream=self.model_id,
            )
        try:
            return parse_chunk(chunk, chat)
        except MalformedAnswer as exc:
            raise self._malformed(str(exc)) from None

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
                return parse_prompt_logprobs(first_choice(data).get("prompt_logprobs"), top_k,
                                             text=text)
            except MalformedAnswer as exc:
                raise self._malformed(f"{exc}; scoring needs vLLM or another server that "
                                      "returns prompt_logprobs") from None

        return list(await asyncio.gather(*(one(t) for t in texts)))

    async def check(self) -> None:
        try:
            async with self._client().request(
                "GET", "models", timeout_s=self.settings.connect_timeout_s
            ) as resp:
                status = resp.status
                raw = await self._read(resp, truncate=status >= 400)
        except (http1.HttpError, TimeoutError) as exc:
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
                f"(it serves: {', '.join(sorted(map(str, served)))[:500]})",
                upstream=self.model_id,
            )


class SseLines:
    """The `data:` payloads of an event stream, fed the body piece by piece: whole lines only,
    whatever their length (a chunk with many top-k alternatives can pass 64 KiB), in linear
    time; more than `max_bytes` in all is an UpstreamError.

    Example: feed(b"data: 1\n\nda") -> ["1"]; feed(b"ta: 2\n") -> ["2"]; close() -> [].
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.seen = 0
        self._tail: list[bytes] = []

    def feed(self, piece: bytes) -> list[str]:
        self.seen += len(piece)
        if self.seen > self.max_bytes:
            raise UpstreamError(f"an upstream stream passed {self.max_bytes} bytes "
                                "(server.max_upstream_response_bytes)")
        *lines, rest = piece.split(b"\n")
        if lines and self._tail:
            lines[0] = b"".join([*self._tail, lines[0]])
            self._tail = []
        if rest:
            self._tail.append(rest)
        return [_payload(line) for line in lines if line.startswith(b"data:")]

    def close(self) -> list[str]:
        """The last line, if the stream did not end with a newline."""
        line, self._tail = b"".join(self._tail), []
        return [_payload(line)] if line.startswith(b"data:") else []


def _payload(line: bytes) -> str:
    return line[5:].strip().decode("utf-8", errors="replace")
