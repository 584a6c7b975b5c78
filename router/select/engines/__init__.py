"""Engines only schedule: each runs pass 1's list of steps over the task list (the local one
in this process, the Ray one in a pool of actors); pass 2 is the same for both."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from router.select.plan import ScorePlan
from router.select.progress import Progress
from router.select.steps import Stats
from router.select.tasks import Task


class Engine(Protocol):
    workers: int

    def score(self, plan: ScorePlan, tasks: Sequence[Task], progress: Progress) -> Stats:
        """Run pass 1's steps over `tasks`; the merged stats of every worker's steps."""
        ...

    def close(self) -> None: ...


def open_engine(kind: str, *, address: str | None = None, num_cpus: int | None = None) -> Engine:
    if kind == "ray":
        from router.select.engines.ray_actors import RayEngine

        return RayEngine(address=address, num_cpus=num_cpus)
    from router.select.engines.local import LocalEngine

    return LocalEngine()
