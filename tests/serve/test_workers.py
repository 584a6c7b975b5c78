"""`router serve --workers N`: real process trees on loopback in front of the fake vLLM server.

The decision log of N workers is one file of whole JSON lines; the online target_rate policy
holds its rate in every worker (each has its own window); SIGTERM lets in-flight requests finish
and leaves no process behind, and so does a SIGKILLed supervisor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import yaml
from fake_vllm import fake_vllm_app
from serve_helpers import write_policy

from router.cli import build_parser
from router.config import load_settings, settings_from_dict
from router.errors import ConfigError
from router.serve.run import serve_main
from router.serve.workers import (
    CONFIG_ERROR_EXIT,
    MULTIPROC_ENV,
    Supervisor,
    cpu_quota,
    worker_count,
)
from tests.harness.router_process import (
    alive,
    children_of,
    fresh_connections,
    router_process,
    write_config,
)
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def config(tmp: Path, upstream: ServerThread, *, small: str = "varied", large: str = "ok",
           rule: dict[str, Any] | None = None, server: dict[str, Any] | None = None) -> Path:
    policy = write_policy(tmp, "policy", rule or {"kind": "threshold", "escalate_below": -1.0})
    common = {"backend": "openai_http", "base_url": f"{upstream.url}/v1", "max_retries": 0,
              "timeout_s": 30}
    return write_config(tmp, {
        "server": {"decision_log": {"path": str(tmp / "decisions.jsonl")}, **(server or {})},
        "tiers": [{"name": "small", "model": small, **common},
                  {"name": "large", "model": large, **common}],
        "cascade": {"policy": str(policy)},
    })


_CLIENTS = threading.local()


def chat(url: str, content: str, *, stream: bool = False) -> httpx.Response:
    """One request on a fresh connection (so the kernel picks a worker for each), with one
    client per thread: one httpx.Client shared by 16 threads with no keep-alive sometimes
    closed a socket another thread was reading (EBADF), on any tree."""
    client = getattr(_CLIENTS, "client", None)
    if client is None:
        client = _CLIENTS.client = fresh_connections()
    return client.post(f"{url}/v1/chat/completions", json={
        "model": "cascade", "stream": stream, "max_tokens": 8,
        "messages": [{"role": "user", "content": content}]})


def read_log(path: Path, expected: int, timeout_s: float = 20.0) -> list[dict[str, Any]]:
    """Every line of the decision log, parsed (fails on a torn or interleaved line)."""
    deadline = time.monotonic() + timeout_s
    while True:
        data = path.read_bytes() if path.exists() else b""
        if data.count(b"\n") >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


def test_workers_from_cli_and_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--workers", "3"])
    assert args.workers == 3
    assert build_parser().parse_args(["serve", "--workers", "auto"]).workers == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])
    raw = {"tiers": [{"name": "t", "backend": "embedded", "model": "m"}]}
    assert settings_from_dict(raw).server.workers == 1
    assert settings_from_dict({**raw, "server": {"workers": "auto"}}).server.workers == "auto"
    with pytest.raises(ConfigError, match=r"server\.workers"):
        settings_from_dict({**raw, "server": {"workers": 0}})
    assert worker_count(4) == 4
    none = tmp_path / "absent"
    assert worker_count("auto", cpu_max=none) == len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path / "cpu.max") is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path / "cpu.max") == 2
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: one worker
    assert worker_count("auto", cpu_max=tmp_path / "cpu.max") == 1


def test_port_in_use_is_a_clean_error(tmp_path: Path, upstream: ServerThread,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = build_parser().parse_args(["serve", "--config", str(config(tmp_path, upstream)),
                                          "--port", str(port), "--workers", "2"])
        assert serve_main(args) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def bad_gate_config(tmp: Path, upstream: ServerThread) -> Path:
    """A prompt gate whose policy is a learned rule (a gate scores the prompt text: it needs
    one scorer signal), which the app refuses at start-up."""
    gate = write_policy(tmp, "gate", {"kind": "threshold", "escalate_below": -1.0},
                        signal={"name": "learned", "features": ["mean_logprob"],
                                "center": [0.0], "scale": [1.0], "weights": [1.0],
                                "intercept": 0.0})
    raw = yaml.safe_load(config(tmp, upstream).read_text())
    raw["cascade"]["prompt_gate"] = {"policy": str(gate)}
    return write_config(tmp, raw)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_policy_stops_the_server_with_status_2(tmp_path: Path, upstream: ServerThread,
                                                      workers: int) -> None:
    """As with one worker, N workers never start on a policy the app refuses: the server exits
    2 at once with the message naming the policy file, and no worker crash-loops."""
    cfg = bad_gate_config(tmp_path, upstream)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "router.cli", "serve", "--config", str(cfg),
                           "--port", "0", "--workers", str(workers)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"router serve: error: policy 'gate' ({tmp_path / 'gate.yaml'})" in done.stderr
    assert "a learned signal scores answers" in done.stderr
    assert "worker 0 started" not in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - started < 30


def test_a_worker_that_refuses_the_config_stops_the_supervisor(
        tmp_path: Path, upstream: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's own guard (a config error only a worker sees): the first worker that
    exits with the config-error status stops the others, and `run` returns 2, not a restart."""
    settings = load_settings(bad_gate_config(tmp_path, upstream))
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "metrics"))  # run() sets it: restored
    sup = Supervisor(settings, workers=2, host="127.0.0.1", port=0, environ=dict(os.environ))
    started = time.monotonic()
    assert sup.run() == CONFIG_ERROR_EXIT
    assert time.monotonic() - started < 60
    exits = [p.exitcode for p in sup._procs.values()]
    assert CONFIG_ERROR_EXIT in exits and len(exits) == 2  # none was restarted


def test_decision_log_has_whole_lines_with_two_workers(tmp_path: Path,
                                                       upstream: ServerThread) -> None:
    """300 requests with 24 KiB prompts logged verbatim, 16 at a time over two workers: every
    line parses, each request is logged exactly once, and both workers wrote."""
    cfg = config(tmp_path, upstream, server={"decision_log": {
        "path": str(tmp_path / "decisions.jsonl"), "include_prompt": True}})
    n = 300
    with router_process(cfg, workers=2) as rp:
        prompts = [f"request {i} " + "x" * (24 * 1024) for i in range(n)]
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda p: chat(rp.url, p), prompts))
        assert [a.status_code for a in answers] == [200] * n
        records = read_log(tmp_path / "decisions.jsonl", n)
    assert len(records) == n
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    assert len({r["id"] for r in records}) == n
    assert set(Counter(r["worker"] for r in records)) == {0, 1}


def test_target_rate_holds_in_every_worker(tmp_path: Path, upstream: ServerThread) -> None:
    """target_rate 0.3 with two workers, each with its own window: after each worker's window
    filled, the escalation rate of each worker and of both together is 0.3 +/- 0.06."""
    cfg = config(tmp_path, upstream, rule={"kind": "target_rate", "escalation_rate": 0.3,
                                           "window": 100, "min_samples": 20})
    rng = np.random.default_rng(11)
    scores = np.clip(rng.normal(-1.5, 0.8, 800), -6.0, -0.01)
    with router_process(cfg, workers=2) as rp:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda s: chat(rp.url, f"logprob={s:.4f}"), scores))
        assert all(a.status_code == 200 for a in answers)
        records = read_log(tmp_path / "decisions.jsonl", len(scores))
    assert len(records) == len(scores)
    rates = {}
    for w in (0, 1):
        mine = [r["escalated"] for r in records if r["worker"] == w]
        assert len(mine) >= 200, f"worker {w} served only {len(mine)}"
        rates[w] = float(np.mean(mine[100:]))
    both = [r["escalated"] for w in (0, 1)
            for r in [r for r in records if r["worker"] == w][100:]]
    assert abs(float(np.mean(both)) - 0.3) <= 0.06, (rates, np.mean(both))
    for w, rate in rates.items():
        assert abs(rate - 0.3) <= 0.06, (w, rates)


def test_sigterm_finishes_in_flight_requests_and_leaves_no_process(
        tmp_path: Path, upstream: ServerThread) -> None:
    """Four requests that take 5 s each are in flight on two workers when the supervisor gets
    SIGTERM: all four answer 200, the supervisor exits 0, no worker outlives it."""
    cfg = config(tmp_path, upstream, small="slow", large="slow",
                 rule={"kind": "threshold", "escalate_below": -100.0})
    with router_process(cfg, workers=2) as rp:
        workers = rp.workers(2)
        everyone = children_of(rp.proc.pid)  # the workers and multiprocessing's resource tracker
        with ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(chat, rp.url, f"slow {i}") for i in range(4)]
            deadline = time.monotonic() + 10
            while _in_flight(rp.url) < 4:  # the gauge is the sum over both workers
                assert time.monotonic() < deadline, "requests not in flight"
                time.sleep(0.1)
            rp.proc.send_signal(signal.SIGTERM)
            statuses = [f.result(timeout=30).status_code for f in pending]
        assert rp.proc.wait(timeout=40) == 0, rp.output()
    assert statuses == [200] * 4
    assert not [p for p in workers if alive(p)], rp.output()
    deadline = time.monotonic() + 10
    while [p for p in everyone if alive(p)]:  # the tracker exits once its pipe closes
        assert time.monotonic() < deadline, f"left behind: {everyone}"
        time.sleep(0.1)
    assert "stopping 2 workers" in rp.output()


def test_a_dead_worker_is_replaced_and_its_counts_kept(tmp_path: Path,
                                                      upstream: ServerThread) -> None:
    with router_process(config(tmp_path, upstream), workers=2) as rp:
        first = rp.workers(2)
        for i in range(20):
            assert chat(rp.url, f"before {i}").status_code == 200
        series = 'router_requests_total{endpoint="chat",status="200",tier="small"}'
        deadline = time.monotonic() + 10
        while _sample(rp.url, series) < 20:  # counted just after the answer's last byte
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = rp.workers(2)
            if first[0] not in now and rp.output().count("Application startup complete") >= 3:
                break
            assert time.monotonic() < deadline, rp.output()
            time.sleep(0.2)
        for i in range(10):
            assert chat(rp.url, f"after {i}").status_code == 200
        deadline = time.monotonic() + 10
        while (served := _sample(rp.url, series)) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert served == 30  # the killed worker's counts are still in the sum
    assert "exited with -9" in rp.output()


def test_ctrl_c_stops_the_whole_group(tmp_path: Path, upstream: ServerThread) -> None:
    """Ctrl-C in a terminal sends SIGINT to every process of the group at once: supervisor and
    workers shut down once (not "at once, forced"), the supervisor exits 0."""
    with router_process(config(tmp_path, upstream), workers=2) as rp:
        workers = rp.workers(2)
        assert chat(rp.url, "hi").status_code == 200
        os.killpg(rp.proc.pid, signal.SIGINT)
        assert rp.proc.wait(timeout=40) == 0, rp.output()
    assert not [p for p in workers if alive(p)]
    assert "Application shutdown complete" in rp.output()


def test_workers_die_with_a_killed_supervisor(tmp_path: Path, upstream: ServerThread) -> None:
    cfg = config(tmp_path, upstream)
    with router_process(cfg, workers=2) as rp:
        workers = rp.workers(2)
        rp.proc.send_signal(signal.SIGKILL)
        rp.proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while [p for p in workers if alive(p)]:
            assert time.monotonic() < deadline, "orphaned workers"
            time.sleep(0.2)


def _sample(url: str, series: str) -> float:
    """One series of a /metrics scrape by its exposition text: the name, then the labels
    sorted by name (as the multiprocess exposition writes them)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _in_flight(url: str) -> float:
    return _sample(url, "router_in_flight_requests")
