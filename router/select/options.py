"""The options of one `router select` run: a flat frozen dataclass, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.policy import Policy

TextFormat = Literal["lines", "file"]
DEFAULT_SHARD_SIZE = 10_000  # records per resumable part of an input file
DEFAULT_READ_BATCH = 256  # records per Arrow batch


@dataclass(frozen=True)
class SelectOptions:
    inputs: tuple[str, ...]
    out: Path
    policy: Policy
    text_field: str = "text"
    id_field: str = "id"
    text_format: TextFormat = "lines"
    model: str | None = None  # tier name; default: select.model, else the first tier
    reference: str | None = None  # second tier for a difference rule
    engine: Literal["local", "ray"] = "local"
    resume: bool = False
    order_by_score: bool = False
    stratify: str | None = None
    from_scores: Path | None = None
    config: Path | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    read_batch: int = DEFAULT_READ_BATCH
    progress: bool | None = None  # None: a bar on a TTY, log lines otherwise
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    metrics_textfile: Path | None = None  # Prometheus textfile (node exporter's collector)
    pushgateway: str | None = None  # Prometheus push gateway URL
    extra: dict[str, str] = field(default_factory=dict)
