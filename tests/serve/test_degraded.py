"""The degraded fallback, streamed or not, on real loopback upstreams (tests/serve/fake_vllm.py):
tier 0 is unsure and the last tier fails before sending anything, so tier 0's answer is served,
marked degraded, with the same status, headers, metrics and decision-log fields either way."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_vllm import TOKENS, fake_vllm_app
from prometheus_client import REGISTRY
from serve_helpers import ask, http_tier, make_settings

from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(120)
HEADERS = ("x-router-tier", "x-router-escalated", "x-router-reason", "x-router-degraded",
           "x-router-confidence")
SAME_FIELDS = ("status", "final_tier", "model", "escalated", "degraded", "reason", "decision",
               "signal", "confidence")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def records(path: Path, n: int) -> list[dict[str, Any]]:
    """The first n lines of the decision log (written off the event loop: wait for them)."""
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= n or time.monotonic() > deadline:
            return [orjson.loads(x) for x in lines[:n]]
        time.sleep(0.02)


def degraded_count(tier: str) -> float:
    return REGISTRY.get_sample_value("router_degraded_responses_total", {"tier": tier}) or 0.0


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_a_stream_degrades_like_a_body(upstream: ServerThread, tmp_path: Path, chat: bool,
                                       serve_thread: Callable[[Any], ServerThread]) -> None:
    """`ok-low` is early-escalated on its first 4 tokens (running mean -4 < -1), `error500`
    fails: the stream serves tier 0's whole answer (asked again), as the body does."""
    log_path = tmp_path / "decisions.jsonl"
    url = f"{upstream.url}/v1"
    settings = make_settings(tmp_path, escalate_below=-1.0,
                             tiers=[http_tier("ok-low", url), http_tier("error500", url)],
                             server={"decision_log": {"path": str(log_path)}})
    base = serve_thread(create_app(settings)).url
    before = degraded_count("t-ok-low")

    body = ask(base, "hi", chat=chat, stream=False)
    streamed = ask(base, "hi", chat=chat, stream=True)

    assert body.status == streamed.status == 200, (body.error, streamed.error)
    assert streamed.error is None
    assert body.text == streamed.text == "".join(TOKENS)
    assert {h: streamed.headers.get(h) for h in HEADERS} == {h: body.headers.get(h)
                                                             for h in HEADERS}
    assert streamed.headers["x-router-degraded"] == "true"
    assert streamed.headers["x-router-tier"] == "t-ok-low"
    assert degraded_count("t-ok-low") == before + 2

    ran, rec = records(log_path, 2)
    assert (ran["stream"], rec["stream"]) == (False, True)
    assert {k: rec[k] for k in SAME_FIELDS} == {k: ran[k] for k in SAME_FIELDS}
    assert rec["degraded"] is True and rec["final_tier"] == "t-ok-low"
    trace = [(a["tier"], a["outcome"], a["reason"]) for a in rec["tiers"]]
    assert trace[:2] == [(a["tier"], a["outcome"], a["reason"]) for a in ran["tiers"]] == [
        ("t-ok-low", "escalated", "low_confidence"), ("t-error500", "failed", None)]
    # the stream was judged on its first 4 tokens and closed; its whole answer is asked again,
    # and that call is costed
    assert rec["tiers"][0]["completion_tokens"] == 4
    assert trace[2] == ("t-ok-low", "answered", None)
    assert rec["tiers"][2]["completion_tokens"] == len(TOKENS)
    assert rec["cost_usd"] >= ran["cost_usd"]


def test_without_the_fallback_both_fail(upstream: ServerThread, tmp_path: Path,
                                        serve_thread: Callable[[Any], ServerThread]) -> None:
    url = f"{upstream.url}/v1"
    settings = make_settings(tmp_path, escalate_below=-1.0,
                             tiers=[http_tier("ok-low", url), http_tier("error500", url)],
                             cascade={"degraded_fallback": False})
    base = serve_thread(create_app(settings)).url
    assert ask(base, "hi", stream=False).status == ask(base, "hi", stream=True).status == 502
