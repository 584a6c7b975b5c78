"""`/metrics` of a running router (uvicorn on loopback, tiers on a vLLM-like upstream) passes
`promtool check metrics`."""

from __future__ import annotations

import subprocess

import httpx
from obs_helpers import HARD, PromBin, RouterUnderTest


def test_router_metrics_pass_promtool(prom_bin: PromBin, router_app: RouterUnderTest) -> None:
    with httpx.Client(base_url=router_app.url, timeout=30) as client:
        for content in ("hello", f"{HARD} hello"):  # one accepted, one escalated
            r = client.post("/v1/chat/completions", json={
                "model": "cascade", "messages": [{"role": "user", "content": content}]})
            assert r.status_code == 200, r.text
        exposition = client.get("/metrics")
    assert exposition.status_code == 200
    text = exposition.text
    for name in ("router_requests_total", "router_escalations_total", "router_confidence_bucket",
                 "router_cost_usd_total", "router_counterfactual_cost_usd_total",
                 "router_request_duration_seconds_bucket", "router_in_flight_requests"):
        assert name in text, name
    proc = subprocess.run([prom_bin.promtool, "check", "metrics"], input=text,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), \
        proc.stdout + proc.stderr
