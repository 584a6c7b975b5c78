"""`router serve --workers N`: one supervisor process, N uvicorn worker processes on one socket.

    supervisor   binds the listening socket, cleans the metrics directory, spawns the workers,
                 replaces one that dies, and on SIGTERM/SIGINT asks every worker to shut down
                 gracefully (a second signal makes them stop at once), waits, then removes what
                 it created. It never imports the app: no event loop, no upstream pools.
    worker i     a fresh interpreter (multiprocessing's "spawn": nothing inherited but the
                 socket) that builds its own app, so each worker owns its upstream pools and its
                 online policy state, and serves the shared socket until told to stop.

Metrics: the supervisor points `PROMETHEUS_MULTIPROC_DIR` at a directory made for this run
(or the one the environment names, emptied first) before any worker starts; each worker writes
its values there and any worker's `/metrics` returns the sum over all of them
(`router.metrics.multiprocess_registry`). Workers die with the supervisor (`PR_SET_PDEATHSIG`),
so even a SIGKILLed supervisor leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Literal

from router.config import Settings
from router.errors import ConfigError, RouterError

log = logging.getLogger("router.serve")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: a worker that dies sooner than this after its start counts as a crash loop
MIN_UPTIME_S = 10.0
MAX_QUICK_DEATHS = 3
#: a worker's exit status for a config error (as `router serve`'s): the supervisor stops with it
CONFIG_ERROR_EXIT = 2
#: seconds beyond `server.shutdown_grace_s` before stragglers are killed
KILL_MARGIN_S = 5.0
_PR_SET_PDEATHSIG = 1
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cpu_quota(cpu_max: Path = CGROUP_CPU_MAX) -> int | None:
    """Whole CPUs a cgroup v2 quota allows (rounded up), None without a quota.
    Example: "150000 100000" -> 2; "max 100000" -> None."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def worker_count(value: int | Literal["auto"], *, cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """`auto` -> the CPUs this process may use: its affinity mask (not the machine's count),
    capped by a cgroup CPU quota (a Kubernetes CPU limit does not change the affinity).
    Example: pinned with `taskset -c 1` -> 1."""
    if value != "auto":
        return value
    n = max(1, len(os.sched_getaffinity(0)))
    quota = cpu_quota(cpu_max)
    return min(n, quota) if quota is not None else n


def bind_socket(host: str, port: int) -> socket.socket:
    """The one listening socket every worker accepts on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a spawned worker gets (pickled into it)."""

    settings: Settings
    environ: Mapping[str, str]
    metrics_dir: Path
    index: int
    supervisor_pid: int


def _die_with_supervisor(supervisor_pid: int) -> None:
    """SIGTERM this process when the supervisor dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # it died before prctl took effect
        os._exit(0)


def worker_main(spec: WorkerSpec, sock: socket.socket) -> None:
    """Body of worker `spec.index`: its own app, served on the shared socket."""
    _die_with_supervisor(spec.supervisor_pid)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s "
                        f"[worker {spec.index}]: %(message)s")
    from router.serve.run import serve_app

    try:
        serve_app(spec.settings, sock=sock, environ=spec.environ, worker=spec.index,
                  metrics_dir=spec.metrics_dir)
    except RouterError as exc:  # a config error: every worker would fail the same way
        print(f"router serve: error: {exc.message}", file=sys.stderr, flush=True)
        sys.exit(CONFIG_ERROR_EXIT)


def _metrics_dir(environ: Mapping[str, str]) -> tuple[Path, bool]:
    """(directory, created by us): the environment's, emptied, else a fresh temporary one."""
    named = environ.get(MULTIPROC_ENV)
    if named:
        path = Path(named)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    return Path(tempfile.mkdtemp(prefix="router-metrics-")), True


class Supervisor:
    def __init__(self, settings: Settings, *, workers: int, host: str, port: int,
                 environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.n = workers
        self.host, self.port = host, port
        self.environ = dict(environ)
        self.grace_s = settings.server.shutdown_grace_s
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}  # worker index -> process
        self._started: dict[int, float] = {}
        self._signals = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        forward = signal.SIGTERM if self._signals == 1 else signal.SIGINT  # SIGINT: at once
        log.info("supervisor: %s, stopping %d workers%s", signal.Signals(signum).name,
                 len(self._procs), "" if self._signals == 1 else " now")
        for p in self._procs.values():
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, forward)

    def _spawn(self, index: int, sock: socket.socket, metrics_dir: Path) -> None:
        spec = WorkerSpec(self.settings, self.environ, metrics_dir, index, os.getpid())
        proc = self._ctx.Process(target=worker_main, args=(spec, sock),
                                 name=f"router-worker-{index}")
        proc.start()
        self._procs[index] = proc
        self._started[index] = time.monotonic()
        log.info("supervisor: worker %d started (pid %d)", index, proc.pid)

    def run(self) -> int:
        """Serve until a signal; 0 after a clean shutdown, 1 if workers kept crashing, 2 if a
        worker refused the configuration."""
        sock = bind_socket(self.host, self.port)
        metrics_dir, created = _metrics_dir(self.environ)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)  # inherited by every spawned worker
        self.environ[MULTIPROC_ENV] = str(metrics_dir)
        from prometheus_client import multiprocess  # the directory is now in force

        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        quick_deaths, code = 0, 0
        try:
            log.info("supervisor: serving on http://%s:%d with %d workers (metrics in %s)",
                     self.host, sock.getsockname()[1], self.n, metrics_dir)
            for i in range(self.n):
                self._spawn(i, sock, metrics_dir)
            while not self._signals:
                wait([p.sentinel for p in self._procs.values()], timeout=1.0)
                for i, p in list(self._procs.items()):
                    if p.exitcode is None or self._signals:
                        continue
                    multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
                    if p.exitcode == CONFIG_ERROR_EXIT:  # restarting it would fail again
                        log.error("supervisor: worker %d refused the configuration; stopping",
                                  i)
                        code = CONFIG_ERROR_EXIT
                        self._on_signal(signal.SIGTERM, None)
                        break
                    quick = time.monotonic() - self._started[i] < MIN_UPTIME_S
                    quick_deaths = quick_deaths + 1 if quick else 0
                    log.error("supervisor: worker %d (pid %s) exited with %s", i, p.pid,
                              p.exitcode)
                    if quick_deaths >= MAX_QUICK_DEATHS:
                        log.error("supervisor: workers keep dying at start-up; stopping")
                        code = 1
                        self._on_signal(signal.SIGTERM, None)
                        break
                    self._spawn(i, sock, metrics_dir)
            self._join()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            sock.close()
            for p in self._procs.values():
                if p.pid is not None:
                    multiprocess.mark_process_dead(p.pid)  # type: ignore[no-untyped-call]
            if created:
                shutil.rmtree(metrics_dir, ignore_errors=True)
        return code

    def _join(self) -> None:
        """Every worker finishes its in-flight requests (uvicorn's graceful shutdown, bounded by
        `server.shutdown_grace_s`); any still alive after that and a margin is killed."""
        deadline = time.monotonic() + self.grace_s + KILL_MARGIN_S
        for p in self._procs.values():
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in self._procs.values():
            if p.exitcode is None:
                log.error("supervisor: worker pid %s did not stop in time; killing it", p.pid)
                p.kill()
                p.join()
