"""GET /healthz (alive), /readyz (every tier loadable or reachable), /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from router.errors import RouterError
from router.serve.state import StateDep

router = APIRouter(tags=["health"])
READY_TIMEOUT_S = 10.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(state: StateDep) -> JSONResponse:
    async def check(name: str) -> tuple[str, str]:
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await state.backends[name].check()
        except TimeoutError:
            return name, f"no answer within {READY_TIMEOUT_S} s"
        except RouterError as exc:
            return name, exc.message
        except Exception as exc:
            return name, f"{type(exc).__name__}: {exc}"
        return name, "ok"

    results = dict(await asyncio.gather(*(check(t.name) for t in state.cascade.tiers)))
    ok = all(v == "ok" for v in results.values())
    body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "tiers": results}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def prometheus_metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
