"""`router select` (local engine) against the backend's raw scoring throughput on the same texts.

    python bench/select_throughput.py [--docs 80] [--paragraphs 40] [--rounds 3]
                                      [--out bench/results/select_throughput.json]

Two corpora: `records` (the sample corpus's generated records, short) and `paragraphs` (several
sentences of prose each, about 190 tokens, as bench/score_throughput.py uses). Each round scores
a corpus with the backend `select` builds (`backend.score` on the whole list, model loaded
outside the timing) and then runs `router select` on it end to end (model load, both passes,
every output), alternating which goes first; the figures are medians over rounds, since this
shared machine moves one run's speed by 10-20%. Also printed: the share of select's wall time
spent inside its scoring calls (timing.json's scoring_seconds), which is the pipeline's own
overhead without the noise of comparing two runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from router.backends.base import Backend
from router.config import load_settings
from router.policy import load_policy
from router.select.options import SelectOptions
from router.select.pipeline import run_select
from router.select.plan import build_select_backends, default_model, embedded_scoring
from router.select.sample import make_records

ROOT = Path(__file__).resolve().parents[1]


def corpus(name: str, n: int) -> list[dict[str, Any]]:
    if name == "paragraphs":
        sys.path.insert(0, str(ROOT / "bench"))
        from score_throughput import paragraphs

        return [{"id": i, "text": t} for i, t in enumerate(paragraphs(n))]
    recs: list[dict[str, Any]] = []
    while len(recs) < n:
        recs.extend(make_records(len(recs)))
    return recs[:n]


def time_raw(backend: Backend, texts: list[str]) -> tuple[float, int]:
    async def run() -> tuple[float, int]:
        await backend.score(texts[:1])  # the model is loaded outside the timing
        t0 = time.perf_counter()
        seqs = await backend.score(texts)
        return time.perf_counter() - t0, sum(len(s) for s in seqs)

    return asyncio.run(run())


def time_select(recs: list[dict[str, Any]], model: str, config: Path | None
                ) -> tuple[float, int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        opts = SelectOptions(inputs=(str(path),), out=Path(tmp) / "out",
                             policy=load_policy(ROOT / "policies" / "finetune-top.yaml"),
                             model=model, config=config, progress=False)
        t0 = time.perf_counter()
        stats = run_select(opts, log=lambda _m: None)
        seconds = time.perf_counter() - t0
        timing = json.loads((Path(tmp) / "out" / "timing.json").read_text("utf-8"))
    return seconds, int(stats["tokens"]), float(timing["scoring_seconds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=80, help="generated records")
    ap.add_argument("--paragraphs", type=int, default=40, help="paragraph documents")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "select_throughput.json"))
    args = ap.parse_args()
    config = Path(args.config) if args.config else None
    settings = load_settings(config)
    model = default_model(settings)
    backend = build_select_backends(settings, model)[model]
    result: dict[str, Any] = {"model": backend.model_id, "rounds": args.rounds,
                              "weights": getattr(embedded_scoring(settings, model), "weights",
                                                 None), "corpora": {}}
    print(f"model {backend.model_id}, weights {result['weights']}, medians of {args.rounds} "
          "rounds; select includes model load and both passes")
    print(f"{'corpus':<11}{'docs':>5}{'tokens':>8}{'raw tok/s':>11}{'select tok/s':>14}"
          f"{'ratio':>7}{'in scoring':>12}")
    for name, n in (("records", args.docs), ("paragraphs", args.paragraphs)):
        recs = corpus(name, n)
        texts = [str(r["text"]) for r in recs]
        raws, sels, shares = [], [], []
        tokens = 0
        for r in range(args.rounds):
            for what in (("raw", "select") if r % 2 == 0 else ("select", "raw")):
                if what == "raw":
                    seconds, tokens = time_raw(backend, texts)
                    raws.append(tokens / seconds)
                else:
                    seconds, sel_tokens, scoring = time_select(recs, model, config)
                    sels.append(sel_tokens / seconds)
                    shares.append(scoring / seconds)
        raw, sel, share = (statistics.median(x) for x in (raws, sels, shares))
        result["corpora"][name] = {"docs": n, "tokens": tokens, "raw_tokens_per_s": raws,
                                   "select_tokens_per_s": sels, "scoring_share": shares,
                                   "ratio_of_medians": sel / raw}
        print(f"{name:<11}{n:>5}{tokens:>8}{raw:>11.1f}{sel:>14.1f}{sel / raw:>7.3f}"
              f"{share:>12.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
