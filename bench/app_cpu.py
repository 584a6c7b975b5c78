"""The app's own CPU per request: ASGI calls in-process, no sockets, an instant backend.

    .venv/bin/python bench/app_cpu.py [--requests 2000] [--stream]
    PYTHONPATH=DIR .venv/bin/python bench/app_cpu.py     # the app of another source tree

`bench/overhead.py` measures the router over real sockets, where the event loop's I/O and the
upstream client take half the CPU; this isolates what the framework and the router's own code
cost per request (the hot path's Python), so a change to it shows even on a noisy machine. The
backend is `tests/serve/serve_helpers.FakeBackend` (16 tokens with logprobs); the cascade's
policy accepts tier 0. Reported: the best of 5 rounds of process CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))

from serve_helpers import FakeBackend, make_settings

from router.serve.app import create_app

PROMPT = "How do I reset my password? Answer in one sentence."


async def measure(requests: int, stream: bool, rounds: int = 5) -> float:
    settings = make_settings(Path(tempfile.mkdtemp(prefix="bench-app-")), escalate_below=-100.0)
    backends = {"small": FakeBackend("fake-small", tokens=["tok"] * 16),
                "large": FakeBackend("fake-large")}
    app = create_app(settings, backends, environ={}, preload=False)
    body = orjson.dumps({"model": "cascade", "max_tokens": 32, "stream": stream,
                         "messages": [{"role": "user", "content": PROMPT}]})
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},  # as uvicorn
             "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "state": {},
             "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # no disconnect
            raise AssertionError

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        assert status == [200], status

    best = float("inf")
    async with app.router.lifespan_context(app):
        for _ in range(300):  # warm-up
            await one()
        for _ in range(rounds):
            cpu0 = time.process_time()
            for _ in range(requests):
                await one()
            best = min(best, (time.process_time() - cpu0) / requests)
    return best * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="per round (5 rounds)")
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()
    us = asyncio.run(measure(args.requests, args.stream))
    mode = "stream (16 tokens)" if args.stream else "non-stream"
    print(f"{mode}: {us:.0f} us of CPU per request (best of 5 x {args.requests})")


if __name__ == "__main__":
    main()
