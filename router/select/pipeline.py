"""One `router select` run: pass 1 (an engine scores every part), pass 2 (cut points from the
complete score column, then kept/dropped shards from the scores and a re-read of the input),
then scores.parquet, rejected.jsonl, stats.json, report.html and the reconciled counts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from router.backends.base import Backend
from router.config import load_settings
from router.errors import InputError
from router.policy import DifferenceRule, policy_to_dict
from router.select.decide import check_signal, cut_points, decide, decision_column, priorities
from router.select.emit import Emitter
from router.select.metrics_export import SelectMetrics
from router.select.options import SelectOptions
from router.select.plan import ScorePlan, default_model
from router.select.progress import Progress
from router.select.readers import Source, detect, expand_inputs
from router.select.report import render_report
from router.select.steps import Batch, Stats
from router.select.workdir import WorkDir, _write_json_atomic

Log = Callable[[str], None]
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def make_plan(opts: SelectOptions) -> ScorePlan:
    settings = load_settings(opts.config)
    model = opts.model or default_model(settings)
    settings.tier(model)  # a clear error for an unknown tier
    reference = opts.reference
    if reference is None and isinstance(opts.policy.rule, DifferenceRule):
        reference = opts.policy.rule.reference
    if reference is not None:
        settings.tier(reference)
    return ScorePlan(model=model, reference=reference,
                     config=str(settings.source) if settings.source else None,
                     signal=opts.policy.token_signal, batch_size=settings.select.batch_size,
                     text_field=opts.text_field, id_field=opts.id_field,
                     text_format=opts.text_format, stratify=opts.stratify,
                     read_batch=opts.read_batch)


def _fingerprint(sources: list[Source], plan: ScorePlan, opts: SelectOptions) -> dict[str, Any]:
    return {"inputs": [[s.path, Path(s.path).stat().st_size] for s in sources],
            "model": plan.model, "reference": plan.reference, "signal": plan.signal.key,
            "text_field": plan.text_field, "id_field": plan.id_field,
            "text_format": plan.text_format, "stratify": plan.stratify,
            "shard_size": opts.shard_size}


def _total_records(sources: list[Source], opts: SelectOptions) -> int | None:
    """A quick count for the progress bar (line counts; Parquet metadata)."""
    total = 0
    for s in sources:
        if s.format == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(s.path).metadata.num_rows
        elif s.format == "text" and opts.text_format == "file":
            total += 1
        elif s.compression:
            return None
        else:
            with open(s.path, "rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return total


def run_select(opts: SelectOptions, *, backends: Mapping[str, Backend] | None = None,
               log: Log = print) -> dict[str, Any]:
    """Run `router select`; returns the stats written to DIR/stats.json."""
    t0 = time.perf_counter()
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    work = WorkDir(out)
    opts.policy.for_selection()
    engine_stats = Stats()
    exporter = SelectMetrics(textfile=opts.metrics_textfile, pushgateway=opts.pushgateway)
    if opts.from_scores is not None:
        plan = None
        sources = _parts_from_scores(opts, work)
    else:
        plan = make_plan(opts)
        sources = expand_inputs(opts.inputs)
        work.start(_fingerprint(sources, plan, opts), resume=opts.resume)
        done_before = len(work.markers())
        progress = Progress(_total_records(sources, opts), tty=opts.progress,
                            on_update=exporter.progress)
        if done_before:
            log(f"resuming: {done_before} scored part(s) are kept, not rescored")
        if opts.engine == "ray":
            from router.select.engines.ray_data import score_ray

            engine_stats = score_ray(sources, work, plan, shard_size=opts.shard_size,
                                     progress=progress, address=opts.ray_address,
                                     num_cpus=opts.ray_num_cpus)
        else:
            from router.select.engines.local import score_local

            engine_stats = score_local(sources, work, plan, shard_size=opts.shard_size,
                                       progress=progress, backends=backends)
        progress.close()
    stats = finalize(opts, sources, work, plan=plan, engine_stats=engine_stats,
                     seconds=time.perf_counter() - t0, log=log)
    work.remove()
    exporter.finish(stats["counts"], time.perf_counter() - t0)
    return stats


def _parts_from_scores(opts: SelectOptions, work: WorkDir) -> list[Source]:
    """Split an earlier scores.parquet back into parts (no rescoring) and list its inputs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    if work.root.exists():
        work.remove()
    work.start({"from_scores": str(path)}, resume=False)
    drop = [c for c in ("decision", "priority", "weight") if c in names]
    files: dict[int, str] = {}
    pending: list[Batch] = []
    key: tuple[int, int] | None = None
    for rb in pf.iter_batches():
        table = pa.Table.from_batches([rb]).drop_columns(drop)
        fi = np.asarray(table.column("file_index").to_numpy())
        part = np.asarray(table.column("seq").to_numpy()) // opts.shard_size
        for f, p in sorted(set(zip(fi.tolist(), part.tolist(), strict=True))):
            sub = table.filter(pa.array((fi == f) & (part == p)))
            files.setdefault(f, sub.column("file")[0].as_py())
            if key is not None and key != (f, p):
                work.write_part(key[0], key[1], pa.concat_tables(pending), {})
                pending = []
            key = (f, p)
            pending.append(sub)
    if key is not None and pending:
        work.write_part(key[0], key[1], pa.concat_tables(pending), {})
    sources = []
    for index, file in sorted(files.items()):
        fmt = detect(file)
        if fmt is None:
            raise InputError(f"{path}: unknown format of input {file}")
        sources.append(Source(path=file, index=index, format=fmt[0], compression=fmt[1]))
    return sources


def finalize(opts: SelectOptions, sources: list[Source], work: WorkDir, *,
             plan: ScorePlan | None, engine_stats: Stats, seconds: float,
             log: Log) -> dict[str, Any]:
    """Pass 2: cut points from every score, then decisions, shards and reports."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    policy = opts.policy
    parts = list(work.iter_parts())
    col = decision_column(policy)
    # -- the complete decision column (scores only, never text) --------------------------------
    values_l: list[np.ndarray[Any, Any]] = []
    strata_l: list[Any] = []
    models: set[str] = set()
    for _, _, path in parts:
        cols = [c for c in (col, "reject", "stratum", "model", "scorer_version")
                if c in pq.read_schema(path).names]
        if col not in cols:
            check_signal(policy, pq.read_schema(path).names, str(opts.from_scores or path))
        t = pq.read_table(path, columns=cols)
        ok = pc.is_null(t.column("reject"))
        v = t.filter(ok)
        values_l.append(np.asarray(v.column(col).to_numpy(zero_copy_only=False), np.float64))
        if opts.stratify:
            strata_l.extend(v.column("stratum").to_pylist())
        models.update(f"{m} (scorer {s})" for m, s in zip(
            v.column("model").to_pylist(), v.column("scorer_version").to_pylist(), strict=True))
    if len(models) > 1:
        raise InputError(f"scores from different models cannot be cut together: "
                         f"{', '.join(sorted(models))}")
    values = np.concatenate(values_l) if values_l else np.zeros(0)
    strata = strata_l if opts.stratify else None
    if opts.stratify and opts.from_scores is not None and not any(s is not None for s in strata_l):
        raise InputError(f"{opts.from_scores}: scored without --stratify; rescore to stratify")
    cuts = cut_points(policy, values, strata)
    kept_mask = decide(values, cuts, strata)
    rank, weight = priorities(values[kept_mask])
    prio_all = np.zeros(len(values), np.int64)
    prio_all[kept_mask] = rank
    weight_all = np.full(len(values), np.nan)
    weight_all[kept_mask] = weight

    # -- decisions per part, outputs --------------------------------------------------------
    scores_tmp = opts.out / "scores.parquet.tmp"
    rejected_tmp = opts.out / "rejected.jsonl.tmp"
    writer: Any = None
    counts = {"input": 0, "kept": 0, "dropped": 0, "rejected": 0}
    written = {"kept": 0, "dropped": 0}
    reasons: dict[str, int] = {}
    tokens = 0
    model = reference_model = scorer_version = None
    emitters = {s.index: Emitter(s, opts, plan_reader_args(opts)) for s in sources
                if Path(s.path).exists()}
    missing = [s.path for s in sources if s.index not in emitters]
    for path_ in missing:
        log(f"warning: input {path_} is gone: its kept/dropped shards are not written")
    offset = 0
    with open(rejected_tmp, "wb") as rej:
        for fi, part, path in parts:
            t = pq.read_table(path)
            n = t.num_rows
            ok = np.asarray(pc.is_null(t.column("reject")).to_numpy(zero_copy_only=False))
            n_ok = int(ok.sum())
            decision = np.full(n, "rejected", dtype=object)
            km = kept_mask[offset:offset + n_ok]
            decision[np.flatnonzero(ok)[km]] = "kept"
            decision[np.flatnonzero(ok)[~km]] = "dropped"
            prio = np.zeros(n, np.int64)
            prio[ok] = prio_all[offset:offset + n_ok]
            wt = np.full(n, np.nan)
            wt[ok] = weight_all[offset:offset + n_ok]
            offset += n_ok
            is_kept = decision == "kept"
            t = t.append_column("decision", pa.array(decision.tolist(), pa.string()))
            t = t.append_column("priority", pa.array(prio, pa.int64(), mask=~is_kept))
            t = t.append_column("weight", pa.array(wt, pa.float64(), mask=~is_kept))
            counts["input"] += n
            counts["kept"] += int(is_kept.sum())
            counts["dropped"] += int((decision == "dropped").sum())
            counts["rejected"] += n - n_ok
            tokens += int(pc.sum(t.column("tokens")).as_py() or 0)
            if n_ok and model is None:
                first = t.filter(pa.array(ok))
                model = first.column("model")[0].as_py()
                scorer_version = first.column("scorer_version")[0].as_py()
                if "ref_model" in t.column_names:
                    reference_model = first.column("ref_model")[0].as_py()
            bad = t.filter(pa.array(~ok)).select(["file", "line", "reject", "raw"])
            for row in bad.to_pylist():
                reasons[_reason_kind(row["reject"])] = reasons.get(
                    _reason_kind(row["reject"]), 0) + 1
                rej.write(json.dumps({"file": row["file"], "line": row["line"],
                                      "reason": row["reject"], "raw": row["raw"]},
                                     ensure_ascii=False).encode() + b"\n")
            if writer is None:
                writer = pq.ParquetWriter(scores_tmp, t.schema)
            writer.write_table(t.cast(writer.schema))
            if fi in emitters:
                k, d = emitters[fi].emit_part(part, t, col, opts.shard_size)
                written["kept"] += k
                written["dropped"] += d
    for em in emitters.values():
        em.close()
    if writer is not None:
        writer.close()
        scores_tmp.replace(opts.out / "scores.parquet")
    else:
        scores_tmp.unlink(missing_ok=True)
    rejected_tmp.replace(opts.out / "rejected.jsonl")
    (opts.out / "kept").mkdir(exist_ok=True)
    (opts.out / "dropped").mkdir(exist_ok=True)

    # -- reconcile ---------------------------------------------------------------------------
    balanced = counts["input"] == counts["kept"] + counts["dropped"] + counts["rejected"]
    shards_ok = missing or (written["kept"] == counts["kept"]
                            and written["dropped"] == counts["dropped"])
    if not balanced or not shards_ok:
        raise InputError(f"counts do not reconcile: {counts}, shards written {written} "
                         "(did an input change since it was scored?)")
    finite = values[np.isfinite(values)]
    score_seconds = engine_stats.get("scoring_seconds", 0.0)
    stats: dict[str, Any] = {
        "counts": counts,
        "reconciled": True,
        "reject_reasons": reasons,
        "signal": col,
        "policy": policy_to_dict(policy),
        "cut_points": cuts.as_json(),
        "quantiles": {f"p{round(q * 100)}": float(np.quantile(finite, q)) for q in QUANTILES}
        if finite.size else {},
        "model": model or (plan.model if plan else None),
        "reference_model": reference_model,
        "scorer_version": scorer_version,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "scoring_seconds": round(score_seconds, 3),
        "tokens_per_second": round(engine_stats.get("tokens_scored", 0) / seconds, 1)
        if seconds > 0 and engine_stats.get("tokens_scored") else None,
        "documents_per_second": round(engine_stats.get("documents_scored", 0) / seconds, 2)
        if seconds > 0 and engine_stats.get("documents_scored") else None,
        "engine": opts.engine if opts.from_scores is None else "from-scores",
        "from_scores": str(opts.from_scores) if opts.from_scores else None,
        "inputs": [s.path for s in sources],
        "stratify": opts.stratify,
        "order": "score" if opts.order_by_score else "input",
        "pipeline_stats": dict(engine_stats),
    }
    _write_json_atomic(opts.out / "stats.json", stats)
    report = opts.out / "report.html.tmp"
    report.write_text(render_report(stats, values), encoding="utf-8")
    report.replace(opts.out / "report.html")
    log(f"input {counts['input']} = kept {counts['kept']} + dropped {counts['dropped']} + "
        f"rejected {counts['rejected']}  (reconciled)")
    cut_desc = ", ".join(f"{k}: [{_fmt(v[0], '-inf')}, {_fmt(v[1], 'inf')}]"
                         for k, v in cuts.as_json().items())
    log(f"signal {col}, cut points {cut_desc}; model {stats['model']}; "
        f"{tokens} tokens in {seconds:.1f}s")
    log(f"outputs in {opts.out}: kept/ dropped/ scores.parquet rejected.jsonl stats.json "
        "report.html")
    return stats


def _fmt(x: float | None, inf: str) -> str:
    return inf if x is None else f"{x:.4f}"


def _reason_kind(reason: str | None) -> str:
    """'bad JSON: unexpected character: line 1 column 2' -> 'bad JSON'."""
    if not reason:
        return "unknown"
    return reason.split(":")[0].split(" (")[0]


def plan_reader_args(opts: SelectOptions) -> dict[str, Any]:
    return {"text_field": opts.text_field, "id_field": opts.id_field,
            "text_format": opts.text_format, "stratify": opts.stratify,
            "batch_size": opts.read_batch}
