"""What pass 1 runs, as one small picklable value: each engine worker (the local process, each
Ray actor) turns it into the same list of steps, `Read -> Score -> Checkpoint`.

The settings are loaded once, by `run_select`, and travel inside the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.backends.base import Backend
from router.config import EmbeddedTier, Settings, VllmEngineTier
from router.scoring import SignalSpec
from router.select.options import ReadOptions
from router.select.readers import Read
from router.select.scorer import Score, signal_specs
from router.select.steps import Step
from router.select.workdir import Checkpoint, WorkDir


@dataclass(frozen=True)
class ScorePlan:
    settings: Settings
    model: str  # tier name
    reference: str | None = None  # tier name of the reference model (difference rule)
    signal: SignalSpec = field(default_factory=lambda: SignalSpec("logprob_per_byte"))
    read: ReadOptions = field(default_factory=ReadOptions)
    out: Path = Path(".")  # the run's --out (its _work holds the checkpoints)
    checkpoint_records: int = 256
    checkpoint_seconds: float = 30.0
    backends: Mapping[str, Backend] | None = None  # given by a caller; else built from settings
    threads: int | None = None  # llama.cpp threads of an embedded tier (None: its n_threads)

    def build_backends(self) -> Mapping[str, Backend]:
        if self.backends is not None:
            return self.backends
        return build_select_backends(self.settings, self.model, self.reference,
                                     threads=self.threads)

    def prepare_weights(self) -> None:
        """Convert the embedded tiers' widened weights once, here, rather than in every
        engine worker at the same time (router.weights caches the file)."""
        if self.backends is not None:
            return
        from router.weights import model_file

        for name in (self.model, self.reference):
            tier = embedded_scoring(self.settings, name)
            if tier is not None:
                model_file(tier.model, tier.weights)

    def score_step(self) -> Score:
        backends = self.build_backends()
        return Score(backends[self.model], specs=signal_specs(self.signal),
                     batch_size=self.settings.select.batch_size,
                     reference=backends[self.reference] if self.reference else None,
                     difference_of=self.signal)

    def steps(self) -> list[Step]:
        """Pass 1 of one worker: task tables -> saved, scored chunks."""
        return [Read(self.read), self.score_step(),
                Checkpoint(WorkDir(self.out), every_records=self.checkpoint_records,
                           every_seconds=self.checkpoint_seconds)]


def build_select_backends(settings: Settings, model: str, reference: str | None = None, *,
                          threads: int | None = None) -> dict[str, Backend]:
    """The scoring backends of a run, with the `select` section's window and stride applied;
    `threads` sets an embedded tier's llama.cpp threads where its config leaves them unset
    (a Ray actor owns one CPU: one thread each, not every CPU of the node each)."""
    from router.backends import build_backend

    out: dict[str, Backend] = {}
    for name in (model, reference):
        if name is None:
            continue
        tier = (embedded_scoring(settings, name, threads=threads)
                or vllm_scoring(settings, name) or settings.tier(name))
        out[name] = build_backend(tier, settings)
    return out


def vllm_scoring(settings: Settings, tier_name: str) -> VllmEngineTier | None:
    """A vllm_engine tier as `select` scores with it: the `select` section's window and stride
    applied, as to an embedded tier (None: not a vllm_engine tier)."""
    tier = settings.tier(tier_name)
    if not isinstance(tier, VllmEngineTier):
        return None
    sel = settings.select
    return tier.model_copy(update={"score_window": sel.window or tier.score_window,
                                   "score_stride": sel.stride or tier.score_stride})


def embedded_scoring(settings: Settings, tier_name: str | None, *,
                     threads: int | None = None) -> EmbeddedTier | None:
    """An embedded tier as `select` scores with it: the `select` section's window, stride,
    weights and flash attention applied (None: no tier, or not an embedded one)."""
    if tier_name is None:
        return None
    tier = settings.tier(tier_name)
    if not isinstance(tier, EmbeddedTier):
        return None
    sel = settings.select
    update: dict[str, Any] = {"score_window": sel.window or tier.score_window,
                              "score_stride": sel.stride or tier.score_stride}
    if threads and tier.n_threads is None:
        update["n_threads"] = threads
    if sel.weights != "tier":
        update["weights"] = sel.weights
    if sel.flash_attn is not None:
        update["flash_attn"] = sel.flash_attn
    return tier.model_copy(update=update)


def default_model(settings: Settings) -> str:
    return settings.select.model or settings.tiers[0].name


def scoring_kernels(settings: Settings, tier_name: str | None) -> dict[str, Any] | None:
    """What decides an embedded tier's scores beyond its model, for a run's fingerprint:
    scores of different weights or attention kernels are not mixed on --resume."""
    tier = embedded_scoring(settings, tier_name)
    return None if tier is None else {"weights": tier.weights, "flash_attn": tier.flash_attn}


def scoring_setup(settings: Settings, tier_name: str | None) -> dict[str, Any] | None:
    """What else decides a tier's scores, for a run's fingerprint: its backend and model, the
    windows it scores in, and a vllm_engine tier's engine arguments (dtype, max_model_len...).
    Example: the default small tier -> {"backend": "embedded", "model":
    "smollm2-135m-instruct", "n_ctx": 2048, "window": None, "stride": None}"""
    if tier_name is None:
        return None
    tier = (embedded_scoring(settings, tier_name) or vllm_scoring(settings, tier_name)
            or settings.tier(tier_name))
    out: dict[str, Any] = {"backend": tier.backend, "model": tier.model}
    if isinstance(tier, EmbeddedTier):
        out.update(n_ctx=tier.n_ctx, window=tier.score_window, stride=tier.score_stride)
    elif isinstance(tier, VllmEngineTier):
        out.update(engine_args=tier.engine_args, window=tier.score_window,
                   stride=tier.score_stride)
    return out


__all__ = ["ScorePlan", "build_select_backends", "default_model", "embedded_scoring",
           "scoring_kernels", "scoring_setup", "vllm_scoring"]
