"""`create_app(settings)`: the FastAPI app of `router serve`.

The lifespan owns the backends (built from config unless passed in; HTTP tiers hold one pool of
keep-alive connections each), the cascade and the decision log. One exception handler turns
every `RouterError` into OpenAI's error body; services raise, they never return errors.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from router import metrics
from router._version import __version__
from router.backends import Backend, build_backends
from router.config import Settings, resolve_api_keys
from router.errors import RouterError
from router.serve.cascade import Cascade
from router.serve.decision_log import DecisionLog
from router.serve.error_handlers import (
    http_error_handler,
    internal_error_handler,
    router_error_handler,
)
from router.serve.hot_lane import HotLaneMiddleware
from router.serve.protection import ProtectionMiddleware
from router.serve.routes import chat, completions, docs, health, models
from router.serve.shadow import ShadowSampler
from router.serve.state import ServeState

log = logging.getLogger("router.serve")


async def hot_lane_error(request: Request, exc: Exception) -> JSONResponse:
    """The same answers the app's handlers give, for the hot lane's endpoints."""
    if isinstance(exc, RouterError):
        return await router_error_handler(request, exc)
    return await internal_error_handler(request, exc)


def _no_native_telemetry() -> dict[str, Any]:
    """Newer FastAPI releases trace, meter and log every request through OpenTelemetry by
    default: about 5% of the router's CPU per request, for data our own Prometheus metrics
    already carry. Turn it off where the option exists (older releases have no such option)."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False,
                          "operation_spans": False}}


def create_app(settings: Settings, backends: Mapping[str, Backend] | None = None, *,
               environ: Mapping[str, str] | None = None, preload: bool = True,
               worker: int | None = None, metrics_dir: Path | None = None) -> FastAPI:
    """The app. `backends` (tier name -> Backend) replaces the ones built from config; the
    caller then owns them. `environ` resolves `server.api_keys_env` (the CLI passes os.environ).
    With N workers, `worker` is this process's index (stamped on decision-log lines) and
    `metrics_dir` the multiprocess metrics directory `/metrics` sums over.
    """
    cascade_backends = dict(backends) if backends is not None else build_backends(settings)
    owns = backends is None
    cascade = Cascade(settings, cascade_backends)  # loads and validates the policies now
    keys = resolve_api_keys(settings, environ)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServeState(settings=settings, backends=cascade_backends, cascade=cascade,
                           owns_backends=owns, api_keys=keys)
        if metrics_dir is not None:
            state.metrics_registry = metrics.multiprocess_registry(metrics_dir)
        dl = settings.server.decision_log
        if dl is not None:
            state.decision_log = DecisionLog(settings.resolve(dl.path),
                                             include_prompt=dl.include_prompt, worker=worker)
            await state.decision_log.start()
        shadow = settings.cascade.shadow
        if shadow is not None and shadow.fraction > 0 and len(cascade.tiers) > 1:
            state.shadow = ShadowSampler(
                cascade.top.backend, cascade.top.config, fraction=shadow.fraction,
                max_concurrency=shadow.max_concurrency, min_similarity=shadow.min_similarity,
                min_logprob=shadow.min_logprob,
                record=state.decision_log.write if state.decision_log is not None else None)
        app.state.serve = state
        if preload:
            for tier in settings.tiers:
                if tier.backend == "embedded":
                    try:
                        await cascade_backends[tier.name].check()
                    except Exception as exc:
                        log.error("tier %s cannot load: %s", tier.name, exc)
        try:
            yield
        finally:
            if state.shadow is not None:
                await state.shadow.aclose()
            if state.decision_log is not None:
                await state.decision_log.close()
            if owns:
                for b in cascade_backends.values():
                    await b.aclose()

    app = FastAPI(title="cascade-router", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None, **_no_native_telemetry())
    app.add_exception_handler(RouterError, router_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    for module in (chat, completions, models, health, docs):
        app.include_router(module.router)
    server = settings.server
    app.add_middleware(HotLaneMiddleware, on_error=hot_lane_error, endpoints={  # inner
        "/v1/chat/completions": chat.endpoint, "/v1/completions": completions.endpoint})
    app.add_middleware(ProtectionMiddleware, api_keys=keys, max_body_bytes=server.max_body_bytes,
                       max_in_flight=server.max_in_flight, max_queue=server.max_queue,
                       body_timeout_s=server.body_timeout_s,
                       ops_require_key=server.ops_require_key)
    return app
