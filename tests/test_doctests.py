"""The examples in the docstrings of the pure modules are tests too (STYLE.md: an example in
each docstring); they run here so that a stale example fails."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ("router.probes", "router.learned", "router.learned_fit", "router.text_features",
           "router.backends._utf8", "tests.harness.pairing")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
