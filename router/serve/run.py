"""Run the app under uvicorn, with graceful shutdown (in-flight requests finish within
`server.shutdown_grace_s`): in this process for one worker, under `router.serve.workers`'
supervisor for N. The CLI's `router serve [--config FILE] [--host] [--port] [--workers N|auto]`
calls `serve_main`; it is the only place here that reads the environment."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import uvicorn

from router.config import Settings, load_settings, resolve_api_keys
from router.errors import RouterError

#: the youngest generation's collection threshold while serving (CPython's default is 700):
#: above the objects that a few hundred requests in flight hold, so that a steady load, which
#: leaves no cyclic garbage, triggers no collection, while cycles (errors) are still collected
SERVING_GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Garbage collection for a serving process, once the app is built.

    Under load the default thresholds collect every 700 net allocations: each request's
    upstream answer is a few hundred parsed containers, so every collection finds the objects
    of the requests in flight alive, promotes them, and full collections then walk the whole
    heap (about 80,000 objects after start-up). Measured with `bench/app_cpu.py --upstream
    --concurrency 64`: about 30% of the CPU per request, for nothing, since a request leaves no
    cycles. Freezing what start-up built (`gc.freeze`) takes it out of every collection, and a
    higher gen-0 threshold stops collecting the requests in flight.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(SERVING_GC_THRESHOLD, gen1, gen2)


def serve_app(settings: Settings, *, host: str | None = None, port: int | None = None,
              sock: socket.socket | None = None, environ: Mapping[str, str],
              worker: int | None = None, metrics_dir: Path | None = None) -> None:
    """Serve one app until SIGINT/SIGTERM, on `sock` (a worker) or on host:port; uvicorn stops
    accepting, then waits for in-flight requests."""
    from router.serve.app import create_app

    app = create_app(settings, environ=environ, worker=worker, metrics_dir=metrics_dir)
    tune_gc()
    config = uvicorn.Config(
        app, host=host or settings.server.host,
        port=port if port is not None else settings.server.port,
        workers=1, lifespan="on", log_level="info", access_log=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s) or None,
    )
    uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)


def check_config(settings: Settings, environ: Mapping[str, str]) -> None:
    """What an app would refuse at start-up, refused before any worker starts (a RouterError
    naming the key or the policy file): every policy the cascade serves with, and the API
    keys that `server.ops_require_key` needs."""
    from router.serve.online import serving_plan

    serving_plan(settings)
    resolve_api_keys(settings, environ)


def run_server(settings: Settings, host: str | None = None, port: int | None = None, *,
               environ: Mapping[str, str] | None = None,
               workers: int | Literal["auto"] | None = None) -> int:
    """Serve until SIGINT/SIGTERM with `workers` (default: `server.workers`) processes."""
    from router.serve.workers import Supervisor, worker_count

    env = environ if environ is not None else dict(os.environ)
    n = worker_count(workers if workers is not None else settings.server.workers)
    if n == 1:
        serve_app(settings, host=host, port=port, environ=env)
        return 0
    check_config(settings, env)
    return Supervisor(settings, workers=n, host=host or settings.server.host,
                      port=port if port is not None else settings.server.port,
                      environ=env).run()


def serve_main(args: argparse.Namespace | str | Path | None = None, host: str | None = None,
               port: int | None = None) -> int:
    """`router serve`: takes the CLI's parsed args (`config`, `host`, `port`, `workers`) or the
    values. 0 on a clean shutdown, 1 if workers kept crashing, 2 on a config or policy error."""
    workers: int | Literal["auto"] | None = None
    if isinstance(args, argparse.Namespace):
        config_path: str | Path | None = getattr(args, "config", None)
        host, port = getattr(args, "host", None), getattr(args, "port", None)
        workers = getattr(args, "workers", None)
    else:
        config_path = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        settings = load_settings(config_path)
        return run_server(settings, host, port, environ=dict(os.environ), workers=workers)
    except RouterError as exc:
        print(f"router serve: error: {exc.message}", file=sys.stderr)
        return 2
