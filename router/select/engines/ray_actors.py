"""The Ray engine: pass 1's steps (`ScorePlan.steps`: Read -> Score -> Checkpoint) in a pool
of Ray actors, one per CPU, each loading the model once and taking one range of an input at a
time. Reading is parallel (each actor reads its own byte range); each actor saves its chunks
into the run's work dir (local disk, or storage every node shares), so a kill loses at most
a checkpoint's worth of work per actor, as locally.

`address` joins an existing cluster (`ray start --head`); otherwise a local Ray is started with
`num_cpus` CPUs (default: all) and stopped at the end.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from router.select.plan import ScorePlan
from router.select.progress import Progress
from router.select.steps import Stats, pipe, stats_of
from router.select.tasks import Task, tasks_table


class _Worker:
    """A Ray actor: one copy of pass 1's steps (one model) for the tasks it is given."""

    def __init__(self, plan: ScorePlan) -> None:
        self.steps = plan.steps()

    def run(self, tasks: pa.Table) -> tuple[int, int]:
        records = tokens = 0
        for table in pipe(self.steps, [tasks]):
            records += table.num_rows
            tokens += int(pc.sum(table.column("tokens")).as_py() or 0)
        return records, tokens

    def finish(self) -> dict[str, float]:
        for step in self.steps:
            step.close()
        return dict(stats_of(self.steps))


class RayEngine:
    def __init__(self, *, address: str | None = None, num_cpus: int | None = None) -> None:
        self.ray: Any = importlib.import_module("ray")  # optional: cascade-router[ray]
        self.started = False
        if not self.ray.is_initialized():
            self.ray.init(address=address, num_cpus=None if address else num_cpus,
                          include_dashboard=False, log_to_driver=False,
                          configure_logging=False)
            self.started = True
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, min(cpus, num_cpus or cpus))

    def score(self, plan: ScorePlan, tasks: Sequence[Task], progress: Progress) -> Stats:
        if not tasks:
            return Stats()
        from ray.util import ActorPool

        worker = self.ray.remote(num_cpus=1)(_Worker)
        one_cpu = dataclasses.replace(plan, threads=1)  # each actor owns one CPU
        actors = [worker.remote(one_cpu) for _ in range(min(self.workers, len(tasks)))]
        try:
            pool = ActorPool(actors)
            for records, tokens in pool.map_unordered(
                    lambda actor, t: actor.run.remote(t), [tasks_table([t]) for t in tasks]):
                progress.update(records, tokens)
            stats = sum((Stats(s) for s in self.ray.get([a.finish.remote() for a in actors])),
                        start=Stats())
        finally:
            for actor in actors:
                self.ray.kill(actor)
        return stats

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
