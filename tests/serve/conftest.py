"""Serve fixtures (helpers in serve_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import make_settings

from router.config import Settings
from tests.harness.server_thread import ServerThread


@pytest.fixture
def settings_factory(tmp_path: Path) -> Callable[..., Settings]:
    def build(**kw: Any) -> Settings:
        return make_settings(tmp_path, **kw)
    return build


@pytest.fixture
def serve_thread() -> Iterator[Callable[[Any], ServerThread]]:
    started: list[ServerThread] = []

    def start(app: Any) -> ServerThread:
        s = ServerThread(app).__enter__()
        started.append(s)
        return s

    yield start
    for s in started:
        s.__exit__()
