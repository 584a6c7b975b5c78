"""Shared fixtures: the real embedded models (loaded once per session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from router.backends._llama import LlamaEngine
from router.models import resolve_packaged

SMALL = "smollm2-135m-instruct"
LARGE = "gemma3-270m"


@pytest.fixture(scope="session")
def small_engine() -> Iterator[LlamaEngine]:
    yield LlamaEngine(resolve_packaged(SMALL), n_ctx=512, n_threads=2)


@pytest.fixture(scope="session")
def large_engine() -> Iterator[LlamaEngine]:
    yield LlamaEngine(resolve_packaged(LARGE), n_ctx=512, n_threads=2)
