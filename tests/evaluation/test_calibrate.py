"""`router calibrate` without a model: fitting against brute force, decision logs, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from router.calibrate import escalation_rate, fit_rate, fit_risk
from router.cli import main
from router.policy import load_policy


def log_record(i: int, score: float | None, *, signal: str = "quantile_logprob_q0.1",
               outcome: str = "accepted") -> dict[str, Any]:
    return {"time": "2026-01-01T00:00:00.000+00:00", "id": f"req-{i}", "endpoint": "chat",
            "requested_model": "cascade", "final_tier": "small", "model": "smollm2",
            "escalated": outcome == "escalated", "signal": signal, "confidence": score,
            "tiers": [{"tier": "small", "model": "smollm2", "outcome": outcome, "score": score,
                       "threshold": -2.0}]}


def write_log(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_fit_risk_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(3, 30))
        scores = np.round(rng.normal(size=n), 1)
        correct = rng.random(n) < 0.7
        bound = float(rng.choice([0.1, 0.2, 0.3]))
        fit = fit_risk(scores, correct, bound)
        # brute force over every threshold between distinct scores
        best_acc = 0
        for t in sorted({*scores.tolist(), np.inf}):
            acc = scores >= t
            if acc.sum() and (~correct[acc]).mean() <= bound + 1e-12:
                best_acc = max(best_acc, int(acc.sum()))
        assert fit.accepted == best_acc
        assert escalation_rate(scores, fit.threshold) == pytest.approx(1 - best_acc / n)
        if best_acc:
            accepted = scores >= fit.threshold
            assert (~correct[accepted]).mean() <= bound + 1e-12


def test_fit_rate_counts_nan_as_escalated() -> None:
    scores = np.array([np.nan, 1, 2, 3, 4, 5, 6, 7, 8, 9.0])
    fit = fit_rate(scores, 0.3)
    assert fit.escalation_rate == pytest.approx(0.3)
    assert escalation_rate(scores, fit.threshold) == pytest.approx(0.3)


def test_fit_on_one_half_holds_on_the_other() -> None:
    """Without a model: the fitted rate carries over between exchangeable halves."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=2000)
    fit = fit_rate(scores[::2], 0.3)
    assert 0.25 <= escalation_rate(scores[1::2], fit.threshold) <= 0.35


def test_calibrate_from_decision_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(-2, 0.5, size=100)
    records = [log_record(i, float(s), outcome="escalated" if s < -2 else "accepted")
               for i, s in enumerate(scores)]
    records.append({**log_record(100, None), "tiers": [
        {"tier": "large", "model": "gemma", "outcome": "answered", "score": -0.5}]})  # direct
    log = write_log(tmp_path / "decisions.jsonl", records)
    out = tmp_path / "policies" / "fitted.yaml"
    assert main(["calibrate", "--log", str(log), "--target-escalation", "0.3",
                 "--policy-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "escalation on this data: 0.300" in printed and "1 log records skipped" in printed
    policy = load_policy(out).for_serving()
    assert policy.signal.key == "quantile_logprob_q0.1"
    assert policy.rule.escalate_below == pytest.approx(  # type: ignore[union-attr]
        fit_rate(scores, 0.3).threshold)
    cal = yaml.safe_load(out.read_text())["calibration"]
    assert cal["data"] == str(log) and cal["n"] == 100 and cal["model"] == "smollm2"
    assert cal["signal"] == "quantile_logprob_q0.1" and cal["fitted_at"]
    assert cal["method"] == "target_escalation" and cal["target_escalation"] == 0.3

    # risk control with labels by request id
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"id": f"req-{i}", "correct": bool(s > -2.3)}) + "\n"
                              for i, s in enumerate(scores)))
    assert main(["calibrate", "--log", str(log), "--max-error", "0.05", "--labels", str(labels),
                 "--policy-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accepted-answer error" in printed and "costs escalating" in printed
    t = load_policy(out).rule.escalate_below  # type: ignore[union-attr]
    assert t is not None and -2.35 < t < -2.25  # the label boundary


def test_calibrate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "d.jsonl", [log_record(i, -1.0 - i) for i in range(5)])
    out = str(tmp_path / "p.yaml")

    def err_of(argv: list[str]) -> str:
        assert main(argv) == 2
        e = capsys.readouterr().err
        assert len(e.strip().splitlines()) == 1, e
        return e

    # labels missing for one logged request
    labels = tmp_path / "l.jsonl"
    labels.write_text("".join(json.dumps({"id": f"req-{i}", "correct": True}) + "\n"
                              for i in (0, 1, 3, 4)))
    e = err_of(["calibrate", "--log", str(log), "--max-error", "0.1", "--labels", str(labels),
                "--policy-out", out])
    assert "d.jsonl:3: unlabelled row: no label for id 'req-2'" in e
    # a label row without a label
    labels.write_text('{"id": "req-0", "correct": true}\n{"id": "req-1"}\n')
    e = err_of(["calibrate", "--log", str(log), "--max-error", "0.1", "--labels", str(labels),
                "--policy-out", out])
    assert "l.jsonl:2: unlabelled row" in e
    # empty files
    (tmp_path / "empty.jsonl").write_text("\n")
    e = err_of(["calibrate", "--log", str(tmp_path / "empty.jsonl"), "--target-escalation",
                "0.3", "--policy-out", out])
    assert "empty.jsonl: empty file" in e
    e = err_of(["calibrate", "--prompts", str(tmp_path / "empty.jsonl"), "--target-escalation",
                "0.3", "--policy-out", out])
    assert "empty.jsonl: empty file" in e
    # unknown signal, and a signal the log does not hold
    e = err_of(["calibrate", "--log", str(log), "--target-escalation", "0.3", "--signal",
                "vibes", "--policy-out", out])
    assert "--signal: unknown signal 'vibes'" in e
    e = err_of(["calibrate", "--log", str(log), "--target-escalation", "0.3", "--signal",
                "mean_logprob", "--policy-out", out])
    assert "holds quantile_logprob_q0.1 scores, not mean_logprob" in e
    # a record of another signal in the middle of the log
    mixed = write_log(tmp_path / "m.jsonl", [log_record(0, -1.0),
                                             log_record(1, -1.0, signal="mean_logprob")])
    e = err_of(["calibrate", "--log", str(mixed), "--target-escalation", "0.3",
                "--policy-out", out])
    assert "m.jsonl:2: signal mean_logprob differs" in e
    # bad JSON in a prompts file
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"prompt": \n')
    e = err_of(["calibrate", "--prompts", str(bad), "--target-escalation", "0.3",
                "--policy-out", out])
    assert "prompts.jsonl:2: not valid JSON" in e
    # --max-error on unlabelled prompts names the row (no model is loaded before the check? no:
    # prompts are answered first; that path is covered by the model test)
    e = err_of(["calibrate", "--log", str(log), "--target-escalation", "1.5", "--policy-out", out])
    assert "--target-escalation must be in [0, 1]" in e
