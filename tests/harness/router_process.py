"""`router serve` as a real process tree (the CLI, its supervisor and workers) for tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.server_thread import free_port


def children_of(pid: int) -> list[int]:
    """Live child processes of `pid`, from /proc (Linux)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            out.append(int(stat.parent.name))
    return sorted(out)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass
class RouterProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self, n: int, timeout_s: float = 60.0) -> list[int]:
        """The worker pids once `n` are running (the spawn start method adds a resource
        tracker process: the workers are the children named router-worker in their cmdline)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = [p for p in children_of(self.proc.pid) if _is_worker(p)]
            if len(pids) == n:
                return pids
            assert time.monotonic() < deadline, f"{len(pids)} workers, expected {n}"
            time.sleep(0.1)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _is_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing.spawn" in cmdline or b"spawn_main" in cmdline


def fresh_connections() -> httpx.Client:
    """A client that opens a new connection per request, so the kernel picks a worker for each
    (and certificates are loaded once, not per request as `httpx.post` does)."""
    return httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


def write_config(tmp: Path, raw: dict[str, Any]) -> Path:
    cfg = tmp / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return cfg


@contextlib.contextmanager
def router_process(config: Path, *, workers: int | str | None = None,
                   extra_env: dict[str, str] | None = None,
                   ready_timeout_s: float = 90.0) -> Iterator[RouterProcess]:
    """`python -m router.cli serve --config CONFIG [--workers N]` on a free port; ready once
    /healthz answers and every worker has logged its start-up. Stopped with SIGTERM (then
    SIGKILL) if still running at the end."""
    port = free_port()
    cmd = [sys.executable, "-m", "router.cli", "serve", "--config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log = config.parent / f"router-{port}.log"
    env = {**os.environ, **(extra_env or {})}
    with log.open("wb") as out:
        # its own process group, as a shell gives it: Ctrl-C can be sent to the whole group
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    rp = RouterProcess(proc, port, log)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            started = rp.output().count("Application startup complete")
            if started >= (workers if isinstance(workers, int) else 1):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{rp.url}/healthz", timeout=1).status_code == 200:
                        break
            assert proc.poll() is None, f"router exited {proc.returncode}:\n{rp.output()}"
            assert time.monotonic() < deadline, f"router not ready:\n{rp.output()}"
            time.sleep(0.2)
        yield rp
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
