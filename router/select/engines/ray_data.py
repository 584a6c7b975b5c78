"""The Ray engine: the same reader and scorer steps on Ray Data.

    from_items(input parts) -> map_batches(read, generator of Arrow tables)
                            -> map_batches(_ScoreActor, actor pool, one model per actor)
                            -> the driver writes score parts as they complete

The driver knows how many records each input holds (a line count), so it writes a part (and
its completion marker, exactly as the local engine does) as soon as all its rows came back;
only the parts in flight are held in memory, and they hold scores, not text. Pass 2 is the
local engine's, so both engines write identical outputs from identical scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from router.select.engines.local import _info
from router.select.plan import ScorePlan
from router.select.progress import Progress
from router.select.readers import Source, record_count
from router.select.steps import Batch, Stats
from router.select.workdir import WorkDir


def _read(batch: Batch, plan: ScorePlan) -> Iterator[Batch]:
    """A Ray task: the input parts named in `batch` -> record tables (a generator)."""
    reader = plan.build_reader()
    for row in batch.to_pylist():
        src = Source(path=row["path"], index=row["index"], format=row["format"],
                     compression=row["compression"])
        yield from reader.read(src, skip=row["skip"])


class _ScoreActor:
    def __init__(self, plan: ScorePlan) -> None:
        self.step = plan.build_scorer()

    def __call__(self, batch: Batch) -> Batch:
        return self.step.score_table(batch)


def score_ray(sources: list[Source], work: WorkDir, plan: ScorePlan, *, shard_size: int,
              progress: Progress, address: str | None = None,
              num_cpus: int | None = None) -> Stats:
    import importlib

    import pyarrow as pa
    import pyarrow.compute as pc

    ray: Any = importlib.import_module("ray")  # optional dependency: cascade-router[ray]
    importlib.import_module("ray.data")
    started = False
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        started = True
    stats = Stats()
    try:
        todo: list[dict[str, Any]] = []
        expected: dict[tuple[int, int], int] = {}
        for src in sources:
            if work.is_complete(src.index):
                continue
            done = work.finished_parts(src.index)
            total = record_count(src, plan.text_format)
            n_parts = -(-total // shard_size)
            for p in range(done, n_parts):
                expected[(src.index, p)] = min(shard_size, total - p * shard_size)
            if n_parts <= done:
                work.mark_complete(src.index, done)
                continue
            todo.append({"path": src.path, "index": src.index, "format": src.format,
                         "compression": src.compression, "skip": done * shard_size})
        if todo:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ds: Any = ray.data.from_items(todo, override_num_blocks=len(todo))
            ds = ds.map_batches(_read, fn_kwargs={"plan": plan}, batch_size=1,
                                batch_format="pyarrow")
            pool = ray.data.ActorPoolStrategy(size=max(1, cpus - 1))
            ds = ds.map_batches(_ScoreActor, fn_constructor_kwargs={"plan": plan},
                                batch_size=plan.read_batch, batch_format="pyarrow",
                                compute=pool, num_cpus=1)
            pending: dict[tuple[int, int], list[Batch]] = {}
            got: dict[tuple[int, int], int] = {}
            for table in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                if table.num_rows == 0:
                    continue
                fi = np.asarray(table.column("file_index").to_numpy())
                part = np.asarray(table.column("seq").to_numpy()) // shard_size
                for f, p in sorted(set(zip(fi.tolist(), part.tolist(), strict=True))):
                    sub = table.filter(pa.array((fi == f) & (part == p)))
                    key = (f, p)
                    pending.setdefault(key, []).append(sub)
                    got[key] = got.get(key, 0) + sub.num_rows
                    if got[key] == expected.get(key, -1):
                        whole = pa.concat_tables(pending.pop(key)).sort_by("seq")
                        work.write_part(f, p, whole, _info(whole, 0.0))
                n = table.num_rows
                toks = int(pc.sum(table.column("tokens")).as_py() or 0)
                valid = int(pc.sum(pc.is_null(table.column("reject"))).as_py() or 0)
                stats = stats + {"records": n, "documents_scored": valid, "tokens_scored": toks}
                progress.update(n, toks)
            if pending:
                missing = ", ".join(f"{f}-{p}" for f, p in sorted(pending))
                raise RuntimeError(f"ray engine: parts {missing} came back incomplete")
            for src in sources:
                if not work.is_complete(src.index):
                    work.mark_complete(src.index, work.finished_parts(src.index))
    finally:
        if started:
            ray.shutdown()
    return stats
