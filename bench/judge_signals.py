"""Would the large tier make a better judge of tier 0's answers than tier 0 itself?

    python bench/judge_signals.py RECORDED.jsonl [--out judge.jsonl] [--limit N]

An experiment behind issue 11's held-out figures, not a product feature: for each recorded
tier-0 answer (`router eval`'s outputs.jsonl), the last tier of the default config is asked

    large_verify        self-verification's question (`router.probes.verification_request`,
                        the same template, read with `yes_probability`), put to the large tier:
                        P(yes) that tier 0's answer is correct. One prompt pass, one token.
    large_logprob_per_byte  the large tier's log-likelihood of tier 0's answer after the
                        question (its own chat template), per byte of the answer. One prompt
                        pass over question + answer, no generation.

and prints each signal's AUROC (against "tier 0 is right" and against "escalating gains
nothing"), area gain and PGR at 30% escalation beside the recorded tier-0 signals, overall and
per category, plus the large-tier tokens each one costs per request. Rows are written to `--out`
as they are computed.
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

from router.backends import ChatMessage, GenerationRequest, build_backends
from router.backends.base import Generation, Usage
from router.backends.embedded import EmbeddedBackend
from router.config import load_settings
from router.evaluate.data import load_recorded
from router.evaluate.metrics_math import (
    at_rate,
    auroc,
    curve_area,
    deferral_curve,
    oracle_curve,
    pgr,
    random_curve,
)
from router.probes import ProbeSettings, _verify
from router.scoring import TokenLogprobs

RECORDED_SIGNALS = ("consistency", "verify_p_yes", "prompt_logprob_per_byte")


def answer_likelihood(backend: EmbeddedBackend, question: str, answer: str) -> tuple[float, int]:
    """The large tier's log-likelihood per byte of `answer` after `question`; prompt tokens."""
    engine = backend._load_sync()
    template = backend._template_for(engine)
    prompt = template.render((ChatMessage("user", question),))
    pids = engine.tokenize(prompt, add_bos=engine.add_bos, special=template.parses_special)
    full = engine.tokenize(prompt + answer, add_bos=engine.add_bos,
                           special=template.parses_special)
    if full[: len(pids)] != pids or len(full) == len(pids):
        return float("nan"), len(full)
    engine._reset()
    rows = engine._decode(full, 0, all_logits=True)
    targets = np.asarray(full[len(pids):], dtype=np.int64)
    lps = np.take_along_axis(rows[len(pids) - 1 : len(full) - 1], targets[:, None], axis=1)
    return float(lps.sum()) / max(1, len(answer.encode())), len(full)


async def judge(path: Path, out: Path | None, limit: int | None) -> list[dict[str, Any]]:
    settings = load_settings(None)
    last = settings.tiers[-1]
    backend = build_backends(settings)[last.name]
    if not isinstance(backend, EmbeddedBackend):
        sys.exit(f"the last tier ({last.name}) must be embedded for this experiment")
    rows: list[dict[str, Any]] = []
    sink = out.open("w", encoding="utf-8") if out else None
    for rec in load_recorded(path)[:limit]:
        small, large = rec.outputs[0], rec.outputs[-1]
        req = GenerationRequest(messages=(ChatMessage("user", rec.item.prompt),),
                                max_tokens=1, temperature=0.0)
        gen_stub = _as_generation(small.text)
        t0 = time.perf_counter()
        p_yes, (vp, _vc) = await _verify(backend, req, gen_stub, ProbeSettings())
        t1 = time.perf_counter()
        lp, lp_tokens = await asyncio.to_thread(answer_likelihood, backend, rec.item.prompt,
                                                small.text.strip())
        row = {"id": rec.item.id, "category": rec.item.category, "small": int(small.correct),
               "large": int(large.correct), "large_verify": p_yes,
               "large_logprob_per_byte": lp, "verify_tokens": vp, "likelihood_tokens": lp_tokens,
               "verify_s": round(t1 - t0, 3), "likelihood_s": round(time.perf_counter() - t1, 3),
               **{k: small.features.get(k, float("nan")) for k in RECORDED_SIGNALS}}
        rows.append(row)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        print(f"{len(rows)} {row['category']} small={row['small']} verify={p_yes:.3f} "
              f"lp/B={lp:.3f}", file=sys.stderr, flush=True)
    if sink:
        sink.close()
    await backend.aclose()
    return rows


def _as_generation(text: str) -> Generation:
    """What `_verify` reads of tier 0's answer: its text."""
    empty = TokenLogprobs(np.zeros(0), np.zeros(0, np.int64))
    return Generation(model="recorded", text=text, finish_reason="stop", logprobs=empty,
                      usage=Usage(0, 0))


def report(rows: list[dict[str, Any]]) -> None:
    small = np.array([r["small"] for r in rows])
    large = np.array([r["large"] for r in rows])
    gain = ((small == 1) | (large == 0)).astype(int)
    orac, rand = oracle_curve(small, large), random_curve(small, large)
    print(f"{len(rows)} answers: tier 0 right {small.mean():.3f}, last tier {large.mean():.3f}")
    print(f"{'signal':26}{'AUROC':>7}{'AUROC gain':>12}{'area gain':>11}{'PGR@30%':>9}")
    for name in ("large_verify", "large_logprob_per_byte", *RECORDED_SIGNALS):
        s = np.array([r[name] for r in rows], dtype=np.float64)
        curve = deferral_curve(s, small, large)
        area = (curve_area(curve) - curve_area(rand)) / (curve_area(orac) - curve_area(rand))
        print(f"{name:26}{auroc(s, small):7.3f}{auroc(s, gain):12.3f}{area:11.2f}"
              f"{pgr(at_rate(curve, 0.3), small.mean(), large.mean()):9.2f}")
    print("per category (AUROC against tier 0 right):")
    for cat in sorted({r["category"] for r in rows}):
        sub = [r for r in rows if r["category"] == cat]
        s = np.array([r["small"] for r in sub])
        cells = [f"{n}={auroc([r[n] for r in sub], s):.2f}" if 0 < s.mean() < 1 else f"{n}=-"
                 for n in ("large_verify", "large_logprob_per_byte", "consistency")]
        print(f"  {cat:14} n={len(sub):3} tier0={s.mean():.2f} "
              f"last={np.mean([r['large'] for r in sub]):.2f}  " + "  ".join(cells))
    print("large-tier prompt tokens per request: verify "
          f"{np.median([r['verify_tokens'] for r in rows]):.0f}, likelihood "
          f"{np.median([r['likelihood_tokens'] for r in rows]):.0f} (medians)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recorded", type=Path)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()
    report(asyncio.run(judge(args.recorded, args.out, args.limit)))


if __name__ == "__main__":
    main()
