"""Upstream faults on real loopback servers (tests/serve/fake_vllm.py): a malformed or oversized
answer is an upstream error at the backend boundary (the cascade escalates past it; from the
answering tier it is a 502), never the client's 4xx, never a relayed bad value, never a
traceback; retries happen before any byte is used."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fake_vllm import HUGE_BYTES, MALFORMED, TOKENS, fake_vllm_app
from serve_helpers import http_tier as tier
from serve_helpers import make_settings

from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(120)
CASES = sorted(MALFORMED)
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "logprobs": True,
        "top_logprobs": 2}
COMPLETION = {"prompt": "hi", "max_tokens": 8, "logprobs": 2}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


@pytest.fixture(scope="module")
def faulty(upstream: ServerThread, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[str]:
    """A router whose cascade runs through every malformed upstream, then `huge`, then `ok`."""
    models = [*(f"bad-{c}" for c in CASES), "huge", "ok"]
    settings = make_settings(tmp_path_factory.mktemp("faulty"), escalate_below=-1.0,
                             tiers=[tier(m, f"{upstream.url}/v1") for m in models],
                             server={"max_upstream_response_bytes": HUGE_BYTES // 4})
    with ServerThread(create_app(settings)) as server:
        yield server.url


class Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)


@pytest.fixture
def tracebacks() -> Iterator[list[logging.LogRecord]]:
    """Log records with a traceback, from our loggers and uvicorn's (which do not propagate)."""
    handler = Tracebacks()
    loggers = [logging.getLogger(n) for n in ("", "uvicorn", "uvicorn.error")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler.records
    for lg in loggers:
        lg.removeHandler(handler)


def call(base: str, model: str, *, chat: bool, stream: bool) -> tuple[int, dict[str, Any],
                                                                         httpx.Headers]:
    """(status, the JSON body or the error event of a stream, headers)."""
    path = "/v1/chat/completions" if chat else "/v1/completions"
    body = {**(CHAT if chat else COMPLETION), "model": model, "stream": stream}
    with httpx.stream("POST", base + path, json=body, timeout=30) as r:
        raw = r.read()
    if not stream or r.status_code != 200:
        return r.status_code, orjson.loads(raw), r.headers
    events = [orjson.loads(line[6:]) for line in raw.decode().splitlines()
              if line.startswith("data: {")]
    errors = [e for e in events if "error" in e]
    text = "".join((c.get("delta") or {}).get("content") or c.get("text") or ""
                   for e in events for c in e.get("choices") or [])
    return r.status_code, errors[0] if errors else {"text": text}, r.headers


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_every_malformed_tier_is_escalated_past(faulty: str, chat: bool, stream: bool,
                                                tracebacks: list[logging.LogRecord]) -> None:
    status, body, headers = call(faulty, "cascade", chat=chat, stream=stream)
    assert status == 200, body
    assert headers["x-router-tier"] == "t-ok" and headers["x-router-reason"] == "upstream_error"
    if stream:
        assert body == {"text": "".join(TOKENS)}
    assert not tracebacks, [r.getMessage() for r in tracebacks]


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize("model", [*(f"bad-{c}" for c in CASES), "huge"])
def test_a_malformed_answer_from_the_answering_tier_is_a_502(
        faulty: str, model: str, chat: bool, stream: bool,
        tracebacks: list[logging.LogRecord]) -> None:
    status, body, headers = call(faulty, model, chat=chat, stream=stream)
    if status == 200:  # a stream that broke after its first byte ends with an error event
        assert stream and "error" in body, f"{model} was relayed: {body}"
    else:
        assert status == 502, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "upstream_error"
    assert headers["x-request-id"] in err["message"]
    assert "127.0.0.1" not in err["message"] and "malformed" not in err["message"]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_the_cap_also_holds_a_stream_that_never_ends_a_line(faulty: str) -> None:
    # `huge` chunks are 64 KiB lines; the cap (HUGE_BYTES / 4) cuts the stream
    status, body, _ = call(faulty, "huge", chat=True, stream=True)
    assert status == 502 or "error" in body


def test_retries_before_any_byte_was_used(upstream: ServerThread, tmp_path: Path,
                                          serve_thread: Callable[[Any], ServerThread]) -> None:
    """`flaky` answers 503 to every other call; one retry gets every answer through."""
    settings = make_settings(tmp_path, tiers=[tier("flaky", f"{upstream.url}/v1"),
                                              tier("ok", f"{upstream.url}/v1")])
    base = serve_thread(create_app(settings)).url
    for chat in (True, False):
        for stream in (False, True):
            for _ in range(2):
                status, body, _ = call(base, "flaky", chat=chat, stream=stream)
                assert status == 200 and "error" not in body, body
