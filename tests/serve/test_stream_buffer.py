"""The stream buffer is judged at `stream_buffer_tokens` or `stream_buffer_seconds` after tier
0's first token, whichever comes first, so a slow tier 0 does not hold its accepted answer's
first byte for the whole buffer (real loopback upstream: tests/serve/fake_vllm.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_vllm import TRICKLE_TOKENS, fake_vllm_app
from serve_helpers import ask, http_tier, make_settings

from router.config import settings_from_dict
from router.errors import ConfigError
from router.serve import create_app
from tests.harness.server_thread import ServerThread

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(fake_vllm_app()) as s:
        yield s


def test_a_slow_tier_0_is_judged_within_the_time_bound(
        upstream: ServerThread, tmp_path: Path,
        serve_thread: Callable[[Any], ServerThread]) -> None:
    """20 tokens at 0.2 s each fit in the 32-token buffer: judged at the end of the answer, the
    first byte would come after 4 s; with the default bound (1 s) after about 1.2 s."""
    url = f"{upstream.url}/v1"
    settings = make_settings(tmp_path, tiers=[http_tier("trickle", url), http_tier("ok", url)])
    assert settings.cascade.stream_buffer_tokens > len(TRICKLE_TOKENS)
    base = serve_thread(create_app(settings)).url
    got = ask(base, "delay=0.2", stream=True)
    assert got.status == 200 and got.error is None
    assert got.headers["x-router-tier"] == "t-trickle"
    assert got.headers["x-router-escalated"] == "false"
    assert got.text == "".join(TRICKLE_TOKENS)
    assert got.first_text_s is not None and got.first_text_s < 2.5, got.first_text_s


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_the_time_bound_is_checked_at_start_up(value: Any) -> None:
    raw = {"tiers": [{"name": "a", "backend": "embedded", "model": "m"}],
           "cascade": {"stream_buffer_seconds": value}}
    with pytest.raises(ConfigError, match=r"cascade\.stream_buffer_seconds"):
        settings_from_dict(raw, "config.yaml")
