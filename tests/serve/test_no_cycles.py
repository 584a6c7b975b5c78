"""A request leaves no cyclic garbage.

`router serve` raises gen-0's threshold (`router.serve.run.tune_gc`) because a steady load that
leaves no cycles then triggers no collection. A cycle left by every request undoes that: the
collector then runs every few thousand requests and frees tens of thousands of objects at once
(measured before the fix below: 11 collections of about 125 ms each in 15,000 requests of
`bench/overhead.py`'s load, one pause per 1,400 requests). The disconnect watch was such a
cycle: its cancelled task kept a CancelledError whose traceback held the watch's frame, which
held the watch, which held the task.

Each case runs the app in-process (ASGI, a `receive` that waits as uvicorn's does) with the
collector told to keep what it finds, and counts what it found.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop
from serve_helpers import REPO, FakeBackend, make_settings, write_policy

from router.errors import UpstreamUnavailable
from router.serve.app import create_app

REQUESTS = 60


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "POST", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
            "headers": [(b"host", b"x"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]}


async def _call(app: Any, path: str, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
                ) -> int:
    """One request; its status. `receive` hands out the body, then waits (the client stays)."""
    sent = False
    stays = asyncio.Event()
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await stays.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = _scope(path, body)
    scope["headers"] += list(headers)
    await app(scope, receive, send)
    return status[0]


@pytest.fixture(autouse=True)
def no_error_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A failure the router did not expect (a bug on a failure path) is logged at ERROR and
    answered by the next tier: the statuses alone would not show it."""
    yield
    errors = [r.getMessage() for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, errors[:3]


@pytest.fixture
def saved_garbage() -> Iterator[list[Any]]:
    """gc.garbage while the collector keeps what it finds (DEBUG_SAVEALL)."""
    gc.collect()
    gc.garbage.clear()
    flags = gc.get_debug()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield gc.garbage
    finally:
        gc.set_debug(flags)
        gc.garbage.clear()


def _chat(stream: bool, content: str = "hello") -> bytes:
    return orjson.dumps({"model": "cascade", "stream": stream, "max_tokens": 8,
                         "messages": [{"role": "user", "content": content}]})


def _run(app: Any, path: str, body: bytes, saved_garbage: list[Any],
         headers: tuple[tuple[bytes, bytes], ...] = ()) -> list[int]:
    async def run() -> list[int]:
        async with app.router.lifespan_context(app):
            await asyncio.gather(*(_call(app, path, body, headers) for _ in range(5)))  # warm
            gc.collect()
            saved_garbage.clear()
            statuses = [await _call(app, path, body, headers) for _ in range(REQUESTS)]
            gc.collect()
            return statuses

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # as `router serve`
        return runner.run(run())


def _assert_little(saved_garbage: list[Any]) -> None:
    kinds: dict[str, int] = {}
    for obj in saved_garbage:
        kinds[type(obj).__qualname__] = kinds.get(type(obj).__qualname__, 0) + 1
    assert len(saved_garbage) < REQUESTS // 2, sorted(kinds.items(), key=lambda kv: -kv[1])[:12]


CASES: dict[str, tuple[str, bytes, float | None, int]] = {
    "chat": ("/v1/chat/completions", _chat(False), -0.1, 200),
    "chat-stream": ("/v1/chat/completions", _chat(True), -0.1, 200),
    "escalated": ("/v1/chat/completions", _chat(False), -5.0, 200),
    "escalated-stream": ("/v1/chat/completions", _chat(True), -5.0, 200),
    "completions-stream": ("/v1/completions", orjson.dumps(
        {"model": "cascade", "prompt": "hi", "stream": True, "max_tokens": 8}), -0.1, 200),
    "bad-request": ("/v1/chat/completions", orjson.dumps({"model": "cascade"}), -0.1, 400),
    "tier-0-fails": ("/v1/chat/completions", _chat(False), None, 200),
    "tier-0-fails-stream": ("/v1/chat/completions", _chat(True), None, 200),
}


@pytest.mark.parametrize("case", CASES)
def test_requests_leave_no_cyclic_garbage(case: str, tmp_path: Path,
                                          saved_garbage: list[Any]) -> None:
    path, body, small_logprob, expected = CASES[case]  # logprob None: tier 0 is down
    settings = make_settings(tmp_path, escalate_below=-1.0)
    small = (FakeBackend("fake-small", error=UpstreamUnavailable("down")) if small_logprob is None
             else FakeBackend("fake-small", logprob=small_logprob))
    backends = {"small": small,
                "large": FakeBackend("fake-large")}
    app = create_app(settings, backends, environ={}, preload=False)
    statuses = _run(app, path, body, saved_garbage)
    assert statuses == [expected] * REQUESTS
    _assert_little(saved_garbage)


def test_refused_requests_leave_no_cyclic_garbage(tmp_path: Path,
                                                  saved_garbage: list[Any]) -> None:
    settings = make_settings(tmp_path, server={"api_keys": ["sk-right"]})
    app = create_app(settings, {"small": FakeBackend("fake-small"),
                                "large": FakeBackend("fake-large")}, environ={}, preload=False)
    statuses = _run(app, "/v1/chat/completions", _chat(False), saved_garbage,
                    ((b"authorization", b"Bearer sk-wrong"),))
    assert statuses == [401] * REQUESTS
    _assert_little(saved_garbage)


@pytest.fixture
def upstream() -> Iterator[int]:
    """bench/_fake_upstream.py (vLLM's shapes, raw asyncio, its own process): its port."""
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "_fake_upstream.py"),
                             "--port", "0", "--delay-ms", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("port "), line
    yield int(line.split()[1])
    proc.terminate()
    proc.wait()


def _free_port() -> int:
    """A loopback port nothing listens on (tier 0 "refuses connections" there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tier_0", ["up", "refuses connections"])
def test_upstream_calls_leave_no_cyclic_garbage(tier_0: str, stream: bool, tmp_path: Path,
                                                upstream: int, saved_garbage: list[Any]) -> None:
    """openai_http tiers (the router's own HTTP client) on a real loopback upstream; with tier
    0 refusing connections every request fails over to tier 1."""
    port0 = upstream if tier_0 == "up" else _free_port()
    tiers = [{"name": name, "backend": "openai_http", "base_url": f"http://127.0.0.1:{port}/v1",
              "model": "m", "api_key": "x", "max_retries": 0}
             for name, port in (("small", port0), ("large", upstream))]
    settings = make_settings(tmp_path, escalate_below=-100.0, tiers=tiers)
    app = create_app(settings, None, environ={}, preload=False)
    statuses = _run(app, "/v1/chat/completions", _chat(stream), saved_garbage)
    assert statuses == [200] * REQUESTS
    _assert_little(saved_garbage)


@pytest.fixture
def faulty_upstream() -> Iterator[int]:
    """tests/serve/fake_vllm.py in its own process (its garbage is not this process's): the
    port. Its models answer 500, a body that is not JSON, or a stream cut before [DONE]."""
    port = _free_port()
    code = ("import sys, uvicorn; sys.path.insert(0, sys.argv[1]); "
            "from fake_vllm import fake_vllm_app; "
            "uvicorn.run(fake_vllm_app(), host='127.0.0.1', port=int(sys.argv[2]), "
            "log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(REPO / "tests" / "serve"),
                             str(port)])
    try:
        deadline = time.monotonic() + 60.0  # a loaded CI machine imports slowly
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the fake vLLM server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.parametrize(("model", "stream"), [("error500", False), ("badjson", False),
                                               ("cutstream", True), ("error500", True)])
def test_failing_upstreams_leave_no_cyclic_garbage(model: str, stream: bool, tmp_path: Path,
                                                   faulty_upstream: int, upstream: int,
                                                   saved_garbage: list[Any]) -> None:
    """Tier 0 fails as `model` does on every request; tier 1 answers."""
    tiers = [{"name": "small", "backend": "openai_http", "model": model, "api_key": "x",
              "base_url": f"http://127.0.0.1:{faulty_upstream}/v1", "max_retries": 0},
             {"name": "large", "backend": "openai_http", "model": "m", "api_key": "x",
              "base_url": f"http://127.0.0.1:{upstream}/v1", "max_retries": 0}]
    settings = make_settings(tmp_path, escalate_below=-100.0, tiers=tiers)
    app = create_app(settings, None, environ={}, preload=False)
    statuses = _run(app, "/v1/chat/completions", _chat(stream), saved_garbage)
    assert statuses == [200] * REQUESTS
    _assert_little(saved_garbage)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("feature", ["decision log", "shadow sampling", "prompt gate"])
def test_features_leave_no_cyclic_garbage(feature: str, stream: bool, tmp_path: Path,
                                          saved_garbage: list[Any]) -> None:
    server: dict[str, Any] = {}
    cascade: dict[str, Any] = {}
    if feature == "decision log":
        server["decision_log"] = {"path": str(tmp_path / "decisions.jsonl"),
                                  "include_prompt": True}
    elif feature == "shadow sampling":
        cascade["shadow"] = {"fraction": 1.0, "max_concurrency": 64}
    else:
        gate = write_policy(tmp_path, "gate", {"kind": "threshold", "escalate_below": -100.0},
                            signal="prompt_logprob_per_byte")
        cascade["prompt_gate"] = {"policy": str(gate)}
    settings = make_settings(tmp_path, server=server, cascade=cascade)
    app = create_app(settings, {"small": FakeBackend("fake-small"),
                                "large": FakeBackend("fake-large")}, environ={}, preload=False)
    statuses = _run(app, "/v1/chat/completions", _chat(stream), saved_garbage)
    assert statuses == [200] * REQUESTS
    _assert_little(saved_garbage)
