"""Shared fixtures: the real embedded models (loaded once per session)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import pytest

from router.backends._llama import LlamaEngine
from router.models import resolve_packaged


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Which llama.cpp build ran: its rounding differs across CPUs and build flags."""
    try:
        import llama_cpp

        info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        version = metadata.version("llama-cpp-python")
    except Exception as exc:  # the header must never stop the run
        return [f"llama.cpp: not importable ({exc})"]
    return [f"llama-cpp-python {version}; llama.cpp system info: {info}"]


SMALL = "smollm2-135m-instruct"
LARGE = "gemma3-270m"


@pytest.fixture(scope="session")
def small_engine() -> Iterator[LlamaEngine]:
    yield LlamaEngine(resolve_packaged(SMALL), n_ctx=512, n_threads=2)


@pytest.fixture(scope="session")
def large_engine() -> Iterator[LlamaEngine]:
    yield LlamaEngine(resolve_packaged(LARGE), n_ctx=512, n_threads=2)
