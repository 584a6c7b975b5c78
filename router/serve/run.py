"""Run the app under uvicorn: one worker, graceful shutdown (in-flight requests finish within
`server.shutdown_grace_s`). The CLI's `router serve [--config FILE] [--host] [--port]` calls
`serve_main`; it is the only place here that reads the environment."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from router.config import Settings, load_settings
from router.errors import RouterError


def run_server(settings: Settings, host: str | None = None, port: int | None = None, *,
               environ: dict[str, str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, then waits for in-flight requests."""
    from router.serve.app import create_app

    app = create_app(settings, environ=environ if environ is not None else dict(os.environ))
    config = uvicorn.Config(
        app, host=host or settings.server.host,
        port=port if port is not None else settings.server.port,
        workers=1, lifespan="on", log_level="info", access_log=False,
        timeout_graceful_shutdown=int(settings.server.shutdown_grace_s) or None,
    )
    uvicorn.Server(config).run()


def serve_main(args: argparse.Namespace | str | Path | None = None, host: str | None = None,
               port: int | None = None) -> int:
    """`router serve`: takes the CLI's parsed args (`config`, `host`, `port`) or the three values.
    0 on a clean shutdown, 2 on a config or policy error."""
    if isinstance(args, argparse.Namespace):
        config_path: str | Path | None = getattr(args, "config", None)
        host, port = getattr(args, "host", None), getattr(args, "port", None)
    else:
        config_path = args
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    try:
        settings = load_settings(config_path)
        run_server(settings, host, port, environ=dict(os.environ))
    except RouterError as exc:
        print(f"router serve: error: {exc.message}", file=sys.stderr)
        return 2
    return 0
