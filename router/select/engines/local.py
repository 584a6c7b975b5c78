"""The local engine: this process runs pass 1's steps (`ScorePlan.steps`: Read -> Score ->
Checkpoint) over every task, in order."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.compute as pc

from router.select.plan import ScorePlan
from router.select.progress import Progress
from router.select.steps import Stats, pipe, stats_of
from router.select.tasks import Task, tasks_table


class LocalEngine:
    workers = 1

    def score(self, plan: ScorePlan, tasks: Sequence[Task], progress: Progress) -> Stats:
        steps = plan.steps()
        try:
            for table in pipe(steps, [tasks_table(tasks)]):
                progress.update(table.num_rows, int(pc.sum(table.column("tokens")).as_py() or 0))
        finally:
            for step in steps:
                step.close()
        return stats_of(steps)

    def close(self) -> None:
        """Nothing to release: the steps are closed after each `score`."""
