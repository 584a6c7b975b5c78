"""Router overhead: a direct call, `router serve` and the LiteLLM proxy, on one fake upstream.

    .venv/bin/python bench/overhead.py [--quick] [--delay-ms 20] [--skip-litellm]
                                       [--out bench/results/overhead.json]

Starts `bench/_fake_upstream.py` (vLLM-shaped answers with logprobs after a fixed delay), then
measures three targets in turn, each alone on the machine:

    direct   the upstream itself
    floor    `bench/_floor_proxy.py`: a raw ASGI proxy on the router's stack (uvicorn, uvloop,
             httptools, the router's HTTP client) with no cascade, scoring, metrics or
             framework: the least any Python proxy adds on this machine
    router   `router serve` (one worker): a cascade of two openai_http tiers on the upstream,
             with a policy under which tier 0 always answers (one upstream call per request)
    router-wN  the same with `--workers N` (`--router-workers 1,2` adds router-w2): not pinned,
             so on a small machine it competes with the harness; compare its CPU per request
             (`--workers-pinned`: its workers share the proxy's one CPU, away from the harness)
    router-baseline  `--baseline-src DIR`: the one-worker router run from another source tree
             (e.g. `git archive main | tar -x -C DIR`), for a before/after in the same run
    litellm  `litellm --config FILE` (one worker), `openai/m` at the same upstream; installed
             by this script into its own virtual environment under the cache folder

For every target, streaming off and on, and concurrency 1, 16, 64, 256, a separate load
process (`bench/_load.py`, closed loop, one keep-alive connection per client) sends chat
completions for a bounded time and count. Reported: the added p50/p99 latency over direct at
concurrency 1, and the request rate each sustains at each concurrency (a cell with any error
does not count as sustained), with the CPU each server spends per request.

Everything listens on 127.0.0.1. With two or more CPUs the proxy under test is pinned to the
last CPU and the upstream and load generator to the others (`--no-pin` turns this off), so that
"one worker" means one core and the harness does not compete with it. A proxy's CPU is that of
its whole process tree (supervisor and workers).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HOST = "127.0.0.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cascade-router" / "bench"
# 1.106.12: the newest 1.x whose [proxy] extra resolves from PyPI here; pinned so that figures
# compare across runs (LiteLLM 1.82.7 and 1.82.8 were the compromised releases of March 2026)
LITELLM_SPEC = "litellm[proxy]==1.106.12"
CONCURRENCY = (1, 16, 64, 256)
TARGETS = ("direct", "floor", "router", "litellm")
UPSTREAM_MODEL = "m"
# both proxies check this key, as deployed ones do (LiteLLM refuses to start without a key)
API_KEY = "sk-bench-" + "0123456789abcdef" * 4
PROMPT = "How do I reset my password? Answer in one sentence."


@dataclass(frozen=True)
class Budget:
    """Per measured cell: stop issuing at `seconds` or `max_requests`, whichever comes first."""

    seconds: float
    max_requests: int
    latency_seconds: float  # concurrency 1 cells, where the percentiles matter
    latency_requests: int
    warmup_s: float


DEFAULT = Budget(seconds=6.0, max_requests=4000, latency_seconds=12.0, latency_requests=500,
                 warmup_s=1.0)
QUICK = Budget(seconds=2.0, max_requests=1000, latency_seconds=4.0, latency_requests=120,
               warmup_s=0.5)


# -- processes ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, its live descendants and its reaped children (Linux)."""
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        f = _stat(int(stat.parent.name))
        if f is not None:
            parents.setdefault(int(f[1]), []).append(int(stat.parent.name))
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    todo = list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        f = _stat(child)
        if f is not None:
            total += sum(int(x) for x in f[11:13])
        todo += parents.get(child, [])
    return total / ticks


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, cpus)


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def post(port: int, path: str, body: dict[str, Any], timeout: float = 5.0) -> int:
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json",
                                          "authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_ready(proc: subprocess.Popen[Any], port: int, model: str, log: Path,
               timeout_s: float) -> None:
    """Poll with a real chat completion until it answers 200."""
    deadline = time.monotonic() + timeout_s
    body = chat_body(model, stream=False)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log {log}:\n"
                               + log.read_text(errors="replace")[-3000:])
        with contextlib.suppress(OSError):
            if post(port, "/v1/chat/completions", body) == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"server on port {port} not ready after {timeout_s:.0f} s; log {log}:\n"
                       + log.read_text(errors="replace")[-3000:])


def start_upstream(args: argparse.Namespace, workdir: Path,
                   cpus: set[int] | None) -> tuple[subprocess.Popen[str], int]:
    log = (workdir / "upstream.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_fake_upstream.py"), "--port", "0",
         "--delay-ms", str(args.delay_ms), "--tokens", str(args.tokens),
         "--model", UPSTREAM_MODEL],
        stdout=subprocess.PIPE, stderr=log, text=True)
    pin(proc.pid, cpus)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        stop(proc)
        raise RuntimeError(f"fake upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def router_config(workdir: Path, upstream_port: int, tier_concurrency: int) -> Path:
    policy = workdir / "always-tier0.yaml"
    policy.write_text("name: bench-always-tier0\nsignal: {name: mean_logprob}\n"
                      "rule: {kind: threshold, escalate_below: -100}\n")
    tier = ("    backend: openai_http\n"
            f"    base_url: http://{HOST}:{upstream_port}/v1\n"
            f"    model: {UPSTREAM_MODEL}\n    api_key: x\n"
            f"    max_concurrency: {tier_concurrency}\n")
    cfg = workdir / "router.yaml"
    # admission sized for concurrency 256: the defaults (64 running + 128 queued) would answer
    # 429 there, which is the point of them, not what this benchmark measures
    cfg.write_text(
        f"server:\n  host: 127.0.0.1\n  api_keys: [{API_KEY}]\n"
        "  max_in_flight: 512\n  max_queue: 512\n"
        "  default_temperature: 0.0\n"
        f"tiers:\n  - name: small\n{tier}  - name: large\n{tier}"
        f"cascade:\n  policy: {policy}\n")
    return cfg


def litellm_config(workdir: Path, upstream_port: int) -> Path:
    cfg = workdir / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        f"  - model_name: {UPSTREAM_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: http://{HOST}:{upstream_port}/v1\n"
        "      api_key: x\n"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
        f"general_settings:\n  master_key: {API_KEY}\n")
    return cfg


def ensure_litellm(spec: str, log: Path) -> Path:
    """A virtual environment under the cache folder with `spec` installed; its `litellm`."""
    venv = CACHE / "litellm-venv"
    exe = venv / "bin" / "litellm"
    marker = venv / ".bench-spec"
    if exe.exists() and marker.exists() and marker.read_text() == spec:
        return exe
    print(f"installing {spec} into {venv} (once) ...", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    with log.open("w") as out:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", spec], check=True,
                       stdout=out, stderr=out)
    marker.write_text(spec)
    return exe


@contextlib.contextmanager
def target_server(name: str, args: argparse.Namespace, workdir: Path, upstream_port: int,
                  cpus: set[int] | None) -> Iterator[tuple[int, str, int | None]]:
    """(port, model name to request, pid of the proxy or None) for the target's lifetime."""
    if name == "direct":
        yield upstream_port, UPSTREAM_MODEL, None
        return
    port = free_port()
    log = workdir / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name == "floor":
        cmd = [sys.executable, str(BENCH / "_floor_proxy.py"), "--port", str(port),
               "--upstream", f"http://{HOST}:{upstream_port}/v1", "--key", API_KEY]
        model = "cascade"
    elif name.startswith("router"):
        cfg = router_config(workdir, upstream_port, args.tier_concurrency)
        workers = int(name.split("-w")[1]) if name.startswith("router-w") else 1
        if name == "router-baseline":
            env["PYTHONPATH"] = str(Path(args.baseline_src).resolve())
        cmd = [sys.executable, "-m", "router.cli", "serve", "--config", str(cfg),
               "--host", HOST, "--port", str(port)]
        model = "cascade"
        if workers > 1:
            cmd += ["--workers", str(workers)]
            if not args.workers_pinned:
                cpus = None  # N workers on every core, next to the harness
    else:
        exe = ensure_litellm(args.litellm_spec, workdir / "litellm-install.log")
        cmd = [str(exe), "--config", str(litellm_config(workdir, upstream_port)),
               "--host", HOST, "--port", str(port), "--num_workers", "1"]
        # no cost-map download, no telemetry, quiet logs: nothing leaves loopback
        env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
                "LITELLM_TELEMETRY": "False", "NO_PROXY": "*", "no_proxy": "*"}
        model = UPSTREAM_MODEL
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    pin(proc.pid, cpus)
    try:
        wait_ready(proc, port, model, log, timeout_s=180.0)
        deadline = time.monotonic() + 120.0
        while (name.startswith("router-w") and time.monotonic() < deadline and
               log.read_text().count("Application startup complete") < int(name.split("-w")[1])):
            time.sleep(0.25)  # every worker serves before the first cell
        yield port, model, proc.pid
    finally:
        stop(proc)


# -- load --------------------------------------------------------------------------------------

def chat_body(model: str, *, stream: bool) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 32, "temperature": 0.0, "stream": stream}


def run_cell(*, port: int, model: str, stream: bool, concurrency: int, budget: Budget,
             cpus: set[int] | None, watch: dict[str, int | None]) -> dict[str, Any]:
    latency_cell = concurrency == 1
    seconds = budget.latency_seconds if latency_cell else budget.seconds
    spec: dict[str, Any] = {"port": port, "path": "/v1/chat/completions",
            "body": json.dumps(chat_body(model, stream=stream)), "concurrency": concurrency,
            "stream": stream, "auth": API_KEY, "warmup_s": budget.warmup_s, "timeout_s": 30.0,
            "seconds": seconds,
            "max_requests": budget.latency_requests if latency_cell else budget.max_requests}
    before = {k: cpu_seconds(pid) for k, pid in watch.items() if pid is not None}
    proc = subprocess.Popen([sys.executable, str(BENCH / "_load.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    pin(proc.pid, cpus)
    out, _ = proc.communicate(json.dumps(spec), timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode})")
    cell: dict[str, Any] = json.loads(out)
    served = cell["ok"] + cell["errors"] + cell["warmup_requests"]
    for k, pid in watch.items():
        if pid is not None and served:
            cell[f"{k}_cpu_ms_per_req"] = round((cpu_seconds(pid) - before[k]) / served * 1e3, 3)
    return cell


# -- report ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_at_start": os.getloadavg()}


def find(cells: list[dict[str, Any]], target: str, stream: bool, conc: int) -> dict[str, Any]:
    for c in cells:
        if c["target"] == target and c["stream"] == stream and c["concurrency"] == conc:
            return c
    return {}


def sustained(cell: dict[str, Any]) -> float | None:
    """The cell's request rate if it had no error, else None (not sustained)."""
    if not cell or cell["errors"] or not cell["ok"]:
        return None
    return float(cell["rps"])


def summarize(cells: list[dict[str, Any]], targets: list[str],
              levels: list[int]) -> dict[str, Any]:
    added: dict[str, Any] = {}
    rates: dict[str, Any] = {}
    cpu: dict[str, dict[str, float]] = {}
    for stream in (False, True):
        mode = "stream" if stream else "non-stream"
        d = find(cells, "direct", stream, 1)
        for t in targets:
            c = find(cells, t, stream, 1)
            if t != "direct" and c and d:
                added[f"{t}/{mode}"] = {
                    "p50_ms": round(c["p50_ms"] - d["p50_ms"], 3),
                    "p99_ms": round(c["p99_ms"] - d["p99_ms"], 3)}
        for conc in levels:
            row = {t: sustained(find(cells, t, stream, conc)) for t in targets}
            r, lt, d = row.get("router"), row.get("litellm"), row.get("direct")
            row["router_over_litellm"] = round(r / lt, 2) if r and lt else None
            row["router_over_direct"] = round(r / d, 3) if r and d else None
            fl = row.get("floor")
            row["floor_over_direct"] = round(fl / d, 3) if fl and d else None
            rates[f"{mode}/c{conc}"] = row
            for t in targets:
                c = find(cells, t, stream, conc)
                if t != "direct" and c.get("proxy_cpu_ms_per_req") is not None:
                    cpu.setdefault(t, {})[f"{mode}/c{conc}"] = c["proxy_cpu_ms_per_req"]
    return {"added_latency_at_c1": added, "sustained_rps": rates, "proxy_cpu_ms_per_req": cpu}


def fmt(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or x != x else f"{x:.{nd}f}"


def render(cells: list[dict[str, Any]], summary: dict[str, Any], targets: list[str]) -> str:
    out = ["target   stream  conc     ok  err    req/s   p50 ms   p99 ms  ttfb p50  "
           "proxy CPU ms/req  upstream CPU ms/req"]
    for c in cells:
        out.append(f"{c['target']:<8} {'on' if c['stream'] else 'off':<6} {c['concurrency']:>5} "
                   f"{c['ok']:>6} {c['errors']:>4} {c['rps']:>8.1f} {c['p50_ms']:>8.2f} "
                   f"{c['p99_ms']:>8.2f} {c['ttfb_p50_ms']:>9.2f} "
                   f"{fmt(c.get('proxy_cpu_ms_per_req'), 2):>17} "
                   f"{fmt(c.get('upstream_cpu_ms_per_req'), 2):>20}")
    out += ["", "added latency over direct at concurrency 1 (ms):   p50      p99"]
    for key, v in summary["added_latency_at_c1"].items():
        out.append(f"  {key:<44} {v['p50_ms']:>8.2f} {v['p99_ms']:>8.2f}")
    out += ["", "sustained req/s without errors ('-' = errors or not run):",
            "  mode        conc " + "".join(f"{t:>{max(10, len(t) + 1)}}" for t in targets)
            + "  router/litellm  router/direct  floor/direct"]
    for key, row in summary["sustained_rps"].items():
        mode, conc = key.split("/c")
        out.append(f"  {mode:<10} {conc:>5} " + "".join(f"{fmt(row[t]):>{max(10, len(t) + 1)}}"
                                                        for t in targets)
                   + f"  {fmt(row['router_over_litellm'], 2):>14}"
                   + f"  {fmt(row['router_over_direct'], 3):>13}"
                   + f"  {fmt(row.get('floor_over_direct'), 3):>12}")
    cpu = summary["proxy_cpu_ms_per_req"]
    if cpu:
        keys = list(next(iter(cpu.values())))
        out += ["", "proxy CPU ms per request (whole process tree):",
                "  target           " + "".join(f"{k:>16}" for k in keys)]
        for t, row in cpu.items():
            out.append(f"  {t:<15}  " + "".join(f"{fmt(row.get(k), 2):>16}" for k in keys))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short cells (about 2 minutes)")
    ap.add_argument("--delay-ms", type=float, default=20.0, help="upstream delay")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--baseline-src", default=None,
                    help="also run the router from this source tree (target router-baseline)")
    ap.add_argument("--router-workers", default="1",
                    help="comma-separated worker counts; each N > 1 adds the target router-wN")
    ap.add_argument("--tier-concurrency", type=int, default=64,
                    help="the router tiers' max_concurrency (upstream connections; default 64, "
                         "the config default)")
    ap.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)),
                    help="comma-separated concurrency levels")
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--litellm-spec", default=LITELLM_SPEC)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--workers-pinned", action="store_true",
                    help="router-wN's workers share the one proxy CPU too (its rate is then "
                         "that of one core; what it shows is whether CPU per request grows "
                         "with workers, without the harness competing for their cores)")
    ap.add_argument("--out", default=str(BENCH / "results" / "overhead.json"))
    args = ap.parse_args()
    budget = QUICK if args.quick else DEFAULT
    levels = [int(c) for c in args.concurrency.split(",")]
    targets = [t for t in args.targets.split(",") if t in TARGETS]
    extra = [f"router-w{n}" for n in args.router_workers.split(",") if int(n) > 1]
    if args.baseline_src:
        extra.append("router-baseline")
    if "router" in targets:
        at = targets.index("router") + 1
        targets[at:at] = extra
    if args.skip_litellm and "litellm" in targets:
        targets.remove("litellm")
    ncpu = os.cpu_count() or 1
    pinned = ncpu >= 2 and not args.no_pin
    proxy_cpus = {ncpu - 1} if pinned else None
    harness_cpus = set(range(ncpu - 1)) if pinned else None

    started = time.monotonic()
    host = machine()
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        workdir = Path(tmp)
        upstream, up_port = start_upstream(args, workdir, harness_cpus)
        try:
            for target in targets:
                t0 = time.monotonic()
                with target_server(target, args, workdir, up_port, proxy_cpus) as (
                        port, model, pid):
                    for stream in (False, True):
                        for conc in levels:
                            cell = run_cell(port=port, model=model, stream=stream,
                                            concurrency=conc, budget=budget, cpus=harness_cpus,
                                            watch={"proxy": pid, "upstream": upstream.pid})
                            cell["target"] = target
                            cells.append(cell)
                            print(f"  {target:<8} stream={'on ' if stream else 'off'} "
                                  f"c={conc:<4} {cell['rps']:>8.1f} req/s  p50 "
                                  f"{cell['p50_ms']:.2f} ms  errors {cell['errors']}",
                                  flush=True)
                print(f"{target}: {time.monotonic() - t0:.0f} s", flush=True)
        finally:
            stop(upstream)

    summary = summarize(cells, targets, levels)
    table = render(cells, summary, targets)
    print()
    print(table)
    result = {
        "benchmark": "overhead", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": host, "pinned": pinned,
        "settings": {"delay_ms": args.delay_ms, "tokens": args.tokens,
                     "budget": budget.__dict__, "litellm_spec": args.litellm_spec,
                     "targets": targets},
        "cells": cells, "summary": summary,
        "wall_s": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
