"""The loop on the real embedded models: serve with a decision log -> `router calibrate --log`
(R = 0.3) on one half of a prompt set -> serve the other half with the fitted policy through
the real cascade. `calibrate --prompts` on the same half must fit the same threshold (it asks
tier 0 exactly as serve does), and the served escalations must be exactly the answers scoring
below the fitted threshold.

How close the other half's rate comes to 0.3 is sampling statistics: with h prompts per half
the realised rate has a standard deviation of about sqrt(2 * 0.3 * 0.7 / h) (0.12 for h = 30;
the issue's 0.25..0.35 holds at 95% from about h = 600). The default run (30 + 30 prompts, 2
cores) asserts a 2.5-sigma band. The slow test checks the issue's criterion as stated, 0.25 to
0.35, on the seeded built-in set of 1,200 (521 distinct prompts, 261 + 260, 6 tokens an
answer): greedy decoding makes it deterministic on a given machine; measured 0.338.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eval_helpers import REPO

from router.backends import build_backends
from router.cli import main
from router.config import load_settings
from router.evalset import generate
from router.evaluate.data import write_items
from router.policy import load_policy
from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = [pytest.mark.model, pytest.mark.timeout(2400)]
TARGET = 0.3


def write_config(tmp: Path, policy: Path, log: Path) -> Path:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    for t in raw["tiers"]:
        t.update(n_ctx=512, n_threads=2)
    raw["cascade"]["policy"] = str(policy)
    raw["server"]["decision_log"] = {"path": str(log), "include_prompt": True}
    path = tmp / f"config-{policy.stem}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def ask_all(url: str, prompts: list[str], max_tokens: int) -> list[dict[str, str]]:
    out = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for p in prompts:
            r = client.post("/v1/chat/completions", json={
                "model": "cascade", "messages": [{"role": "user", "content": p}],
                "max_tokens": max_tokens, "temperature": 0})
            assert r.status_code == 200, r.text
            out.append(dict(r.headers))
    return out


def test_fit_on_half_escalates_target_on_other_half(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    n, max_tokens = 60, 16
    band = 2.5 * math.sqrt(2 * TARGET * (1 - TARGET) / (n // 2))
    roundtrip(tmp_path, capsys, n=n, max_tokens=max_tokens, band=band, check_prompts=True)


@pytest.mark.slow
def test_issue_criterion_on_the_seeded_builtin_set(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Fit R = 0.3 on one half; the other half, served, escalates between 0.25 and 0.35."""
    roundtrip(tmp_path, capsys, n=1200, max_tokens=6, band=0.05, check_prompts=False)


def roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture[str], *, n: int, max_tokens: int,
              band: float, check_prompts: bool) -> None:
    items = list({it.prompt: it for it in reversed(generate(0, n))}.values())[::-1]  # distinct
    fit_half, serve_half = items[0::2], items[1::2]  # interleaved: both halves balanced
    accept_all = tmp_path / "accept-all.yaml"
    accept_all.write_text(yaml.safe_dump({"name": "accept-all",
                                          "signal": {"name": "quantile_logprob", "q": 0.1},
                                          "rule": {"kind": "threshold",
                                                   "escalate_below": -100.0}}))
    log = tmp_path / "decisions.jsonl"
    cfg_log = write_config(tmp_path, accept_all, log)
    settings = load_settings(cfg_log)
    backends: dict[str, Any] = build_backends(settings)
    try:
        # 1. today's traffic, served and logged
        with ServerThread(create_app(settings, backends)) as s:
            heads = ask_all(s.url, [it.prompt for it in fit_half], max_tokens)
        assert all(h["x-router-escalated"] == "false" for h in heads)
        assert len(log.read_text().splitlines()) == len(fit_half)

        # 2. calibrate from the log, and from the same prompts run by calibrate itself
        fitted = tmp_path / "policies" / "fitted.yaml"
        assert main(["calibrate", "--log", str(log), "--target-escalation", "0.3",
                     "--policy-out", str(fitted)]) == 0
        policy = load_policy(fitted).for_serving()
        t_log = policy.rule.escalate_below  # type: ignore[union-attr]
        if check_prompts:
            prompts = write_items(tmp_path / "fit_half.jsonl", fit_half)
            again = tmp_path / "policies" / "from-prompts.yaml"
            assert main(["calibrate", "--prompts", str(prompts), "--target-escalation", "0.3",
                         "--max-tokens", str(max_tokens), "--config", str(cfg_log),
                         "--policy-out", str(again)]) == 0
            printed = capsys.readouterr().out
            t_prompts = load_policy(again).rule.escalate_below  # type: ignore[union-attr]
            assert t_log == pytest.approx(t_prompts, abs=1e-9), printed
        assert policy.calibration["n"] == len(fit_half)
        assert policy.calibration["model"] == "smollm2-135m-instruct"

        # 3. tomorrow's traffic, served with the fitted policy
        served = load_settings(write_config(tmp_path, fitted, tmp_path / "served.jsonl"))
        with ServerThread(create_app(served, backends, preload=False)) as s:
            heads = ask_all(s.url, [it.prompt for it in serve_half], max_tokens)
        rate = sum(h["x-router-escalated"] == "true" for h in heads) / len(heads)
        escalated_to = {h["x-router-tier"] for h in heads if h["x-router-escalated"] == "true"}
        print(f"threshold {t_log:.4f}: escalated {rate:.3f} of the other half")
        assert escalated_to <= {"large"}
        # the cascade escalated exactly the answers the fitted threshold puts below it
        logged = [json.loads(x) for x in (tmp_path / "served.jsonl").read_text().splitlines()]
        scores = [rec["tiers"][0]["score"] for rec in logged]
        predicted = sum(sc is None or sc < t_log for sc in scores)
        assert predicted == sum(h["x-router-escalated"] == "true" for h in heads)
        assert TARGET - band <= rate <= TARGET + band, f"escalated {rate:.3f}"
    finally:
        async def close() -> None:
            for b in backends.values():
                await b.aclose()
        asyncio.run(close())
