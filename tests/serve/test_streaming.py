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


def _http_chunks(sock: socket.socket) -> list[bytes]:
    """The chunks of one chunked HTTP answer, as the server wrote them (one per ASGI body
    message under uvicorn), read to the closing zero-length chunk."""
    data = b""
    while b"\r\n0\r\n\r\n" not in data:
        got = sock.recv(65536)
        assert got, "the connection closed before the answer ended"
        data += got
    body = data.split(b"\r\n\r\n", 1)[1]
    chunks = []
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return chunks
        chunks.append(body[:size])
        body = body[size + 2:]


def test_the_judged_buffer_goes_out_in_one_write(settings_factory: Callable[..., Settings],
                                                 serve_thread: Callable[[Any], Any]) -> None:
    """A confident tier 0's buffered tokens are flushed in one write after the judgement, each
    token still its own event; the finish chunk, usage and [DONE] are the last write."""
    tokens = ["The", " answer", " is", " 42", "."]
    app = create_app(settings_factory(), {"small": FakeBackend("fake-small", tokens=tokens),
                                          "large": FakeBackend("fake-large")}, environ={})
    server = serve_thread(app)
    body = orjson.dumps({"model": "cascade", "stream": True, "stream_options":
                         {"include_usage": True},
                         "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        chunks = _http_chunks(sock)
    assert len(chunks) == 2
    events = [orjson.loads(e) for e in chunks[0].split(b"data: ")[1:]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"]["content"] for e in events[1:]] == tokens
    last = chunks[1].split(b"data: ")[1:]
    assert orjson.loads(last[0])["choices"][0]["finish_reason"] == "stop"
    assert orjson.loads(last[1])["usage"]["completion_tokens"] == len(tokens)
    assert last[2] == b"[DONE]\n\n"
