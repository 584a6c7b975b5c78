"""With `router serve --workers 2`, one scrape of `/metrics` is the sum over both workers: every
counter, cost total and histogram count matches the requests sent, and promtool accepts it."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest
from fake_vllm import fake_vllm_app
from obs_helpers import PromBin
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import write_policy

from tests.harness.router_process import fresh_connections, router_process, write_config
from tests.harness.server_thread import ServerThread

KEY = "sk-test-workers"
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 5  # what fake_vllm reports per call
SMALL_PRICE = {"prompt_per_mtok": 1.0, "completion_per_mtok": 2.0}
LARGE_PRICE = {"prompt_per_mtok": 10.0, "completion_per_mtok": 20.0}
SMALL_CALL = (PROMPT_TOKENS * 1.0 + COMPLETION_TOKENS * 2.0) / 1e6
LARGE_CALL = (PROMPT_TOKENS * 10.0 + COMPLETION_TOKENS * 20.0) / 1e6
ACCEPTED, ESCALATED, STREAMED, UNAUTHORIZED = 60, 30, 20, 10


@pytest.fixture
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


@pytest.mark.timeout(240)
def test_two_workers_one_scrape_sums_everything(prom_bin: PromBin, upstream: ServerThread,
                                                tmp_path: Path) -> None:
    policy = write_policy(tmp_path, "policy", {"kind": "threshold", "escalate_below": -1.0})
    common = {"backend": "openai_http", "base_url": f"{upstream.url}/v1", "max_retries": 0}
    log = tmp_path / "decisions.jsonl"
    cfg = write_config(tmp_path, {
        "server": {"api_keys": [KEY], "workers": 2, "decision_log": {"path": str(log)}},
        "tiers": [{"name": "small", "model": "varied", "price": SMALL_PRICE, **common},
                  {"name": "large", "model": "ok", "price": LARGE_PRICE, **common}],
        "cascade": {"policy": str(policy)},
    })
    jobs = ([("logprob=-0.2", False, KEY)] * ACCEPTED + [("logprob=-3.0", False, KEY)] * ESCALATED
            + [("logprob=-0.2", True, KEY)] * STREAMED + [("hello", False, "wrong")] * UNAUTHORIZED)

    def send(job: tuple[str, bool, str]) -> int:
        content, stream, key = job
        r = client.post(f"{rp.url}/v1/chat/completions",
                        headers={"authorization": f"Bearer {key}"},
                        json={"model": "cascade", "stream": stream, "max_tokens": 8,
                              "messages": [{"role": "user", "content": content}]})
        return r.status_code

    with router_process(cfg) as rp, fresh_connections() as client:  # workers: 2, from config
        rp.workers(2)
        with ThreadPoolExecutor(8) as pool:
            statuses = Counter(pool.map(send, jobs))
        deadline = time.monotonic() + 10
        while True:  # a request is counted just after its answer's last byte
            text = httpx.get(f"{rp.url}/metrics", timeout=10).text
            counted = sum(v for (n, _), v in samples(text).items() if n == "router_requests_total")
            if counted >= len(jobs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert statuses == {200: ACCEPTED + ESCALATED + STREAMED, 401: UNAUTHORIZED}
    served_by = Counter(orjson.loads(line)["worker"] for line in log.read_bytes().splitlines())
    assert set(served_by) == {0, 1}, served_by  # both workers answered: the sums are real

    got = samples(text)

    def value(name: str, **labels: str) -> float:
        return got.get((name, frozenset(labels.items())), 0.0)

    small_calls = ACCEPTED + ESCALATED + STREAMED
    assert value("router_requests_total", tier="small", endpoint="chat", status="200") \
        == ACCEPTED + STREAMED
    assert value("router_requests_total", tier="large", endpoint="chat", status="200") == ESCALATED
    assert value("router_requests_total", tier="none", endpoint="chat", status="401") \
        == UNAUTHORIZED
    assert value("router_rejected_requests_total", reason="unauthorized") == UNAUTHORIZED
    assert value("router_escalations_total", from_tier="small", to_tier="large",
                 reason="low_confidence") == ESCALATED
    assert value("router_tokens_total", model="varied", kind="prompt") \
        == PROMPT_TOKENS * small_calls
    assert value("router_tokens_total", model="varied", kind="completion") \
        == COMPLETION_TOKENS * small_calls
    assert value("router_tokens_total", model="ok", kind="prompt") == PROMPT_TOKENS * ESCALATED
    assert value("router_tokens_total", model="ok", kind="completion") \
        == COMPLETION_TOKENS * ESCALATED
    assert value("router_cost_usd_total", model="varied") == pytest.approx(SMALL_CALL * small_calls)
    assert value("router_cost_usd_total", model="ok") == pytest.approx(LARGE_CALL * ESCALATED)
    assert value("router_wasted_cost_usd_total", model="varied") \
        == pytest.approx(SMALL_CALL * ESCALATED)
    assert value("router_counterfactual_cost_usd_total", model="ok") \
        == pytest.approx(LARGE_CALL * small_calls)
    assert value("router_confidence_count", tier="small") == small_calls
    assert value("router_confidence_count", tier="large") == ESCALATED
    assert value("router_request_duration_seconds_count", tier="small", endpoint="chat") \
        == ACCEPTED + STREAMED
    assert value("router_request_duration_seconds_count", tier="large", endpoint="chat") \
        == ESCALATED
    assert value("router_upstream_request_duration_seconds_count", tier="small", outcome="ok") \
        == small_calls
    assert value("router_upstream_request_duration_seconds_count", tier="large", outcome="ok") \
        == ESCALATED
    assert value("router_upstream_request_duration_seconds_bucket", tier="large", outcome="ok",
                 le="+Inf") == ESCALATED
    assert value("router_in_flight_requests") == 0
    assert value("router_threshold", tier="small") == -1.0
    names = {name for name, _ in got}
    assert not [n for n in names if n.startswith("router_select_")]  # offline families stay out
    assert not [n for n in names if "upstream_errors" in n or "degraded" in n]  # none happened
    assert all("pid" not in dict(labels) for _, labels in got)  # no per-worker series

    proc = subprocess.run([prom_bin.promtool, "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        proc.stdout + proc.stderr
