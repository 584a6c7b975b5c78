"""Exception handlers: every error leaves as OpenAI's error body.

A 5xx is logged with its message and the request id, and the client reads only the id
(`RouterError.client_body`): upstream URLs and internal error text stay in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router.errors import InputError, OverloadedError, RouterError, UnknownModelError
from router.serve.protection import new_request_id

log = logging.getLogger("router.serve")


def request_id_of(request: Request) -> str:
    """The id ProtectionMiddleware gave the request (a new one outside it), read from the
    scope's state itself (`request.state` builds a `State` around it on first use)."""
    rid = (request.scope.get("state") or {}).get("request_id")
    return rid if isinstance(rid, str) else new_request_id()


def error_response(request: Request, err: RouterError,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    """An error as OpenAI's body; a 5xx is logged with its message and request id, and the
    client reads only the id (`RouterError.client_body`)."""
    rid = request_id_of(request)
    if err.status_code >= 500:
        log.warning("%s %s -> %d %s: %s [%s]", request.method, request.url.path,
                    err.status_code, err.type, err.message, rid)
    return JSONResponse(err.client_body(rid), status_code=err.status_code,
                        headers=dict(headers or {}))


async def router_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RouterError)
    headers = {}
    if isinstance(exc, OverloadedError):
        headers["retry-after"] = str(max(1, int(exc.retry_after)))
    return error_response(request, exc, headers)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own errors (no route: 404; wrong method: 405, with its `Allow` header)."""
    assert isinstance(exc, StarletteHTTPException)
    err: RouterError = (UnknownModelError(f"no route {request.url.path}", code="not_found")
                        if exc.status_code == 404 else InputError(str(exc.detail)))
    err.status_code = exc.status_code
    if exc.status_code == 405:
        err.code = "method_not_allowed"
    return error_response(request, err, exc.headers)


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    log.exception("unhandled error on %s [%s]", request.url.path, rid, exc_info=exc)
    return JSONResponse(RouterError("internal error").client_body(rid), status_code=500)
