"""`router` as a user runs it: bad input gives one clear line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROUTER = [sys.executable, "-m", "router.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*ROUTER, *args], input=stdin, capture_output=True, timeout=300)
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("router ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.model
def test_score_prints_every_signal_and_orders_fluent_above_shuffled() -> None:
    proc = run(
        "score",
        "The children walked to school in the morning.",
        "school morning the walked in children The to.",
    )
    assert proc.returncode == 0, proc.stderr
    fluent, shuffled = (json.loads(line) for line in proc.stdout.splitlines())
    for key in (
        "mean_logprob",
        "min_logprob",
        "quantile_logprob_q0.1",
        "logprob_per_byte",
        "bits_per_byte",
        "neg_mean_entropy",
        "mean_margin",
        "model",
        "scorer_version",
    ):
        assert key in fluent
    assert fluent["model"] == "smollm2-135m-instruct"
    assert fluent["mean_logprob"] > shuffled["mean_logprob"] + 3.0


def test_empty_text() -> None:
    assert "empty text" in _error_line(run("score", ""))


def test_invalid_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    assert "invalid UTF-8" in _error_line(run("score", str(bad)))
    assert "invalid UTF-8" in _error_line(run("score", "-", stdin=b"ok\n\xff\xfe\n"))


def test_missing_model_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tiers:\n - {name: a, backend: embedded, model: /nope/model.gguf}\n")
    line = _error_line(run("score", "--config", str(cfg), "hello there"))
    assert "/nope/model.gguf" in line and "not found" in line


def test_bad_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("tiers:\n - {name: a, backend: embedded, model: x, n_ctxx: 3}\n")
    line = _error_line(run("score", "--config", str(cfg), "hello"))
    assert "tiers[0].n_ctxx" in line


@pytest.mark.model
def test_models_lists_tiers() -> None:
    proc = run("models")
    assert proc.returncode == 0, proc.stderr
    assert "small" in proc.stdout and "large" in proc.stdout and "ok" in proc.stdout
