"""Observability fixtures: promtool/prometheus (installed from Debian's `prometheus` package when
missing), a vLLM-like upstream on loopback, and a router in front of it.

The install happens here, in the session fixture `prom_bin`, so `pytest` alone sets up what it
needs. It never skips: if the tools cannot be installed the tests fail and say why.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # fake_vllm, serve_helpers

from obs_helpers import PromBin, RouterUnderTest, install_prometheus, start_router, start_upstream

from tests.harness.server_thread import ServerThread


@pytest.fixture(scope="session")
def prom_bin() -> PromBin:
    return install_prometheus()


@pytest.fixture
def upstream() -> Iterator[ServerThread]:
    with start_upstream() as server:
        yield server


@pytest.fixture
def router_app(upstream: ServerThread, tmp_path: Path) -> Iterator[RouterUnderTest]:
    with start_router(upstream.url, tmp_path) as rut:
        yield rut
