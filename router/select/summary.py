"""The `Report` step, the last of pass 2: counts what comes through, checks that every record
is accounted for (input = kept + dropped + rejected), and writes stats.json, report.html and
timing.json.

stats.json holds only what the input, the options and the model determine, so the same input
gives the same bytes whatever the engine, the number of workers or the kills and resumes on
the way; wall-clock figures (seconds, tokens per second, the engine) go to timing.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router.errors import InputError
from router.policy import Policy, policy_to_dict
from router.select.cut import valid_mask
from router.select.decide import decision_column
from router.select.report import render_report
from router.select.steps import Stats, Step, stats_of
from router.select.workdir import write_json_atomic

Log = Callable[[str], None]
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def reason_kind(reason: str | None) -> str:
    """'bad JSON: unexpected character: line 1 column 2' -> 'bad JSON';
    "duplicate id 'a' (first at f:3)" -> 'duplicate id'."""
    if not reason:
        return "unknown"
    kind = reason.split(":")[0].split(" (")[0]
    return "duplicate id" if kind.startswith("duplicate id ") else kind


def quantiles(values: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
    """Example: quantiles(np.arange(101.0))['p50'] -> 50.0 (NaN ignored; {} when empty)."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {}
    return {f"p{round(q * 100)}": float(np.quantile(finite, q)) for q in QUANTILES}


@dataclass(eq=False)
class Report(Step):
    name = "report"
    out: Path
    policy: Policy
    upstream: Sequence[Step]  # the steps before it: their stats and summaries
    scored: Stats  # pass 1's counts, from the work dir
    run_info: dict[str, Any]  # inputs, model, stratify, order, from_scores
    timing: dict[str, Any]  # the engine, its workers, its step stats, when the run started
    log: Log
    result: dict[str, Any] = field(default_factory=dict, init=False)  # stats.json, at the end

    def run(self, tables: Iterable[pa.Table]) -> Iterator[pa.Table]:
        col = decision_column(self.policy)
        counts = {"input": 0, "kept": 0, "dropped": 0, "rejected": 0}
        reasons: dict[str, int] = {}
        values: list[np.ndarray[Any, Any]] = []
        tokens = 0
        first: dict[str, Any] = {}
        for t in tables:
            dec = t.column("decision").to_pylist()
            counts["input"] += t.num_rows
            for k in ("kept", "dropped", "rejected"):
                counts[k] += dec.count(k)
            for r in t.column("reject").drop_null().to_pylist():
                reasons[reason_kind(r)] = reasons.get(reason_kind(r), 0) + 1
            ok = valid_mask(t)
            values.append(np.asarray(t.column(col).to_numpy(zero_copy_only=False),
                                     np.float64)[ok])
            tokens += int(pc.sum(t.column("tokens")).as_py() or 0)
            if not first and ok.any():
                first = t.filter(pa.array(ok)).slice(0, 1).to_pylist()[0]
            yield t
        if counts["input"] != counts["kept"] + counts["dropped"] + counts["rejected"]:
            raise InputError(f"counts do not reconcile: {counts}")
        column = np.concatenate(values) if values else np.zeros(0)
        stats = self.result = self._stats(counts, reasons, column, tokens, first)
        write_json_atomic(self.out / "stats.json", stats)
        timing = self._timing()
        write_json_atomic(self.out / "timing.json", timing)
        tmp = self.out / "report.html.tmp"
        tmp.write_text(render_report(stats, column, timing), encoding="utf-8")
        tmp.replace(self.out / "report.html")
        self._log(stats, timing)

    def _stats(self, counts: dict[str, int], reasons: dict[str, int],
               column: np.ndarray[Any, Any], tokens: int, first: dict[str, Any]
               ) -> dict[str, Any]:
        sections: dict[str, Any] = {}
        for step in self.upstream:
            sections.update(step.summary())
        return {
            **self.run_info,
            "counts": counts,
            "reconciled": True,
            "reject_reasons": reasons,
            "policy": policy_to_dict(self.policy),
            "quantiles": quantiles(column),
            "model": first.get("model") or self.run_info.get("model"),
            "reference_model": first.get("ref_model"),
            "scorer_version": first.get("scorer_version"),
            "tokens": tokens,
            **sections,
            "pipeline_stats": dict(self.scored + stats_of(self.upstream)),
        }

    def _timing(self) -> dict[str, Any]:
        seconds = time.perf_counter() - float(self.timing["started"])
        steps: Stats = self.timing.get("step_stats", Stats())
        scored_docs = steps.get("documents_scored", 0.0)
        scored_tokens = steps.get("tokens_scored", 0.0)
        return {"engine": self.timing["engine"], "workers": self.timing.get("workers", 1),
                "seconds": round(seconds, 3),
                "scoring_seconds": round(steps.get("scoring_seconds", 0.0), 3),
                "backend_calls": int(steps.get("backend_calls", 0)),
                "documents_per_second": round(scored_docs / seconds, 2) if scored_docs else None,
                "tokens_per_second": round(scored_tokens / seconds, 1) if scored_tokens else None,
                "pass1_steps": {k: round(v, 3) for k, v in sorted(steps.items())}}

    def _log(self, stats: dict[str, Any], timing: dict[str, Any]) -> None:
        c = stats["counts"]
        self.log(f"input {c['input']} = kept {c['kept']} + dropped {c['dropped']} + "
                 f"rejected {c['rejected']}  (reconciled)")
        dup = stats.get("duplicate_ids", {})
        if dup.get("ids"):
            self.log(f"duplicate ids: {dup['ids']} id(s), {dup['records_rejected']} record(s) "
                     f"rejected ({dup['mode']}), e.g. {', '.join(dup['examples'][:3])}")
        cut_desc = ", ".join(f"{k}: [{_fmt(v[0], '-inf')}, {_fmt(v[1], 'inf')}]"
                             for k, v in stats.get("cut_points", {}).items())
        self.log(f"signal {stats.get('signal')}, cut points {cut_desc}; model {stats['model']}; "
                 f"{stats['tokens']} tokens in {timing['seconds']:.1f}s")
        self.log(f"outputs in {self.out}: kept/ dropped/ scores.parquet rejected.jsonl "
                 "stats.json report.html timing.json")


def _fmt(x: float | None, inf: str) -> str:
    return inf if x is None else f"{x:.4f}"
