"""GET /healthz (alive), /readyz (every tier loadable or reachable), /metrics (Prometheus; the
sum over workers when there are several).

`/readyz` answers each tier's state as a word (`ok`, `timeout` or the error type), and only to
a caller with a valid key when `server.ops_require_key` is set; why a tier failed (its URL, the
connection error) goes to the log under the request id that the body quotes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from router.errors import RouterError
from router.serve.error_handlers import request_id_of
from router.serve.state import StateDep

log = logging.getLogger("router.serve")
router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 10.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request, state: StateDep) -> JSONResponse:
    rid = request_id_of(request)

    async def check(name: str) -> tuple[str, str]:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await state.backends[name].check()
        except TimeoutError:
            log.warning("readyz: tier %s gave no answer within %s s [%s]", name,
                        READY_TIMEOUT_S, rid)
            return name, "timeout"
        except RouterError as exc:
            log.warning("readyz: tier %s is not ready: %s [%s]", name, exc.message, rid)
            return name, exc.type
        except Exception as exc:
            log.warning("readyz: tier %s is not ready: %s: %s [%s]", name,
                        type(exc).__name__, exc, rid)
            return name, "internal_error"
        return name, "ok"

    results = dict(await asyncio.gather(*(check(t.name) for t in state.cascade.tiers)))
    ok = all(v == "ok" for v in results.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable"}
    if not state.settings.server.ops_require_key or getattr(request.state, "authenticated", False):
        body["tiers"] = results
    if not ok:
        body["request_id"] = rid
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
