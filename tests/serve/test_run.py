"""`router serve` as a process: the CLI starts uvicorn and shuts down cleanly on SIGTERM."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from serve_helpers import REPO

from router.serve.run import SERVING_GC_THRESHOLD, serve_main, tune_gc
from tests.harness.server_thread import free_port


def test_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("tiers: []\n")
    assert serve_main(bad) == 2


def test_tune_gc_freezes_start_up_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (SERVING_GC_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 1000  # what start-up built is out of every collection
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # cycles made after start-up are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.model
@pytest.mark.timeout(120)
def test_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["tiers"] = [*raw["tiers"][:1], dict(raw["tiers"][0], name="copy")]
    raw["cascade"]["policy"] = str(REPO / raw["cascade"]["policy"])
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(cfg),
                             "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()
        assert models["data"][0]["id"] == "cascade"
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it captured
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert proc.stdout is not None
        assert b"Application shutdown complete" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
