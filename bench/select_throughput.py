"""`router select` (local engine) against the backend's raw scoring throughput on the same texts.

    python bench/select_throughput.py [--docs 80] [--out bench/results/select_throughput.json]

Prints documents/s and tokens/s of both and their ratio (the pipeline's overhead is what we
track: reading, batching, the scorer, writing, the second pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from router.config import load_settings
from router.policy import load_policy
from router.select.options import SelectOptions
from router.select.pipeline import run_select
from router.select.plan import build_select_backends, default_model
from router.select.sample import make_records

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=80)
    ap.add_argument("--config", default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "select_throughput.json"))
    args = ap.parse_args()
    settings = load_settings(args.config)
    model = default_model(settings)
    recs = []
    while len(recs) < args.docs:
        recs.extend(make_records(len(recs)))
    recs = recs[:args.docs]
    texts = [r["text"] for r in recs]

    backend = build_select_backends(settings, model)[model]

    async def raw() -> tuple[float, int]:
        await backend.score(texts[:1])  # load the model outside the timing
        t0 = time.perf_counter()
        seqs = await backend.score(texts)
        return time.perf_counter() - t0, sum(len(s) for s in seqs)

    raw_s, raw_tokens = asyncio.run(raw())
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "c.jsonl"
        corpus.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
        opts = SelectOptions(inputs=(str(corpus),), out=Path(tmp) / "out",
                             policy=load_policy(ROOT / "policies" / "finetune-top.yaml"),
                             model=model, config=Path(args.config) if args.config else None,
                             progress=False)
        t0 = time.perf_counter()
        stats = run_select(opts, log=lambda _m: None)
        sel_s = time.perf_counter() - t0
    sel_tokens = int(stats["tokens"])
    rows = {
        "backend.score": {"seconds": raw_s, "docs_per_s": len(texts) / raw_s,
                          "tokens_per_s": raw_tokens / raw_s},
        "router select": {"seconds": sel_s, "docs_per_s": len(texts) / sel_s,
                          "tokens_per_s": sel_tokens / sel_s},
    }
    ratio = rows["router select"]["tokens_per_s"] / rows["backend.score"]["tokens_per_s"]
    print(f"{'':16} {'seconds':>9} {'docs/s':>9} {'tokens/s':>9}")
    for name, r in rows.items():
        print(f"{name:16} {r['seconds']:9.2f} {r['docs_per_s']:9.2f} {r['tokens_per_s']:9.1f}")
    print(f"select / raw tokens/s: {ratio:.3f}  ({len(texts)} docs, {raw_tokens} tokens, "
          f"model {backend.model_id}; select includes model load and both passes)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": backend.model_id, "docs": len(texts), **rows,
                               "ratio_tokens_per_s": ratio}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
