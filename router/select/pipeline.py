"""One `router select` run, as two lists of steps over Arrow tables:

    pass 1 (an engine runs it per task):  Read -> Score -> Checkpoint
    pass 2 (this process):                LoadScores -> DuplicateIds -> CutPoints -> Decide
                                          -> WriteScores -> WriteShards -> Report

Pass 1 scores every record once and saves the scores in the work dir (resumable); pass 2 takes
cut points from the complete score column and writes every output from the scores and a re-read
of the input (never re-scoring). `--from-scores` replaces pass 1 with an earlier scores.parquet.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router.backends.base import Backend
from router.config import Settings, load_settings
from router.errors import InputError
from router.policy import DifferenceRule
from router.select.cut import CutPoints, Decide
from router.select.decide import check_signal, decision_column
from router.select.dedup import DuplicateIds
from router.select.emit import WriteShards
from router.select.engines import open_engine
from router.select.metrics_export import SelectMetrics
from router.select.options import SelectOptions
from router.select.plan import (
    ScorePlan,
    default_model,
    embedded_scoring,
    scoring_kernels,
    scoring_setup,
)
from router.select.progress import Progress
from router.select.sources import MARK_EVERY, Source, SourceIndex, expand_inputs, index_source
from router.select.sources import source_of as _source_of
from router.select.steps import Stats, Step, pipe
from router.select.summary import Report
from router.select.tasks import gaps, plan_tasks
from router.select.workdir import LoadScores, WorkDir
from router.select.writers import WriteScores
from router.weights import Weights

Log = Callable[[str], None]


def make_plan(opts: SelectOptions, settings: Settings,
              backends: Mapping[str, Backend] | None = None) -> ScorePlan:
    model = opts.model or default_model(settings)
    settings.tier(model)  # a clear error for an unknown tier
    if opts.weights is not None:
        settings = settings.model_copy(update={
            "select": settings.select.model_copy(update={"weights": opts.weights})})
    reference = opts.reference
    if reference is None and isinstance(opts.policy.rule, DifferenceRule):
        reference = opts.policy.rule.reference
    if reference is not None:
        settings.tier(reference)
    every = opts.checkpoint_records or settings.select.checkpoint_records
    read = dataclasses.replace(opts.read, batch_size=min(opts.read.batch_size, every))
    return ScorePlan(settings=settings, model=model, reference=reference,
                     signal=opts.policy.token_signal, read=read, out=opts.out,
                     checkpoint_records=every,
                     checkpoint_seconds=opts.checkpoint_seconds
                     or settings.select.checkpoint_seconds,
                     backends=backends)


def _fingerprint(sources: list[Source], plan: ScorePlan) -> dict[str, Any]:
    r = plan.read
    return {"inputs": [[s.path, Path(s.path).stat().st_size] for s in sources],
            "model": plan.model, "reference": plan.reference, "signal": plan.signal.key,
            "text_field": r.text_field, "id_field": r.id_field, "text_format": r.text_format,
            "stratify": r.stratify,
            "kernels": [scoring_kernels(plan.settings, plan.model),
                        scoring_kernels(plan.settings, plan.reference)],
            "scoring": [scoring_setup(plan.settings, plan.model),
                        scoring_setup(plan.settings, plan.reference)]}


def task_records(todo: int, workers: int) -> int:
    """Records per task: one task per unscored range locally; about four tasks per worker
    otherwise, whole index marks (so a task starts at a byte offset). Example: (3000, 2) -> 384."""
    if workers <= 1:
        return max(todo, 1)
    per = -(-todo // (4 * workers))
    return max(MARK_EVERY, -(-per // MARK_EVERY) * MARK_EVERY)


def run_select(opts: SelectOptions, *, backends: Mapping[str, Backend] | None = None,
               log: Log = print) -> dict[str, Any]:
    """Run `router select`; returns the stats written to DIR/stats.json."""
    started = time.perf_counter()
    opts.out.mkdir(parents=True, exist_ok=True)
    work = WorkDir(opts.out)
    opts.policy.for_selection()
    exporter = SelectMetrics(textfile=opts.metrics_textfile, pushgateway=opts.pushgateway)
    timing: dict[str, Any] = {"engine": "from-scores", "started": started}
    if opts.from_scores is not None:
        sources = _chunks_from_scores(opts, work)
        model = weights = None
    else:
        plan = make_plan(opts, load_settings(opts.config), backends)
        model = plan.model
        scorer = embedded_scoring(plan.settings, plan.model)
        weights = scorer.weights if scorer else None
        sources = expand_inputs(opts.inputs)
        work.start(_fingerprint(sources, plan), resume=opts.resume)
        timing.update(_score(opts, plan, sources, work, exporter, log))
    stats = _decide(opts, sources, work, model=model, weights=weights, timing=timing, log=log)
    work.remove()
    exporter.finish(stats["counts"], time.perf_counter() - started)
    return stats


def _score(opts: SelectOptions, plan: ScorePlan, sources: list[Source], work: WorkDir,
           exporter: SelectMetrics, log: Log) -> dict[str, Any]:
    """Pass 1: every unscored range of every input, through the engine."""
    whole = plan.read.text_format == "file"
    indexes = {s.index: index_source(s, whole_file=whole and s.format == "text")
               for s in sources}
    done = work.done_ranges()
    todo = sum(b - a for s in sources for a, b in gaps(indexes[s.index].count,
                                                       done.get(s.index, ())))
    total = sum(i.count for i in indexes.values())
    if done:
        log(f"resuming: {total - todo} of {total} records are scored already, not rescored")
    plan.prepare_weights()
    engine = open_engine(opts.engine, address=opts.ray_address, num_cpus=opts.ray_num_cpus)
    try:
        tasks = plan_tasks(sources, indexes, done,
                           max_records=task_records(todo, engine.workers))
        progress = Progress(todo, tty=opts.progress, on_update=exporter.progress)
        step_stats = engine.score(plan, tasks, progress)
        progress.close()
    finally:
        engine.close()
    _check_scored(sources, indexes, work)
    return {"engine": opts.engine, "workers": engine.workers, "step_stats": step_stats}


def _check_scored(sources: list[Source], indexes: Mapping[int, SourceIndex],
                  work: WorkDir) -> None:
    done = work.done_ranges()
    for s in sources:
        left = gaps(indexes[s.index].count, done.get(s.index, ()))
        if left:
            raise InputError(f"{s.path}: records {left[0][0] + 1}..{left[0][1]} were not scored "
                             "(did the input change while it was read?)")


def decide_steps(opts: SelectOptions, sources: list[Source], work: WorkDir, *,
                 model: str | None, timing: dict[str, Any], log: Log,
                 weights: Weights | None = None) -> list[Step]:
    """Pass 2: the scores in the work dir -> every output."""
    stratify = opts.read.stratify is not None
    where = str(opts.from_scores) if opts.from_scores else f"{opts.out}: the scores of this run"
    steps: list[Step] = [
        LoadScores(), DuplicateIds(opts.duplicate_ids),
        CutPoints(opts.policy, stratify=stratify, where=where),
        Decide(opts.policy, stratify=stratify), WriteScores(opts.out),
        WriteShards(sources, opts.read, opts.out, column=decision_column(opts.policy),
                    shard_size=opts.shard_size, order_by_score=opts.order_by_score, log=log)]
    run = {"model": model, "weights": weights, "inputs": [s.path for s in sources],
           "stratify": opts.read.stratify, "order": "score" if opts.order_by_score else "input",
           "from_scores": str(opts.from_scores) if opts.from_scores else None}
    return [*steps, Report(opts.out, opts.policy, upstream=steps, scored=work.totals(),
                           run_info=run, timing=timing, log=log)]


def _decide(opts: SelectOptions, sources: list[Source], work: WorkDir, *, model: str | None,
            weights: Weights | None, timing: dict[str, Any], log: Log) -> dict[str, Any]:
    steps = decide_steps(opts, sources, work, model=model, weights=weights, timing=timing,
                         log=log)
    for _ in pipe(steps, [work.chunks_table()]):
        pass
    report = steps[-1]
    assert isinstance(report, Report)
    return report.result


def _chunks_from_scores(opts: SelectOptions, work: WorkDir) -> list[Source]:
    """Save an earlier scores.parquet as this run's chunks (no rescoring); list its inputs."""
    assert opts.from_scores is not None
    path = opts.from_scores
    if path.is_dir():
        path = path / "scores.parquet"
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{path}: cannot read scores: {exc}") from None
    names = pf.schema_arrow.names
    for col in ("file", "file_index", "seq", "reject"):
        if col not in names:
            raise InputError(f"{path}: not a router select scores file (no column {col!r})")
    check_signal(opts.policy, names, str(path))
    work.remove()
    work.start({"from_scores": str(path)}, resume=False)
    drop: list[str] = [c for c in ("decision", "priority", "weight") if c in names]
    files: dict[int, str] = {}
    for rb in pf.iter_batches():
        table = pa.Table.from_batches([rb]).drop_columns(drop)
        fi = np.asarray(table.column("file_index").to_numpy())
        for f in dict.fromkeys(fi.tolist()):
            sub = table.filter(pa.array(fi == f))
            files.setdefault(f, str(sub.column("file")[0].as_py()))
            work.write_chunk(sub.replace_schema_metadata(None))
    return [_source_of(file, index) for index, file in sorted(files.items())]


__all__ = ["Stats", "decide_steps", "make_plan", "run_select"]
