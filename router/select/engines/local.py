"""The local engine: one process streams every input through reader -> scorer and writes one
score part per `shard_size` records, marking each part done. Finished parts are skipped on
--resume; a killed run redoes at most the part it was in."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from router.backends.base import Backend
from router.select.plan import ScorePlan
from router.select.progress import Progress
from router.select.readers import Source
from router.select.steps import Batch, Stats
from router.select.workdir import WorkDir


def _info(table: Batch, seconds: float) -> dict[str, Any]:
    import pyarrow.compute as pc

    return {"records": table.num_rows,
            "rejected": int(pc.sum(pc.is_valid(table.column("reject"))).as_py() or 0),
            "tokens": int(pc.sum(table.column("tokens")).as_py() or 0),
            "seconds": round(seconds, 3)}


def score_local(sources: list[Source], work: WorkDir, plan: ScorePlan, *, shard_size: int,
                progress: Progress, backends: Mapping[str, Backend] | None = None) -> Stats:
    import pyarrow as pa
    import pyarrow.compute as pc

    reader = plan.build_reader()
    scorer = plan.build_scorer(backends)
    try:
        for src in sources:
            if work.is_complete(src.index):
                continue
            part = work.finished_parts(src.index)
            pending: list[Batch] = []
            t0 = time.perf_counter()

            def flush(p: int, index: int = src.index) -> None:
                nonlocal pending, t0
                table = pa.concat_tables(pending)
                work.write_part(index, p, table, _info(table, time.perf_counter() - t0))
                pending, t0 = [], time.perf_counter()

            for table in scorer.run(reader.read(src, skip=part * shard_size)):
                parts = np.asarray(table.column("seq").to_numpy()) // shard_size
                for p in np.unique(parts):
                    if p != part:
                        if pending:
                            flush(part)
                        part = int(p)
                    pending.append(table.filter(pa.array(parts == p)))
                progress.update(table.num_rows, int(pc.sum(table.column("tokens")).as_py() or 0))
            if pending:
                flush(part)
            work.mark_complete(src.index, work.finished_parts(src.index))
    finally:
        scorer.close()
    return reader.stats + scorer.stats
