"""`HotLaneMiddleware`: POST /v1/chat/completions and /v1/completions without the framework.

It sits just inside `ProtectionMiddleware` (keys, body limit, admission and request metrics
still apply) and calls the two endpoints itself, skipping Starlette's exception middleware,
FastAPI's exit-stack middleware and the router's route matching: by py-spy, that stack was a
fifth of the app's own CPU per request once the endpoints were plain Starlette ones. Every other
request, and any other method on these paths (405), goes on to the app as before. Errors are
answered by the app's own handlers (`on_error`), so the bodies are the same.

A client that leaves before its answer is sent cancels the endpoint (the cascade and its upstream
calls) at once: `ClientDisconnected` goes up to ProtectionMiddleware, which counts a 499.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.serve.disconnect import ClientDisconnected, cancelled_on_disconnect

Endpoint = Callable[[Request], Awaitable[Response]]
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class HotLaneMiddleware:
    def __init__(self, app: ASGIApp, *, endpoints: Mapping[str, Endpoint],
                 on_error: ErrorHandler) -> None:
        self.app = app
        self.endpoints = dict(endpoints)
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            await request.body()  # read (and kept for the endpoint) before the watch begins
            async with cancelled_on_disconnect(receive):
                response = await endpoint(request)
        except ClientDisconnected:
            raise
        except Exception as exc:
            response = await self.on_error(request, exc)
        await response(scope, receive, send)
