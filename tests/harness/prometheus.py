"""promtool and the Prometheus server for tests: from PATH, else Debian's `prometheus` package.

Never a silent skip: if they cannot be installed, the calling test fails and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import pytest

APT_TIMEOUT_S = 900


@dataclass(frozen=True)
class PromBin:
    promtool: str
    prometheus: str


def _which() -> PromBin | None:
    promtool, prometheus = shutil.which("promtool"), shutil.which("prometheus")
    return PromBin(promtool, prometheus) if promtool and prometheus else None


def install_prometheus() -> PromBin:
    """promtool and prometheus from PATH, else `apt-get install prometheus` (as root)."""
    found = _which()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail("promtool/prometheus are not on PATH and there is no apt-get to install "
                    "Debian's `prometheus` package; install Prometheus 2.x (promtool and server)")
    if os.geteuid() != 0:
        pytest.fail("promtool/prometheus are missing; installing Debian's `prometheus` package "
                    "needs root (run: apt-get update && apt-get install -y prometheus)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=APT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`{' '.join(cmd)}` did not finish in {APT_TIMEOUT_S} s")
        if proc.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n"
                        f"{(proc.stdout + proc.stderr)[-3000:]}")
    found = _which()
    if found is None:
        pytest.fail("apt-get installed `prometheus` but promtool/prometheus are still not on PATH")
    return found
