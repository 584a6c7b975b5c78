"""The garbage collector's pauses in `router serve` under load.

    .venv/bin/python bench/gc_pauses.py [--seconds 14] [--concurrency 64] [--stream]
                                        [--tier0 up,down] [--src DIR ...] [--out FILE]

`router serve` freezes what start-up built and raises gen-0's threshold (`tune_gc`), so a load
that leaves no cyclic garbage triggers no collection at all. A cycle left by every request
undoes that: the collector then runs every few thousand requests and frees tens of thousands
of objects at once, pausing every request in flight. This measures it: the router (one
process, pinned to the last CPU, each `--src` tree in turn) serves `bench/_load.py`'s closed-
loop load on `bench/_fake_upstream.py` (20 ms), as `bench/overhead.py` runs it, and counts the
collections it makes once serving (`bench/_gc_probe.py` wraps `router serve`), with their
total and longest pause. `--tier0 down` points tier 0 at a closed port, so every request fails
over to tier 1: the path of an upstream outage.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import overhead as ov

BENCH = Path(__file__).resolve().parent


def tier0_down(cfg: Path, upstream_port: int) -> None:
    """Tier 0 (the first tier in the config) at a closed port, without retries."""
    text = cfg.read_text()
    first = f"http://{ov.HOST}:{upstream_port}/v1"
    assert first in text
    text = text.replace(first, f"http://{ov.HOST}:{ov.free_port()}/v1", 1)
    text = text.replace("    max_concurrency:", "    max_retries: 0\n    max_concurrency:", 1)
    cfg.write_text(text)


def run_one(src: Path, *, tier0: str, stream: bool, seconds: float, concurrency: int,
            workdir: Path, upstream_port: int, cpus: tuple[set[int], set[int]] | None
            ) -> dict[str, Any]:
    cfg = ov.router_config(workdir, upstream_port, 512)
    if tier0 == "down":
        tier0_down(cfg, upstream_port)
    port = ov.free_port()
    stats = workdir / "gc.json"
    stats.unlink(missing_ok=True)
    log = workdir / "router.log"
    env = {**os.environ, "PYTHONPATH": str(src), "GC_PROBE_OUT": str(stats)}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(BENCH / "_gc_probe.py"), "serve",
                                 "--config", str(cfg), "--host", ov.HOST, "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    ov.pin(proc.pid, cpus[1] if cpus else None)
    try:
        ov.wait_ready(proc, port, "cascade", log, timeout_s=120.0)
        budget = ov.Budget(seconds=seconds, max_requests=10**7, latency_seconds=seconds,
                           latency_requests=10**7, warmup_s=1.0)
        cell = ov.run_cell(port=port, model="cascade", stream=stream, concurrency=concurrency,
                           budget=budget, cpus=cpus[0] if cpus else None,
                           watch={"router": proc.pid})
    finally:
        ov.stop(proc)
    gc_stats = json.loads(stats.read_text()) if stats.exists() else {}
    return {"src": str(src), "tier0": tier0, "stream": stream, "concurrency": concurrency,
            "ok": cell["ok"], "errors": cell["errors"],
            "served": cell["ok"] + cell["errors"] + cell["warmup_requests"],
            "p50_ms": cell.get("p50_ms"), "p99_ms": cell.get("p99_ms"),
            "cpu_ms_per_req": cell.get("router_cpu_ms_per_req"), **gc_stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=14.0)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument("--tier0", default="up,down", help="up, down or both (comma-separated)")
    ap.add_argument("--src", action="append", type=Path,
                    help="source trees to run (default: this one); repeat to compare")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    srcs = [p.resolve() for p in (args.src or [ov.ROOT])]
    cpus_all = sorted(os.sched_getaffinity(0))
    cpus = ({c for c in cpus_all[:-1]}, {cpus_all[-1]}) if len(cpus_all) > 1 else None
    rows = []
    with ov.tempfile.TemporaryDirectory(prefix="bench-gc-") as tmp:
        workdir = Path(tmp)
        upstream, upstream_port = ov.start_upstream(argparse.Namespace(
            delay_ms=20.0, tokens=16, top_logprobs=5, token_interval_ms=0.0), workdir, cpus[0]
            if cpus else None)
        try:
            for tier0 in args.tier0.split(","):
                for src in srcs:
                    row = run_one(src, tier0=tier0, stream=args.stream, seconds=args.seconds,
                                  concurrency=args.concurrency, workdir=workdir,
                                  upstream_port=upstream_port, cpus=cpus)
                    rows.append(row)
                    print(f"{src.name:>12} tier0 {tier0:4} {'stream' if args.stream else 'whole'}"
                          f" c{args.concurrency}: {row['served']} requests, {row['errors']} "
                          f"errors, p99 {row['p99_ms']} ms, {row['cpu_ms_per_req']} ms CPU "
                          f"each; collections {row.get('collections')}, "
                          f"{row.get('pause_s_total')} s in all, longest "
                          f"{row.get('pause_ms_max')} ms", flush=True)
        finally:
            ov.stop(upstream)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
