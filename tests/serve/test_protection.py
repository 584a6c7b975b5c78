"""The router's edge on a real uvicorn server: stalled and abandoned uploads, request ids, what
a client without a key can read, and what error bodies may say."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from serve_helpers import FakeBackend

from router.config import Settings
from router.errors import UpstreamError, UpstreamUnavailable
from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(60)
SettingsFactory = Callable[..., Settings]
CHAT = {"model": "cascade", "messages": [{"role": "user", "content": "hi"}]}
PARTIAL = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000\r\n\r\n{\"model\":")


def serve(serve_thread: Callable[[Any], ServerThread], settings: Settings,
          **backends: FakeBackend) -> str:
    b = {"small": FakeBackend("fake-small"), "large": FakeBackend("fake-large"), **backends}
    return serve_thread(create_app(settings, b, environ={})).url


def stalled(url: str) -> socket.socket:
    """A client that sent its headers and part of its body, then stalls."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(PARTIAL)
    return s


def requests_with(status: str) -> float:
    labels = {"tier": "none", "endpoint": "chat", "status": status}
    return REGISTRY.get_sample_value("router_requests_total", labels) or 0.0


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def logs() -> Iterator[list[logging.LogRecord]]:
    """Every log record of the router's and uvicorn's loggers (uvicorn's do not propagate)."""
    handler = Records()
    loggers = [logging.getLogger(n) for n in ("router", "uvicorn", "uvicorn.error")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
    loggers[0].setLevel(logging.INFO)  # as `router serve` configures it
    yield handler.records
    for lg, level in zip(loggers, levels, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


def test_stalled_uploads_hold_no_slot_and_get_408(settings_factory: SettingsFactory,
                                                  serve_thread: Callable[[Any], ServerThread]
                                                  ) -> None:
    settings = settings_factory(server={"max_in_flight": 1, "max_queue": 0,
                                        "body_timeout_s": 1.0})
    url = serve(serve_thread, settings)
    socks = [stalled(url) for _ in range(4)]
    try:
        time.sleep(0.2)  # the stalled requests are in
        t0 = time.monotonic()
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
        assert r.status_code == 200 and time.monotonic() - t0 < 0.9  # not queued behind them
        for s in socks:
            reply = b""
            while chunk := s.recv(65536):  # the router answers, then closes the connection
                reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), reply
            assert b"connection: close" in head.lower()
            assert orjson.loads(body)["error"]["code"] == "request_timeout"
        assert time.monotonic() - t0 < 5
    finally:
        for s in socks:
            s.close()


def test_a_client_leaving_during_its_upload_is_a_499_in_one_line(
        settings_factory: SettingsFactory, serve_thread: Callable[[Any], ServerThread],
        logs: list[logging.LogRecord]) -> None:
    url = serve(serve_thread, settings_factory())
    before = requests_with("499"), requests_with("500")
    stalled(url).close()
    deadline = time.monotonic() + 5
    while requests_with("499") == before[0] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert requests_with("499") == before[0] + 1
    assert requests_with("500") == before[1]
    assert not [r for r in logs if r.exc_info], "no traceback"
    lines = [r.getMessage() for r in logs if "left while sending" in r.getMessage()]
    assert len(lines) == 1 and "req_" in lines[0]


def test_every_answer_carries_a_request_id(settings_factory: SettingsFactory,
                                           serve_thread: Callable[[Any], ServerThread]) -> None:
    url = serve(serve_thread, settings_factory())
    ids = {httpx.post(f"{url}/v1/chat/completions", json=CHAT).headers["x-request-id"],
           httpx.get(f"{url}/healthz").headers["x-request-id"],
           httpx.get(f"{url}/v1/nope").headers["x-request-id"]}
    assert len(ids) == 3 and all(i.startswith("req_") for i in ids)


def test_ops_endpoints_can_require_a_key(settings_factory: SettingsFactory,
                                         serve_thread: Callable[[Any], ServerThread]) -> None:
    settings = settings_factory(server={"api_keys": ["k1"], "ops_require_key": True})
    url = serve(serve_thread, settings,
                large=FakeBackend("fake-large", error=UpstreamUnavailable("http://10.9.9.9 down")))
    key = {"Authorization": "Bearer k1"}
    assert httpx.get(f"{url}/healthz").status_code == 200  # probes stay open
    for path in ("/metrics", "/openapi.json"):
        r = httpx.get(f"{url}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}{path}", headers=key).status_code == 200
    r = httpx.get(f"{url}/readyz")
    assert r.status_code == 503 and set(r.json()) == {"status", "request_id"}
    r = httpx.get(f"{url}/readyz", headers=key)
    assert r.json()["tiers"] == {"small": "ok", "large": "upstream_unavailable"}
    assert "10.9.9.9" not in r.text


def test_ops_endpoints_stay_open_by_default(settings_factory: SettingsFactory,
                                            serve_thread: Callable[[Any], ServerThread]) -> None:
    url = serve(serve_thread, settings_factory(server={"api_keys": ["k1"]}))
    assert httpx.get(f"{url}/metrics").status_code == 200
    assert httpx.get(f"{url}/readyz").json()["tiers"] == {"small": "ok", "large": "ok"}


def test_ops_require_key_without_keys_is_a_config_error(settings_factory: SettingsFactory
                                                        ) -> None:
    from router.errors import ConfigError

    with pytest.raises(ConfigError, match="ops_require_key needs API keys"):
        create_app(settings_factory(server={"ops_require_key": True}),
                   {"small": FakeBackend("a"), "large": FakeBackend("b")})


@pytest.mark.parametrize("stream", [False, True])
def test_error_bodies_name_no_upstream_and_no_internal_text(
        settings_factory: SettingsFactory, serve_thread: Callable[[Any], ServerThread],
        logs: list[logging.LogRecord], stream: bool) -> None:
    secret = "upstream big (http://10.0.0.7:8001/v1) failed: EngineCore died"
    broken = FakeBackend("fake-large", error=UpstreamError(secret), fail_after=1)
    url = serve(serve_thread, settings_factory(), large=broken)
    with httpx.stream("POST", f"{url}/v1/chat/completions",
                      json={**CHAT, "model": "fake-large", "stream": stream}) as r:
        raw = r.read()
    if stream:  # committed after its first token: the error is the last event
        assert r.status_code == 200
        raw = next(ln for ln in raw.splitlines() if ln.startswith(b"data: {\"error\""))[6:]
    else:
        assert r.status_code == 502
    err = orjson.loads(raw)["error"]
    rid = r.headers["x-request-id"]
    assert rid in err["message"] and "10.0.0.7" not in err["message"]
    assert "EngineCore" not in err["message"]
    logged = [rec.getMessage() for rec in logs if rid in rec.getMessage()]
    assert len(logged) == 1 and secret in logged[0]


def test_overload_still_counts_only_admitted_requests(settings_factory: SettingsFactory,
                                                      serve_thread: Callable[[Any], ServerThread]
                                                      ) -> None:
    settings = settings_factory(server={"max_in_flight": 1, "max_queue": 0})
    url = serve(serve_thread, settings, small=FakeBackend("fake-small", delay_s=1.0))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            rs = await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT)
                                        for _ in range(3)))
        return sorted(r.status_code for r in rs)

    assert asyncio.run(burst()) == [200, 429, 429]
