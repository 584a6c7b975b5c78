"""End to end: a real Prometheus server on loopback scrapes a running router (tiers on a vLLM-like
upstream) under a short synthetic load; every PromQL expression of the dashboard and the rule
files returns data, and the cost counters agree with a hand computation from the decision log."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from obs_helpers import (
    FAIL_LARGE,
    FAIL_SMALL,
    HARD,
    LARGE_PRICE,
    SCORE_LOGPROB,
    SMALL_PRICE,
    PromBin,
    PrometheusServer,
    RouterUnderTest,
    all_exprs,
    read_decisions,
)
from prometheus_client import REGISTRY

from router.config import Price

N_REQUESTS = 60
LOAD_SECONDS = 6.0      # spread over several 1 s scrapes so that rate() has points
DATA_TIMEOUT_S = 30.0   # how long every expression may take to return data

pytestmark = pytest.mark.slow


def prompt_for(i: int) -> str:
    """12 low-confidence escalations, 4 upstream-error escalations, 1 degraded answer."""
    if i == N_REQUESTS - 1:
        return f"{HARD} {FAIL_LARGE} question {i}: every higher tier fails"
    if i % 15 == 7:
        return f"{FAIL_SMALL} question {i}"
    if i % 5 == 0:
        return f"{HARD} question {i}"
    return f"What is question {i} about?"


async def load(url: str) -> None:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                                timeout=30)
    gate = asyncio.Semaphore(4)
    pause = LOAD_SECONDS / N_REQUESTS

    async def one(i: int) -> None:
        async with gate:
            messages: Any = [{"role": "user", "content": prompt_for(i)}]
            if i % 6 == 1:
                stream = await client.chat.completions.create(
                    model="cascade", messages=messages, max_tokens=16, stream=True,
                    stream_options={"include_usage": True})
                text = "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
            else:
                resp = await client.chat.completions.create(model="cascade", messages=messages,
                                                            max_tokens=16)
                text = resp.choices[0].message.content or ""
            assert text

    tasks = []
    for i in range(N_REQUESTS):
        tasks.append(asyncio.create_task(one(i)))
        await asyncio.sleep(pause)
    await asyncio.gather(*tasks)
    await client.close()
    # one request over server.max_body_bytes: a rejection (router_rejected_requests_total)
    async with httpx.AsyncClient(base_url=url) as raw:
        r = await raw.post("/v1/chat/completions", json={
            "model": "cascade", "messages": [{"role": "user", "content": "x" * 5000}]})
        assert r.status_code == 413


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def totals(name: str) -> float:
    """Sum of a counter over all its label sets, read from this process's registry."""
    total = 0.0
    for family in REGISTRY.collect():
        for s in family.samples:
            if s.name == name:
                total += s.value
    return total


def test_prometheus_scrapes_router_and_every_expression_returns_data(
        prom_bin: PromBin, router_app: RouterUnderTest, upstream: Any, tmp_path: Path) -> None:
    router_addr = router_app.url.removeprefix("http://")
    upstream_addr = upstream.url.removeprefix("http://")
    cost_names = ("router_cost_usd_total", "router_counterfactual_cost_usd_total",
                  "router_wasted_cost_usd_total")
    before = {n: totals(n) for n in cost_names}
    with PrometheusServer(prom_bin.prometheus, tmp_path / "prom", router=router_addr,
                          upstream=upstream_addr) as prom:
        started = time.monotonic()
        asyncio.run(load(router_app.url))
        assert time.monotonic() - started < 60, "the load is bounded in time"
        deadline = time.monotonic() + 10
        while router_app.shadow_in_flight() and time.monotonic() < deadline:
            time.sleep(0.05)

        # -- every expression of the dashboard and the rules returns data ------------------
        exprs = all_exprs()
        assert len(exprs) > 60
        empty: list[tuple[str, str]] = []
        deadline = time.monotonic() + DATA_TIMEOUT_S
        while True:
            empty = [(where, e) for where, e in exprs if not prom.query(e)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        assert prom.targets_up() == {"router": "up", "vllm": "up", "prometheus": "up"}
        assert not empty, "expressions without data:\n" + "\n".join(
            f"  [{w}] {e}" for w, e in empty)

        # the escalation mix made it through: low confidence, upstream errors, a degraded answer
        reasons = {r["metric"]["reason"] for r in prom.query(
            "reason:router_escalation_rate:ratio_rate5m")}
        assert {"low_confidence", "upstream_error"} <= reasons
        agreement = prom.query("tier:router_shadow_agreement:ratio_rate1h")
        assert agreement and agreement[0]["metric"]["tier"] == "small"

        # -- cost counters agree with a hand computation from the decision log --------------
        records = read_decisions(router_app.decision_log, N_REQUESTS)
        assert len(records) == N_REQUESTS
        # every scored quality sample is a log line of its own, labelled by its request's id
        shadows = read_decisions(router_app.decision_log, 1, kind="shadow")
        assert shadows and {s["id"] for s in shadows} <= {r["id"] for r in records}
        assert all(isinstance(s["shadow"]["agree"], bool) for s in shadows)
        after = {n: totals(n) for n in cost_names}
        check_costs(records, {n: after[n] - before[n] for n in cost_names})

        # Prometheus holds the same counter values as the router's /metrics
        for name in ("router_cost_usd_total", "router_counterfactual_cost_usd_total"):
            want = totals(name)
            deadline = time.monotonic() + 10
            while True:
                got = float(prom.query(f"sum({name})")[0]["value"][1])
                if math.isclose(got, want, rel_tol=1e-9) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert math.isclose(got, want, rel_tol=1e-9), (name, got, want)

    # the shadow samples scored the small answers under the top tier
    assert sample("router_shadow_samples_total", tier="small", outcome="scored") > 0
    # (a histogram with negative buckets exports no _sum: read the buckets around -0.3)
    scored = sample("router_shadow_answer_logprob_count", tier="small")
    assert SCORE_LOGPROB == -0.3 and scored == sample("router_shadow_samples_total",
                                                      tier="small", outcome="scored")
    assert sample("router_shadow_answer_logprob_bucket", tier="small", le="-0.25") == scored
    assert sample("router_shadow_answer_logprob_bucket", tier="small", le="-0.5") == 0
    assert sample("router_shadow_cost_usd_total", model="large-model") > 0


def check_costs(records: list[dict[str, Any]], deltas: dict[str, float]) -> None:
    """Costs from the config's prices and the token counts of each tier call in the log; every
    call the fake upstream finished used 7 prompt and 5 completion tokens."""
    small, large = Price(**SMALL_PRICE), Price(**LARGE_PRICE)  # type: ignore[arg-type]
    price = {"small": small, "large": large}
    per_call = {t: p.cost(7, 5) for t, p in price.items()}
    assert per_call["large"] == pytest.approx(2.5 / 3600 / 400 * 12)
    assert per_call["small"] == pytest.approx((7 * 0.5 + 5 * 1.5) / 1e6)

    actual = counterfactual = wasted = 0.0
    for rec in records:
        rec_cost = 0.0
        for a in rec["tiers"]:
            pt, ct = a["prompt_tokens"], a["completion_tokens"]
            if a["outcome"] == "failed":
                assert (pt, ct, a["cost_usd"]) == (0, 0, 0)
                continue
            if rec["stream"] and a["outcome"] == "escalated":
                # a stream aborted early: the tokens it had streamed, no usage from upstream
                assert ct <= 5, a
            else:
                assert (pt, ct) == (7, 5), a
            cost = price[a["tier"]].cost(pt, ct)
            assert a["cost_usd"] == pytest.approx(cost, rel=1e-12)
            rec_cost += cost
            if a["outcome"] == "escalated":
                wasted += cost
        assert rec["cost_usd"] == pytest.approx(rec_cost, rel=1e-12)
        assert rec["counterfactual_cost_usd"] == pytest.approx(per_call["large"], rel=1e-12)
        actual += rec_cost
        counterfactual += per_call["large"]

    outcomes = [(rec["final_tier"], rec["escalated"], rec["degraded"]) for rec in records]
    assert outcomes.count(("small", False, False)) == 43
    assert outcomes.count(("large", True, False)) == 16
    assert outcomes.count(("small", True, True)) == 1
    assert counterfactual == pytest.approx(N_REQUESTS * per_call["large"])
    assert deltas["router_cost_usd_total"] == pytest.approx(actual, rel=1e-9)
    assert deltas["router_counterfactual_cost_usd_total"] == pytest.approx(counterfactual,
                                                                           rel=1e-9)
    assert deltas["router_wasted_cost_usd_total"] == pytest.approx(wasted, rel=1e-9)
    assert actual < counterfactual  # the cascade saved money
