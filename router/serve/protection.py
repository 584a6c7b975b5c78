"""Pure ASGI middleware in front of the API: API keys, body size, admission, request metrics.

Pure ASGI (not BaseHTTPMiddleware) so that streamed answers hold their admission slot until
their last byte, and so that the body limit applies while the body is read, not after.

- API keys: `Authorization: Bearer <key>`, compared with `hmac.compare_digest` against every
  configured key (no early exit), 401 otherwise. Only `/v1/` paths are protected.
- Body size: a declared `content-length` over the limit is refused at once (413); a chunked body
  is counted as it is read and refused when it passes the limit.
- Admission: at most `max_in_flight` requests run and `max_queue` wait; beyond that, 429 with
  `Retry-After` instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router import metrics
from router.errors import AuthError, OverloadedError, PayloadTooLargeError, RouterError

API_PREFIX = "/v1/"
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/models": "models"}


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Constant-time check of one presented key against every configured key."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


async def send_error(send: Send, err: RouterError,
                     extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps(err.body())
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ProtectionMiddleware:
    def __init__(self, app: ASGIApp, *, api_keys: Sequence[str], max_body_bytes: int,
                 max_in_flight: int, max_queue: int, retry_after_s: float = 1.0) -> None:
        self.app = app
        self.api_keys = tuple(api_keys)
        self.max_body_bytes = max_body_bytes
        self.capacity = max_in_flight + max_queue
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self._admitted = 0
        self._running: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        endpoint = ENDPOINTS.get(scope["path"], "other")
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "tier": "none"}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                for k, v in message.get("headers", []):
                    if k == b"x-router-tier":
                        status["tier"] = v.decode()
            await send(message)

        try:
            rejected = self._reject(scope)
            if rejected is not None:
                reason, err = rejected
                metrics.REJECTED.labels(reason).inc()
                extra = ([(b"retry-after", str(int(max(1, self.retry_after_s))).encode())]
                         if isinstance(err, OverloadedError) else [])
                if isinstance(err, AuthError):
                    extra.append((b"www-authenticate", b"Bearer"))
                await send_error(send_wrapper, err, extra)
                return
            await self._admitted_call(scope, self._limit_body(receive), send_wrapper)
        finally:
            metrics.REQUESTS.labels(status["tier"], endpoint, str(status["code"])).inc()
            if status["code"] < 400 and endpoint != "models":
                metrics.REQUEST_LATENCY.labels(status["tier"], endpoint).observe(
                    time.perf_counter() - started)

    def _reject(self, scope: Scope) -> tuple[str, RouterError] | None:
        headers = dict(scope.get("headers") or [])
        if self.api_keys:
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not key_matches(token.strip(), self.api_keys):
                return "unauthorized", AuthError(
                    "Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return "too_large", PayloadTooLargeError(
                f"request body of {int(length)} bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes")
        if self._admitted >= self.capacity:
            return "overloaded", OverloadedError(
                "The router is overloaded; retry after the time in Retry-After.",
                retry_after=self.retry_after_s)
        return None

    def _limit_body(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(
                        f"request body exceeds the limit of {limit} bytes")
            return message

        return limited

    async def _admitted_call(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._running is None:
            self._running = asyncio.Semaphore(self.max_in_flight)
        self._admitted += 1
        metrics.IN_FLIGHT.inc()
        try:
            async with self._running:
                await self.app(scope, receive, send)
        finally:
            self._admitted -= 1
            metrics.IN_FLIGHT.dec()
