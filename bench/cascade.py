"""Cascade quality and cost on the built-in evaluation set, with the embedded models.

    python bench/cascade.py [--size 80] [--seed 0] [--set builtin|heldout]
                            [--signal quantile_logprob_q0.1 | --policy policies/FILE.yaml]
                            [--recorded outputs.jsonl] [--config FILE] [--json bench/results/...]

`--policy` scores by the policy's own signal (a learned rule included) exactly as serve does.

Runs every tier on every prompt once (about 2.5 minutes for 80 prompts on 2 cores), then
compares, at escalation rates 10/20/30/50%: small-only, large-only, random routing at the same
rate, the oracle, and the cascade on one signal, two ways:
  in-sample: escalate exactly the least confident fraction of all prompts (the deferral curve);
  held-out:  fit the threshold on the even prompts (router calibrate's fit) and serve the odd
             ones with it: the escalation rate it really gets, and its quality and cost there.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from router.calibrate.fit import escalation_rate, fit_rate
from router.evalset import DEFAULT_MAX_TOKENS, generate
from router.evaluate import metrics_math as mm
from router.evaluate.data import Recorded, load_recorded, write_recorded
from router.evaluate.report import policy_scores, signal_values
from router.policy import Policy, load_policy
from router.scoring import SignalSpec

RATES = (0.1, 0.2, 0.3, 0.5)


def run_models(args: argparse.Namespace, out: Path) -> list[Recorded]:
    from router.backends import build_backends
    from router.config import load_settings
    from router.evaluate.run import run_tiers

    settings = load_settings(args.config)
    backends = build_backends(settings)
    if args.set == "heldout":
        from router.evalset.heldout import generate_heldout

        items = generate_heldout(args.seed, args.size)
    else:
        items = generate(args.seed, args.size)

    async def go() -> list[Recorded]:
        try:
            return await run_tiers(items, settings, backends, max_tokens=args.max_tokens,
                                   log=lambda m: print(m, file=sys.stderr, flush=True))
        finally:
            for b in backends.values():
                await b.aclose()

    write_recorded(out, asyncio.run(go()))
    return load_recorded(out)


def figures(records: list[Recorded], spec: SignalSpec | None,
            policy: Policy | None = None) -> dict[str, Any]:
    if policy is not None:
        scores, key = policy_scores(policy, records), f"policy:{policy.name}"
    else:
        assert spec is not None
        scores, key = signal_values(records, [spec])[spec.key], spec.key
    small = np.array([r.outputs[0].correct for r in records], np.float64)
    large = np.array([r.outputs[-1].correct for r in records], np.float64)
    c_s = np.array([r.outputs[0].cost_usd for r in records])
    c_l = np.array([r.outputs[-1].cost_usd for r in records])
    n = len(records)
    casc = mm.deferral_curve(scores, small, large)
    casc_cost = mm.cascade_cost_curve(scores, c_s, c_l)
    rand, rand_cost = mm.random_curve(small, large), mm.random_cost_curve(c_s, c_l)
    orac = mm.oracle_curve(small, large)
    fit_idx, test_idx = np.arange(0, n, 2), np.arange(1, n, 2)
    rows = []
    for r in RATES:
        t = fit_rate(scores[fit_idx], r).threshold
        s_test = scores[test_idx]
        with np.errstate(invalid="ignore"):
            esc = ~(np.isfinite(s_test) & (s_test >= t))
        q_ho = float(np.where(esc, large[test_idx], small[test_idx]).mean())
        cost_ho = float((c_s[test_idx] + np.where(esc, c_l[test_idx], 0.0)).mean())
        rows.append({
            "rate": r,
            "cascade": {"quality": mm.at_rate(casc, r), "cost": mm.at_rate(casc_cost, r)},
            "random": {"quality": mm.at_rate(rand, r), "cost": mm.at_rate(rand_cost, r)},
            "oracle": {"quality": mm.at_rate(orac, r)},
            "held_out": {"threshold": t, "escalation": escalation_rate(s_test, t),
                         "quality": q_ho, "cost": cost_ho,
                         "random_quality": float(small[test_idx].mean() + escalation_rate(
                             s_test, t) * (large[test_idx].mean() - small[test_idx].mean()))},
        })
    return {"n": n, "signal": key, "auroc": mm.auroc(scores, small),
            "small_only": {"quality": float(small.mean()), "cost": float(c_s.mean())},
            "large_only": {"quality": float(large.mean()), "cost": float(c_l.mean())},
            "small_model": records[0].outputs[0].model, "large_model": records[0].outputs[-1].model,
            "rates": rows}


def table(f: dict[str, Any]) -> str:
    c_l = f["large_only"]["cost"]
    lines = [f"{f['n']} prompts; signal {f['signal']} (AUROC {f['auroc']:.3f}); "
             f"{f['small_model']} -> {f['large_model']}",
             f"{'routing':<34}{'quality':>9}{'$/1k prompts':>14}{'cost vs large':>15}",
             "-" * 72]

    def row(name: str, q: float, cost: float) -> None:
        lines.append(f"{name:<34}{q:>9.3f}{cost * 1000:>14.5f}{cost / c_l:>15.2f}")

    row("small only", f["small_only"]["quality"], f["small_only"]["cost"])
    row("large only", f["large_only"]["quality"], f["large_only"]["cost"])
    for r in f["rates"]:
        p = round(r["rate"] * 100)
        row(f"cascade @{p}%", r["cascade"]["quality"], r["cascade"]["cost"])
        row(f"random @{p}%", r["random"]["quality"], r["random"]["cost"])
        lines.append(f"{f'oracle @{p}%':<34}{r['oracle']['quality']:>9.3f}")
        h = r["held_out"]
        row(f"held-out cascade @{p}% (got {h['escalation']:.0%})", h["quality"], h["cost"])
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--size", type=int, default=80)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--set", choices=("builtin", "heldout"), default="builtin")
    p.add_argument("--signal", default="quantile_logprob_q0.1")
    p.add_argument("--policy", type=Path, help="score by this policy's signal instead")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--recorded", type=Path, help="reuse an outputs.jsonl instead of running")
    p.add_argument("--json", type=Path, default=Path("bench/results/cascade.json"))
    args = p.parse_args()
    started = time.perf_counter()
    if args.recorded is not None:
        records = load_recorded(args.recorded)
    else:
        records = run_models(args, args.json.with_name("cascade_outputs.jsonl"))
    policy = load_policy(args.policy).for_serving() if args.policy is not None else None
    f = figures(records, SignalSpec.parse(args.signal), policy)
    f["seconds"] = round(time.perf_counter() - started, 1)
    print(table(f))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(f, indent=1) + "\n")
    print(f"\nwrote {args.json} ({f['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
