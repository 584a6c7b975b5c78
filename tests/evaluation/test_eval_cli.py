"""`router eval` on recorded outputs: figures against independent computations; bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_helpers import DATA, brute_auroc, synthetic_recorded

from router.cli import main
from router.evaluate.data import load_recorded
from router.scoring import SignalSpec, TokenLogprobs


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def plain_signal(lp: TokenLogprobs, key: str) -> float:
    """Independent per-answer signal values for the checks below (plain Python)."""
    xs = [float(x) for x in lp.logprobs]
    if not xs:
        return float("nan")
    if key == "mean_logprob":
        return sum(xs) / len(xs)
    if key == "min_logprob":
        return min(xs)
    if key == "sum_logprob":
        return sum(xs)
    raise KeyError(key)


def independent_figures(records: Any, key: str, rate: float) -> dict[str, float]:
    """Quality/PGR/cost at `rate` with plain loops (ties broken by averaging the tie group)."""
    scores = [plain_signal(r.outputs[0].logprobs, key) for r in records]
    scores = [-1e300 if s != s else s for s in scores]
    small = [int(r.outputs[0].correct) for r in records]
    large = [int(r.outputs[-1].correct) for r in records]
    c_s = [r.outputs[0].cost_usd for r in records]
    c_l = [r.outputs[-1].cost_usd for r in records]
    n = len(records)
    k = round(rate * n)
    ranked = sorted(set(scores))
    taken = 0
    gain = cost = 0.0
    for s in ranked:  # least confident first, a whole tie group or the fraction needed
        group = [i for i in range(n) if scores[i] == s]
        take = min(len(group), k - taken)
        if take <= 0:
            break
        gain += take / len(group) * sum(large[i] - small[i] for i in group)
        cost += take / len(group) * sum(c_l[i] for i in group)
        taken += take
    p_s, p_l = sum(small) / n, sum(large) / n
    q = p_s + gain / n
    return {"auroc": brute_auroc(scores, [bool(x) for x in small]), "quality": q,
            "pgr": (q - p_s) / (p_l - p_s), "cost": sum(c_s) / n + cost / n}


@pytest.mark.parametrize("source", ["synthetic", "builtin"])
def test_figures_match_independent_computation(source: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    recorded = (synthetic_recorded(tmp_path / "rec.jsonl") if source == "synthetic"
                else DATA / "builtin_outputs.jsonl")
    code, out, _ = run_cli(["eval", "--recorded", str(recorded), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 0
    assert "AUROC" in out and "oracle (ceiling)" in out
    report = json.loads((tmp_path / "o" / "eval.json").read_text())
    records = load_recorded(recorded)
    assert report["n"] == len(records)
    for key in ("mean_logprob", "min_logprob", "sum_logprob"):
        sig = report["signals"][key]
        for point in sig["points"]:
            ref = independent_figures(records, key, point["rate"])
            assert point["quality"] == pytest.approx(ref["quality"], abs=1e-6)
            if np.isfinite(ref["pgr"]):
                assert point["pgr"] == pytest.approx(ref["pgr"], abs=1e-5)
            assert point["cost_per_prompt"] == pytest.approx(ref["cost"], rel=1e-5)
        assert sig["auroc"] == pytest.approx(ref["auroc"], abs=1e-6)
    # oracle >= every signal >= ... and random is the straight line
    b = report["baselines"]
    for sig in report["signals"].values():
        assert sig["area"] <= b["oracle"]["area"] + 1e-9
    html = (tmp_path / "o" / "plot.html").read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "polyline" in html
    # the outputs are re-written and give the same figures again
    code, _, _ = run_cli(["eval", "--recorded", str(tmp_path / "o" / "outputs.jsonl"),
                          "--out", str(tmp_path / "o2")], capsys)
    assert code == 0
    again = json.loads((tmp_path / "o2" / "eval.json").read_text())
    assert again["signals"] == report["signals"]


def test_recorded_signal_values_come_from_the_scorer(tmp_path: Path) -> None:
    from router.evaluate.report import signal_values

    records = load_recorded(synthetic_recorded(tmp_path / "r.jsonl", n=10))
    values = signal_values(records, [SignalSpec("mean_logprob")])["mean_logprob"]
    assert values.tolist() == pytest.approx(
        [plain_signal(r.outputs[0].logprobs, "mean_logprob") for r in records])


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


@pytest.mark.parametrize(("lines", "message"), [
    (['{"prompt": "What is 2 + 2?", "reference": "4"}', '{"prompt": "Unlabelled?"}'],
     "data.jsonl:2: unlabelled row"),
    ([], "data.jsonl: empty file"),
    (['{"prompt": "a", "reference": "1"}', "", '{"prompt": "b", "reference": '],
     "data.jsonl:3: not valid JSON"),
    (['{"prompt": "a", "check": {"kind": "sorcery"}}'], "data.jsonl:1: check kind"),
    (['{"prompt": "", "reference": "1"}'], "data.jsonl:1: a row needs a non-empty"),
])
def test_eval_bad_data(lines: list[str], message: str, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    data = write(tmp_path / "data.jsonl", lines)
    code, _, err = run_cli(["eval", "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_eval_unknown_signal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = synthetic_recorded(tmp_path / "r.jsonl", n=6)
    code, _, err = run_cli(["eval", "--recorded", str(rec), "--out", str(tmp_path / "o"),
                            "--signal", "vibes"], capsys)
    assert code == 2 and "unknown signal 'vibes'" in err


def test_recorded_unlabelled_row_names_line(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rec = synthetic_recorded(tmp_path / "r.jsonl", n=4, with_check=False)
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    del rows[2]["tiers"][1]["correct"]
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = run_cli(["eval", "--recorded", str(rec), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "r.jsonl:3: tier large: unlabelled" in err


def test_selection_precision_recall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 50
    values = rng.normal(size=n)
    ids = [f"d{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "logprob_per_byte": values,
                             "mean_logprob": values * 2}), tmp_path / "scores.parquet")
    good = values + rng.normal(scale=0.5, size=n) > 0
    labelled = range(0, n, 2)  # half the corpus is labelled
    write(tmp_path / "labels.jsonl",
          [json.dumps({"id": ids[i], "good": bool(good[i])}) for i in labelled])
    code, out, _ = run_cli(["eval", "--selection", str(tmp_path / "labels.jsonl"),
                            "--scores", str(tmp_path), "--keep-fraction", "0.4",
                            "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and "precision" in out
    r = json.loads((tmp_path / "o" / "selection.json").read_text())
    cut = sorted(values, reverse=True)[19]  # top 40% of all 50 scored documents
    kept = [values[i] >= cut for i in labelled]
    gl = [bool(good[i]) for i in labelled]
    tp = sum(k and g for k, g in zip(kept, gl, strict=True))
    assert r["precision"] == pytest.approx(tp / sum(kept), abs=1e-6)
    assert r["recall"] == pytest.approx(tp / sum(gl), abs=1e-6)
    assert r["auroc"]["logprob_per_byte"] == pytest.approx(
        brute_auroc([values[i] for i in labelled], gl), abs=1e-6)
    # a label for a document that was never scored names the label file's line
    write(tmp_path / "bad.jsonl", [json.dumps({"id": "d0", "good": True}),
                                   json.dumps({"id": "nope", "good": False})])
    code, _, err = run_cli(["eval", "--selection", str(tmp_path / "bad.jsonl"), "--scores",
                            str(tmp_path), "--keep-fraction", "0.4"], capsys)
    assert code == 2 and "bad.jsonl:2: id 'nope' is not in" in err
