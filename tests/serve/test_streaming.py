"""Streamed answers over a real socket: a client that goes away mid-stream stops the tier at once,
and the request's slot and metrics are released."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import REGISTRY
from serve_helpers import FakeBackend

from router.config import Settings
from router.serve import create_app


def test_client_disconnect_stops_the_stream(settings_factory: Callable[..., Settings],
                                            serve_thread: Callable[[Any], Any]) -> None:
    slow = FakeBackend("fake-large", tokens=[f" t{i}" for i in range(100)], delay_s=0.05)
    app = create_app(settings_factory(), {"small": FakeBackend("fake-small"), "large": slow},
                     environ={})
    server = serve_thread(app)
    before = REGISTRY.get_sample_value("router_in_flight_requests") or 0.0
    body = orjson.dumps({"model": "fake-large", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 3:  # role chunk and the first tokens
            received += sock.recv(65536)
        assert b"200 OK" in received and b"text/event-stream" in received
    deadline = time.monotonic() + 5  # 100 tokens would take 5 s more
    while slow.closed_early == 0 or (REGISTRY.get_sample_value("router_in_flight_requests")
                                     or 0.0) != before:
        assert time.monotonic() < deadline, "the stream went on after the client left"
        time.sleep(0.02)
    assert slow.calls == 1
