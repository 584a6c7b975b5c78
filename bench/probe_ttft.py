"""What the confidence probes add to a stream's time to first token, on the embedded pair.

    python bench/probe_ttft.py [--n 10] [--policy policies/support-cascade.yaml ...]

A stream holds tier 0's first `stream_buffer_tokens` tokens back until they are judged; a policy
whose signal needs probes (router.probes) runs them there, before the first byte reaches the
client. For each policy this streams the same prompts through the cascade (embedded SmolLM2 ->
Qwen2.5-Coder-1.5B, greedy) and prints the median time to the first content delta, split by
whether tier 0 answered or the request escalated, and the probes' own time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from router.backends import ChatMessage, GenerationRequest, StreamDelta, build_backends
from router.config import load_settings
from router.evalset import generate
from router.serve.cascade import Cascade, Outcome


async def measure(policy: Path, prompts: list[str], config: Path | None) -> dict[str, Any]:
    settings = load_settings(config)
    settings = settings.model_copy(update={"cascade": settings.cascade.model_copy(
        update={"policy": policy.resolve()})})
    backends = build_backends(settings)
    cascade = Cascade(settings, backends)
    rows = []
    try:
        for q in prompts:
            req = GenerationRequest(messages=(ChatMessage("user", q),), max_tokens=48,
                                    temperature=0.0)
            started = time.perf_counter()
            first: float | None = None
            outcome: Outcome | None = None
            async for item in cascade.stream(req):
                if isinstance(item, Outcome):
                    outcome = item
                elif isinstance(item, StreamDelta) and item.text and first is None:
                    first = time.perf_counter() - started
            assert outcome is not None
            a0 = outcome.attempts[0]
            rows.append({"ttft_s": first, "escalated": outcome.escalated,
                         "probe_s": a0.probe_latency_s, "probe_tokens": a0.probe_tokens})
    finally:
        for b in backends.values():
            await b.aclose()

    def med(xs: list[float]) -> float | None:
        return round(statistics.median(xs), 3) if xs else None

    return {
        "policy": str(policy), "n": len(rows),
        "ttft_accepted_s": med([r["ttft_s"] for r in rows
                                if not r["escalated"] and r["ttft_s"] is not None]),
        "ttft_escalated_s": med([r["ttft_s"] for r in rows
                                 if r["escalated"] and r["ttft_s"] is not None]),
        "probe_s": med([r["probe_s"] for r in rows]),
        "probe_tokens": med([float(r["probe_tokens"]) for r in rows]),
        "escalated": sum(r["escalated"] for r in rows),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--policy", type=Path, action="append")
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--json", type=Path, default=Path("bench/results/probe_ttft.json"))
    args = p.parse_args()
    policies = args.policy or [Path("policies/support-target-rate.yaml"),
                               Path("policies/support-cascade.yaml")]
    prompts = [it.prompt for it in generate(7, args.n)]
    results = [asyncio.run(measure(pol, prompts, args.config)) for pol in policies]
    print(f"{'policy':<44}{'n':>4}{'TTFT acc.':>11}{'TTFT esc.':>11}{'probes':>9}"
          f"{'+tokens':>9}{'esc.':>6}")
    for r in results:
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}s"

        print(f"{r['policy']:<44}{r['n']:>4}{f(r['ttft_accepted_s']):>11}"
              f"{f(r['ttft_escalated_s']):>11}{f(r['probe_s']):>9}{r['probe_tokens']:>9}"
              f"{r['escalated']:>6}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
