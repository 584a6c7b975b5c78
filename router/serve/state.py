"""What the app holds for its lifetime, and the `Annotated` dependency that hands it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import REGISTRY, CollectorRegistry

from router.backends.base import Backend
from router.config import Settings
from router.serve.cascade import Cascade
from router.serve.decision_log import DecisionLog
from router.serve.shadow import ShadowSampler


@dataclass
class ServeState:
    settings: Settings
    backends: dict[str, Backend]
    cascade: Cascade
    owns_backends: bool
    decision_log: DecisionLog | None = None
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    shadow: ShadowSampler | None = None
    metrics_registry: CollectorRegistry = REGISTRY  # a multiprocess one with N workers


async def get_state(request: Request) -> ServeState:  # async: FastAPI runs sync deps in threads
    state: ServeState = request.app.state.serve
    return state


StateDep = Annotated[ServeState, Depends(get_state)]
