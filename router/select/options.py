"""The options of one `router select` run: flat frozen dataclasses, built by the CLI.

`ReadOptions` (how records are read) is defined once and travels as one value: in
`SelectOptions.read`, in the `ScorePlan` every engine worker gets, and in the `Read` step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.policy import Policy

TextFormat = Literal["lines", "file"]
DuplicateIds = Literal["keep-first", "reject"]
Engine = Literal["local", "ray"]
DEFAULT_SHARD_SIZE = 10_000  # records per output shard
DEFAULT_READ_BATCH = 64  # records per Arrow table read (and the finest checkpoint)


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str = "id"
    text_format: TextFormat = "lines"
    stratify: str | None = None  # the field whose values get their own cut points
    batch_size: int = DEFAULT_READ_BATCH


@dataclass(frozen=True)
class SelectOptions:
    inputs: tuple[str, ...]
    out: Path
    policy: Policy
    read: ReadOptions = field(default_factory=ReadOptions)
    model: str | None = None  # tier name; default: select.model, else the first tier
    reference: str | None = None  # second tier for a difference rule
    weights: Literal["tier", "file", "f16", "f32"] | None = None  # None: select.weights
    engine: Engine = "local"
    resume: bool = False
    order_by_score: bool = False
    from_scores: Path | None = None
    config: Path | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    duplicate_ids: DuplicateIds = "keep-first"
    checkpoint_records: int | None = None  # None: select.checkpoint_records of the config
    checkpoint_seconds: float | None = None  # None: select.checkpoint_seconds of the config
    progress: bool | None = None  # None: a bar on a TTY, log lines otherwise
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    metrics_textfile: Path | None = None  # Prometheus textfile (node exporter's collector)
    pushgateway: str | None = None  # Prometheus push gateway URL
