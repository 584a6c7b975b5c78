"""Fixtures of the `router select` tests (helpers live in select_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from select_helpers import FakeBackend, top_policy

from router.policy import Policy
from router.select.options import SelectOptions


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def run_fake(fake: FakeBackend) -> Callable[..., dict[str, Any]]:
    from router.select.pipeline import run_select

    def run(inputs: Sequence[Path | str], out: Path, policy: Policy | None = None,
            backends: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        kw.setdefault("progress", False)
        opts = SelectOptions(inputs=tuple(str(p) for p in inputs), out=out,
                             policy=policy or top_policy(), model="small", **kw)
        return run_select(opts, backends=backends or {"small": fake}, log=lambda _m: None)

    return run


