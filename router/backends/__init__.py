"""Backends: one module per engine kind; `build_backend` turns a tier's config into one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import assert_never

from router.backends.base import (
    Backend,
    ChatMessage,
    Generation,
    GenerationRequest,
    StreamDelta,
    TopAlternatives,
    Usage,
)
from router.config import Settings, TierConfig, resolve_secret

__all__ = [
    "Backend",
    "ChatMessage",
    "Generation",
    "GenerationRequest",
    "StreamDelta",
    "TopAlternatives",
    "Usage",
    "build_backend",
    "build_backends",
]


def build_backend(
    tier: TierConfig, settings: Settings | None = None, environ: Mapping[str, str] | None = None
) -> Backend:
    """A tier's config -> its backend (nothing is loaded or connected yet)."""
    if tier.backend == "embedded":
        from router.backends.embedded import EmbeddedBackend, EmbeddedSettings
        from router.prompting import transcript_from_config

        model = tier.model
        if settings is not None and ("/" in model or model.endswith(".gguf")):
            model = str(settings.resolve(__import__("pathlib").Path(model)))
        template = (
            transcript_from_config(tier.prompt_template.model_dump())
            if tier.prompt_template is not None
            else None
        )
        return EmbeddedBackend(
            tier.model,
            EmbeddedSettings(
                model=model,
                n_ctx=tier.n_ctx,
                n_batch=tier.n_batch,
                n_threads=tier.n_threads,
                score_window=tier.score_window,
                score_stride=tier.score_stride,
                weights=tier.weights,
                flash_attn=tier.flash_attn,
            ),
            template,
        )
    if tier.backend == "openai_http":
        from router.backends.openai_http import (
            DEFAULT_MAX_RESPONSE_BYTES,
            HttpSettings,
            OpenAIHttpBackend,
        )

        key = resolve_secret(
            tier.api_key, tier.api_key_env, dict(environ) if environ is not None else None
        )
        return OpenAIHttpBackend(
            tier.model,
            HttpSettings(
                base_url=tier.base_url,
                model=tier.model,
                api_key=key,
                timeout_s=tier.timeout_s,
                connect_timeout_s=tier.connect_timeout_s,
                max_concurrency=tier.max_concurrency,
                max_retries=tier.max_retries,
                continuous_usage=tier.stream_usage_every_chunk,
                max_response_bytes=(settings.server.max_upstream_response_bytes
                                    if settings is not None else DEFAULT_MAX_RESPONSE_BYTES),
            ),
        )
    if tier.backend == "vllm_engine":
        from router.backends.vllm_engine import VllmEngineBackend

        return VllmEngineBackend(
            tier.model,
            tier.model,
            engine_args=tier.engine_args,
            score_window=tier.score_window,
            score_stride=tier.score_stride,
        )
    assert_never(tier)


def build_backends(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, Backend]:
    """Every tier's backend, keyed by tier name, in cascade order."""
    return {t.name: build_backend(t, settings, environ) for t in settings.tiers}
