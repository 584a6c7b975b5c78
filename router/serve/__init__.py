"""`router serve`: the OpenAI-compatible cascade router (FastAPI app, cascade, streaming)."""

from router.serve.app import create_app
from router.serve.run import run_server, serve_main

__all__ = ["create_app", "run_server", "serve_main"]
