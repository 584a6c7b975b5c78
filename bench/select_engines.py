"""`router select` on the local engine against the Ray engine with 1 and 2 CPUs, on a generated
corpus (the sample corpus's generator, several seeds), with the embedded model.

    python bench/select_engines.py [--docs 3000] [--cpus 1 2] [--local-threads N] [--out FILE]

Prints wall-clock seconds (Ray start, model loads and both passes included), documents/s and
each run's speed-up over local; checks that every run wrote the same stats.json. A Ray actor
runs llama.cpp on one thread; the local engine on the tier's `n_threads` (default: every CPU),
or `--local-threads N`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from router.policy import load_policy
from router.select.options import SelectOptions
from router.select.pipeline import run_select
from router.select.sample import make_records

ROOT = Path(__file__).resolve().parents[1]


def corpus(path: Path, docs: int) -> None:
    recs: list[dict[str, str]] = []
    seed = 0
    while len(recs) < docs:
        recs.extend({**r, "id": f"s{seed}-{r['id']}"} for r in make_records(seed))
        seed += 1
    path.write_text("".join(json.dumps(r) + "\n" for r in recs[:docs]), encoding="utf-8")


def config_with_threads(tmp: Path, threads: int) -> Path:
    """config.yaml with n_threads set on every embedded tier (paths made absolute)."""
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    for tier in data["tiers"]:
        if tier.get("backend") == "embedded":
            tier["n_threads"] = threads
    data["cascade"]["policy"] = str(ROOT / data["cascade"]["policy"])
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--docs", type=int, default=3000)
    ap.add_argument("--cpus", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--local-threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "select_engines.json"))
    args = ap.parse_args()
    policy = load_policy(ROOT / "policies" / "finetune-top.yaml")
    rows: dict[str, dict[str, Any]] = {}
    stats_bytes: set[bytes] = set()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "corpus.jsonl"
        corpus(data, args.docs)
        local_config = (config_with_threads(Path(tmp), args.local_threads)
                        if args.local_threads else None)
        local = f"local threads={args.local_threads or os.cpu_count()}"
        runs: list[tuple[str, str, int | None]] = [(local, "local", None)]
        runs += [(f"ray num_cpus={n}", "ray", n) for n in args.cpus]
        for name, engine, cpus in runs:
            out = Path(tmp) / name.replace(" ", "_")
            opts = SelectOptions(inputs=(str(data),), out=out, policy=policy,
                                 engine=engine,  # type: ignore[arg-type]
                                 ray_num_cpus=cpus, progress=False,
                                 config=local_config if engine == "local" else None)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            run_select(opts, log=lambda _m: None)
            seconds = time.perf_counter() - t0
            timing = json.loads((out / "timing.json").read_text())
            stats_bytes.add((out / "stats.json").read_bytes())
            rows[name] = {"seconds": round(seconds, 1), "docs_per_s": round(args.docs / seconds, 2),
                          "workers": timing["workers"], "load_avg_1m_before": load0}
            print(f"{name:16} {seconds:8.1f} s {args.docs / seconds:8.2f} docs/s "
                  f"(workers {timing['workers']}, load average {load0:.1f})", flush=True)
    base = rows[local]["seconds"]
    for name, r in rows.items():
        r["speedup_vs_local"] = round(base / r["seconds"], 2)
        print(f"{name:16} speed-up over local: {r['speedup_vs_local']:.2f}x")
    same = len(stats_bytes) == 1
    print(f"stats.json identical across runs: {same}; {os.cpu_count()} CPUs on this machine")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps({"docs": args.docs, "runs": rows, "stats_identical": same,
                                    "cpus": os.cpu_count()}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
