"""The app's own CPU per request: ASGI calls in-process, no client sockets.

    .venv/bin/python bench/app_cpu.py [--requests 2000] [--stream]
    .venv/bin/python bench/app_cpu.py --upstream [--concurrency 64] [--stream] [--signal S]
    PYTHONPATH=DIR .venv/bin/python bench/app_cpu.py     # the app of another source tree

`bench/overhead.py` measures the router over real sockets, where the event loop's I/O and the
upstream client take half the CPU; this isolates what the framework and the router's own code
cost per request (the hot path's Python), so a change to it shows even on a noisy machine.

By default the backend is `tests/serve/serve_helpers.FakeBackend` (16 tokens with logprobs,
instant). With `--upstream` both tiers are real `openai_http` backends on
`bench/_fake_upstream.py` (no delay, 16 tokens with top-5 logprobs in vLLM's shapes, its own
process): the CPU then includes the aiohttp client, the parsing of the upstream's answers and
the garbage collections their objects cause, with `--concurrency` requests in flight as under
load, on uvloop as `router serve` runs. Either way the garbage collector is set as `router
serve` sets it (`router.serve.run.tune_gc`, where the tree has it). The cascade's policy
accepts tier 0, on `--signal` (mean_logprob: no alternatives needed; neg_mean_entropy reads
the top-5, as the shipped preset does). Reported: the best of 5 rounds of this process's CPU
time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "serve"))

from serve_helpers import FakeBackend, make_settings, write_policy

from router.backends import Backend
from router.serve.app import create_app

try:
    from router.serve.run import tune_gc  # what `router serve` does once the app is built
except ImportError:  # a source tree from before it
    tune_gc = None

BENCH = Path(__file__).resolve().parent
PROMPT = "How do I reset my password? Answer in one sentence."


def upstream_tiers(port: int) -> list[dict[str, Any]]:
    tier = {"backend": "openai_http", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m",
            "api_key": "x", "max_concurrency": 64}
    return [{"name": "small", **tier}, {"name": "large", **tier}]


async def measure(requests: int, stream: bool, *, upstream_port: int | None = None,
                  concurrency: int = 1, rounds: int = 5, signal: str = "mean_logprob") -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    policy = write_policy(tmp, "accept", {"kind": "threshold", "escalate_below": -100.0},
                          signal=signal)
    backends: dict[str, Backend] | None = None
    if upstream_port is None:
        settings = make_settings(tmp, cascade={"policy": str(policy)})
        backends = {"small": FakeBackend("fake-small", tokens=["tok"] * 16),
                    "large": FakeBackend("fake-large")}
    else:
        settings = make_settings(tmp, tiers=upstream_tiers(upstream_port),
                                 server={"max_in_flight": 512, "max_queue": 512},
                                 cascade={"policy": str(policy)})
    app = create_app(settings, backends, environ={}, preload=False)
    if tune_gc is not None:
        tune_gc()
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
        gone = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()  # no disconnect
            raise AssertionError

        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        assert status == [200], status

    async def many(n: int) -> None:
        left = n

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one()

        await asyncio.gather(*(client() for _ in range(concurrency)))

    best = float("inf")
    async with app.router.lifespan_context(app):
        await many(300)  # warm-up
        for _ in range(rounds):
            cpu0 = time.process_time()
            await many(requests)
            best = min(best, (time.process_time() - cpu0) / requests)
    return best * 1e6


def start_upstream() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(BENCH / "_fake_upstream.py"), "--port", "0",
                             "--delay-ms", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000, help="per round (5 rounds)")
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--upstream", action="store_true",
                    help="openai_http tiers on bench/_fake_upstream.py instead of FakeBackend")
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight")
    ap.add_argument("--signal", default="mean_logprob", help="the policy's signal")
    args = ap.parse_args()
    proc, port = start_upstream() if args.upstream else (None, None)
    try:
        # with an upstream, the event loop `router serve` runs (uvicorn picks uvloop)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if args.upstream else None) as r:
            us = r.run(measure(args.requests, args.stream, upstream_port=port,
                               concurrency=args.concurrency, signal=args.signal))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    mode = "stream (16 tokens)" if args.stream else "non-stream"
    where = "openai_http upstream" if args.upstream else "instant backend"
    print(f"{mode}, {where}, concurrency {args.concurrency}, {args.signal}: {us:.0f} us of CPU "
          f"per request (best of 5 x {args.requests})")


if __name__ == "__main__":
    main()
