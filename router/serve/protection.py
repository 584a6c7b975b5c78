"""Pure ASGI middleware in front of the API: request ids, API keys, the request body (size and
time), admission, request metrics.

Pure ASGI (not BaseHTTPMiddleware) so that streamed answers hold their admission slot until
their last byte, and so that the body limits apply while the body is read.

- Request ids: every HTTP request gets one (`scope["state"]["request_id"]`, the `x-request-id`
  response header); error bodies quote it and the log lines that explain them carry it.
- API keys: `Authorization: Bearer <key>`, compared with `hmac.compare_digest` against every
  configured key (no early exit), 401 otherwise. `/v1/` paths are protected, and `/metrics` too
  with `ops_require_key`; `scope["state"]["authenticated"]` tells a route whether the caller
  presented a valid key (`/readyz` shows its per-tier details only then).
- Body: read in full before the request is admitted, so a client that stalls its upload holds
  no admission slot. A declared `content-length` over the limit is refused at once (413), a
  chunked body when it passes the limit; a body that has not arrived within `body_timeout_s` is
  a 408 and the connection is closed. A client that leaves while uploading is counted with
  status 499 (nginx's "client closed request") and logged in one line.
- Admission: at most `max_in_flight` requests run and `max_queue` wait; beyond that, 429 with
  `Retry-After` instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router import metrics
from router.errors import (
    AuthError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    RouterError,
)
from router.serve.disconnect import ClientDisconnected

log = logging.getLogger("router.serve")

API_PREFIX = "/v1/"
OPS_PATHS = frozenset({"/metrics", "/openapi.json"})  # need a key with ops_require_key
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions",
             "/v1/models": "models"}
CLIENT_CLOSED = 499  # nginx's status for a client that left before the answer


def new_request_id() -> str:
    """`req_` and 32 random hex digits (as uuid4().hex, at a fifth of its cost)."""
    return f"req_{os.urandom(16).hex()}"


def key_matches(presented: str, keys: Sequence[str]) -> bool:
    """Constant-time check of one presented key against every configured key."""
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(presented.encode(), key.encode())
    return ok


async def send_error(send: Send, err: RouterError, request_id: str,
                     extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps(err.client_body(request_id))
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *extra_headers]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands out the body read already, then the client's later messages
    (a disconnect while the answer streams)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class ProtectionMiddleware:
    def __init__(self, app: ASGIApp, *, api_keys: Sequence[str], max_body_bytes: int,
                 max_in_flight: int, max_queue: int, body_timeout_s: float = 15.0,
                 ops_require_key: bool = False, retry_after_s: float = 1.0) -> None:
        self.app = app
        self.api_keys = tuple(api_keys)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.ops_require_key = ops_require_key
        self.capacity = max_in_flight + max_queue
        self.max_in_flight = max_in_flight
        self.retry_after_s = retry_after_s
        self._admitted = 0
        self._running: asyncio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["authenticated"] = self._authenticated(scope)
        path = scope["path"]
        if not path.startswith(API_PREFIX):
            send = _with_request_id(send, rid)
            if path in OPS_PATHS and self.ops_require_key and not state["authenticated"]:
                await self._refuse(send, "unauthorized", self._auth_error(), rid)
                return
            await self.app(scope, receive, send)
            return
        await self._api_call(scope, receive, send, rid)

    async def _api_call(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        endpoint = ENDPOINTS.get(scope["path"], "other")
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "tier": "none"}
        request_id = (b"x-request-id", rid.encode())

        async def send_wrapper(message: Message) -> None:
            """Adds the request id (as `_with_request_id`) and notes the status and tier, in
            one layer: every write of a stream passes here."""
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                for k, v in message.get("headers", []):
                    if k == b"x-router-tier":
                        status["tier"] = v.decode()
                message = _with_header(message, request_id)
            await send(message)

        try:
            rejected = self._reject(scope)
            body = b""
            if rejected is None:
                try:
                    body = await self._read_body(receive)
                    rejected = self._overloaded()
                except ClientDisconnected:
                    status["code"] = CLIENT_CLOSED
                    log.info("%s %s: the client left while sending its body [%s]",
                             scope["method"], scope["path"], rid)
                    return
                except PayloadTooLargeError as exc:
                    rejected = "too_large", exc
                except RequestTimeoutError as exc:
                    rejected = "body_timeout", exc
            if rejected is None:
                try:
                    await self._admitted_call(scope, _replay(body, receive), send_wrapper)
                except ClientDisconnected:
                    status["code"] = CLIENT_CLOSED
                    log.info("%s %s: the client left before its answer; its work was "
                             "cancelled [%s]", scope["method"], scope["path"], rid)
            else:
                await self._refuse(send_wrapper, *rejected, rid)
        finally:
            metrics.REQUESTS.labels(status["tier"], endpoint, str(status["code"])).inc()
            if status["code"] < 400 and endpoint != "models":
                metrics.REQUEST_LATENCY.labels(status["tier"], endpoint).observe(
                    time.perf_counter() - started)

    async def _refuse(self, send: Send, reason: str, err: RouterError, rid: str) -> None:
        metrics.REJECTED.labels(reason).inc()
        extra = []
        if isinstance(err, OverloadedError):
            extra.append((b"retry-after", str(int(max(1, self.retry_after_s))).encode()))
        if isinstance(err, AuthError):
            extra.append((b"www-authenticate", b"Bearer"))
        if reason in ("too_large", "body_timeout"):  # the rest of the body is unread
            extra.append((b"connection", b"close"))
        await send_error(send, err, rid, extra)

    def _authenticated(self, scope: Scope) -> bool:
        if not self.api_keys:
            return True
        auth = b""
        for k, v in scope.get("headers") or ():
            if k == b"authorization":
                auth = v
        scheme, _, token = auth.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and key_matches(token.strip(), self.api_keys)

    @staticmethod
    def _auth_error() -> AuthError:
        return AuthError("Incorrect API key provided. Pass it as 'Authorization: Bearer <key>'.")

    def _reject(self, scope: Scope) -> tuple[str, RouterError] | None:
        """Refusals decided by the headers alone."""
        if not scope["state"]["authenticated"]:
            return "unauthorized", self._auth_error()
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            return "too_large", PayloadTooLargeError(
                f"request body of {int(length)} bytes exceeds the limit of "
                f"{self.max_body_bytes} bytes")
        return None

    def _overloaded(self) -> tuple[str, RouterError] | None:
        if self._admitted >= self.capacity:
            return "overloaded", OverloadedError(
                "The router is overloaded; retry after the time in Retry-After.",
                retry_after=self.retry_after_s)
        return None

    async def _read_body(self, receive: Receive) -> bytes:
        """The whole request body, within `max_body_bytes` and `body_timeout_s`."""
        parts: list[bytes] = []
        seen = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientDisconnected
                    chunk = message.get("body", b"")
                    seen += len(chunk)
                    if seen > self.max_body_bytes:
                        raise PayloadTooLargeError(
                            f"request body exceeds the limit of {self.max_body_bytes} bytes")
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {self.body_timeout_s} s "
                "(server.body_timeout_s)") from None

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


def _with_request_id(send: Send, rid: str) -> Send:
    header = (b"x-request-id", rid.encode())

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = _with_header(message, header)
        await send(message)

    return sending


def _with_header(start: Message, header: tuple[bytes, bytes]) -> Message:
    """An `http.response.start` message with one more header (a copy)."""
    return {**start, "headers": [*start.get("headers", []), header]}
