"""A selection policy against labelled documents: precision and recall of the kept set.

Cut points come from the complete score column (as `router select` computes them); only the
labelled documents are measured. AUROC of every score column vs the labels rides along.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from router.errors import InputError
from router.evaluate import metrics_math as mm
from router.policy import Policy
from router.scoring import SIGNALS

GOOD_KEYS = ("good", "label", "keep", "correct")


def load_doc_labels(path: Path) -> dict[str, tuple[bool, str]]:
    """{"id": ..., "good": true|false} a line (also label/keep/correct) -> {id: (good, where)}."""
    from router.evaluate.data import load_labels

    return load_labels(path, GOOD_KEYS)


def evaluate_selection(scores_path: Path, labels_path: Path, policy: Policy) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from router.select.decide import check_signal, cut_points, decide

    try:
        table = pq.read_table(scores_path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{scores_path}: cannot read Parquet scores: {exc}") from None
    if table.num_rows == 0:
        raise InputError(f"{scores_path}: empty file: no scored rows")
    if "id" not in table.column_names:
        raise InputError(f"{scores_path}: no 'id' column")
    col = check_signal(policy.for_selection(), table.column_names, str(scores_path))
    ids = [str(x) for x in table.column("id").to_pylist()]
    values = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
    kept_all = decide(values, cut_points(policy, values))
    labels = load_doc_labels(labels_path)
    index = {rid: i for i, rid in enumerate(ids)}
    for rid, (_, where) in labels.items():
        if rid not in index:
            raise InputError(f"{where}: id {rid!r} is not in {scores_path}")
    rows = np.array([index[rid] for rid in labels], dtype=np.int64)
    good = np.array([g for g, _ in labels.values()], dtype=bool)
    kept = kept_all[rows]
    precision, recall, f1 = mm.precision_recall(kept, good)
    signals = {}
    for name in table.column_names:
        base = name.split("_q")[0]
        if base in SIGNALS or name == "difference":
            v = np.asarray(table.column(name).to_numpy(zero_copy_only=False), np.float64)[rows]
            signals[name] = mm.auroc(v, good)

    def j(x: float) -> float | None:
        return None if not np.isfinite(x) else round(float(x), 6)

    return {
        "scores": str(scores_path), "labels": str(labels_path), "policy": policy.name,
        "signal": col, "rule": policy.rule.kind, "n_scored": len(ids),
        "kept_fraction_all": j(float(kept_all.mean())), "n_labelled": len(rows),
        "n_good": int(good.sum()), "kept_labelled": int(kept.sum()),
        "precision": j(precision), "recall": j(recall), "f1": j(f1),
        "base_precision": j(float(good.mean())),
        "auroc": {k: j(v) for k, v in signals.items()},
    }


def format_selection(r: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    lines = [
        f"selection policy {r['policy']} ({r['rule']} on {r['signal']}): keeps "
        f"{f(r['kept_fraction_all'])} of {r['n_scored']} scored documents",
        f"  labelled: {r['n_labelled']} ({r['n_good']} good), kept {r['kept_labelled']}",
        f"  precision {f(r['precision'])} (keeping everything: {f(r['base_precision'])})   "
        f"recall {f(r['recall'])}   F1 {f(r['f1'])}",
        "  AUROC of each signal vs the labels: "
        + ", ".join(f"{k} {f(v)}" for k, v in sorted(r["auroc"].items(),
                                                      key=lambda kv: -(kv[1] or 0))),
    ]
    return "\n".join(lines)
