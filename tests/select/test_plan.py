"""What pass 1 scores with: the `select` section's window and stride reach every scoring tier
(backends are built here, nothing is loaded)."""

from __future__ import annotations

from typing import Any

from router.backends.vllm_engine import VllmEngineBackend
from router.config import Settings
from router.select.plan import build_select_backends


def _settings(select: dict[str, Any], **tier: Any) -> Settings:
    return Settings.model_validate({
        "tiers": [{"name": "big", "backend": "vllm_engine", "model": "/models/qwen", **tier}],
        "select": select})


def test_the_select_window_and_stride_reach_a_vllm_engine_tier() -> None:
    backend = build_select_backends(_settings({"window": 1024, "stride": 256}), "big")["big"]
    assert isinstance(backend, VllmEngineBackend)
    assert (backend.score_window, backend.score_stride) == (1024, 256)


def test_a_vllm_engine_tier_keeps_its_own_window_where_select_sets_none() -> None:
    settings = _settings({}, score_window=512, score_stride=128,
                         engine_args={"max_model_len": 4096})
    backend = build_select_backends(settings, "big")["big"]
    assert isinstance(backend, VllmEngineBackend)
    assert (backend.score_window, backend.score_stride) == (512, 128)
    assert backend.engine_args["max_model_len"] == 4096
