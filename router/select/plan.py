"""What to score and with which model: a small picklable value that each engine (and each Ray
actor) turns into its own reader and scorer steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from router.backends.base import Backend
from router.config import Settings, load_settings
from router.scoring import SignalSpec
from router.select.readers import RecordReader
from router.select.scorer import ScoreStep, signal_specs


@dataclass(frozen=True)
class ScorePlan:
    model: str  # tier name
    reference: str | None = None  # tier name of the reference model (difference rule)
    config: str | None = None  # config file; None: the default config
    signal: SignalSpec = field(default_factory=lambda: SignalSpec("logprob_per_byte"))
    batch_size: int = 32
    text_field: str = "text"
    id_field: str = "id"
    text_format: Literal["lines", "file"] = "lines"
    stratify: str | None = None
    read_batch: int = 256

    @property
    def specs(self) -> tuple[SignalSpec, ...]:
        return signal_specs(self.signal)

    def build_reader(self, *, keep_raw: bool = False) -> RecordReader:
        return RecordReader(text_field=self.text_field, id_field=self.id_field,
                            text_format=self.text_format, stratify=self.stratify,
                            batch_size=self.read_batch, keep_raw=keep_raw)

    def build_scorer(self, backends: Mapping[str, Backend] | None = None, *,
                     keep_text: bool = False) -> ScoreStep:
        if backends is None:
            backends = build_select_backends(load_settings(self.config), self.model,
                                             self.reference)
        return ScoreStep(backends[self.model], specs=self.specs, batch_size=self.batch_size,
                         reference=backends[self.reference] if self.reference else None,
                         difference_of=self.signal, keep_text=keep_text)


def build_select_backends(settings: Settings, model: str,
                          reference: str | None = None) -> dict[str, Backend]:
    """The scoring backends of a run, with the `select` section's window and stride applied."""
    from router.backends import build_backend

    out: dict[str, Backend] = {}
    for name in (model, reference):
        if name is None:
            continue
        tier = settings.tier(name)
        sel = settings.select
        if tier.backend == "embedded" and (sel.window or sel.stride):
            tier = tier.model_copy(update={
                "score_window": sel.window or tier.score_window,
                "score_stride": sel.stride or tier.score_stride})
        out[name] = build_backend(tier, settings)
    return out


def default_model(settings: Settings) -> str:
    return settings.select.model or settings.tiers[0].name


def config_path(settings: Settings) -> str | None:
    return str(settings.source) if settings.source else None


__all__ = ["ScorePlan", "build_select_backends", "config_path", "default_model"]
