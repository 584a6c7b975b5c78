"""A learned policy round-trips: fitted by `router calibrate --learn` on recorded answers, saved,
loaded, and applied by `eval` and by the cascade in `serve`, with identical scores; the cascade
runs exactly the probes the policy needs, and their tokens are costed."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import FakeBackend, make_settings

from router.backends.base import ChatMessage, GenerationRequest
from router.cli import main
from router.evaluate.data import load_recorded
from router.evaluate.report import evaluate, policy_scores
from router.learned import LearnedSignal
from router.policy import load_policy
from router.serve.cascade import Cascade

FEATURES = "mean_logprob,quantile_logprob_q0.1,prompt_logprob_per_byte,answer_tokens"
REQ = GenerationRequest(messages=(ChatMessage("user", "What is 40 + 2?"),), max_tokens=16)


def recorded(path: Path, n: int = 60) -> Path:
    """Tier 0 is right more often on high logprobs and familiar prompts."""
    rng = random.Random(3)
    rows = []
    for i in range(n):
        conf, fam = rng.random(), rng.uniform(-2.5, -0.5)
        ok = rng.random() < 0.6 * conf + 0.4 * (fam + 2.5) / 2
        lps = [round(-3.0 * (1 - conf) - rng.random(), 3) for _ in range(rng.randint(2, 6))]
        small = {"tier": "small", "model": "fake-small", "text": "a" * len(lps),
                 "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": len(lps),
                 "cost_usd": 1e-6, "correct": ok, "logprobs": lps,
                 "token_bytes": [1] * len(lps), "top_logprobs": [[x, x - 1.0] for x in lps],
                 "features": {"prompt_logprob_per_byte": round(fam, 4),
                              "answer_tokens": len(lps)}}
        large = {"tier": "large", "model": "fake-large", "text": "Big", "correct": True,
                 "finish_reason": "stop", "cost_usd": 1e-5, "logprobs": [-0.1],
                 "token_bytes": [3]}
        rows.append({"id": f"q{i}", "prompt": "What is 40 + 2?", "tiers": [small, large]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def learned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    rec = recorded(tmp_path / "outputs.jsonl")
    policy = tmp_path / "learned.yaml"
    assert main(["calibrate", "--recorded", str(rec), "--learn", "--features", FEATURES,
                 "--target-escalation", "0.3", "--policy-out", str(policy)]) == 0
    printed = capsys.readouterr().out
    assert "cross-validated AUROC (5 folds)" in printed
    return rec, policy


def test_fit_save_load_and_eval(learned: tuple[Path, Path]) -> None:
    rec, path = learned
    policy = load_policy(path)
    sig = policy.signal
    assert isinstance(sig, LearnedSignal) and sig.features == tuple(FEATURES.split(","))
    for key in ("model", "scorer_version", "data", "n", "cv_auroc", "C", "folds"):
        assert key in sig.fitted
    assert sig.fitted["model"] == "fake-small" and sig.fitted["n"] == 60
    assert policy.calibration["method"] == "target_escalation"
    records = load_recorded(rec)
    scores = policy_scores(policy, records)
    t = policy.rule.escalate_below  # type: ignore[union-attr]
    # the threshold is fitted on the out-of-fold scores (what unseen answers get) to escalate
    # 30%; the final rule's in-sample scores escalate about as many
    assert policy.calibration["escalation_on_data"] == pytest.approx(0.3, abs=0.02)
    assert np.mean(scores < t) == pytest.approx(0.3, abs=0.1)
    report = evaluate(records, policies=[policy], cv_folds=5)
    row = report["signals"][f"policy:{policy.name}"]
    assert row["features"] == list(sig.features)
    assert row["auroc"] > 0.7 and report["signals"]["learned_cv5"]["auroc"] > 0.6
    assert row["extra_tokens"] == 0  # the recording carries no probe costs


async def test_serve_scores_like_eval_and_runs_only_the_needed_probes(
        learned: tuple[Path, Path], tmp_path: Path) -> None:
    rec, path = learned
    policy = load_policy(path)
    expected = policy_scores(policy, load_recorded(rec))
    settings = make_settings(tmp_path, cascade={"policy": str(path)})
    for i, row in enumerate(json.loads(x) for x in rec.read_text().splitlines()[:8]):
        small_out = row["tiers"][0]
        # the fake tier answers with the recorded logprobs (one byte per token), and scores the
        # prompt at the recorded familiarity (its score() gives 3 one-byte tokens)
        small = FakeBackend("fake-small", tokens=["a"] * len(small_out["logprobs"]),
                            logprob=small_out["logprobs"],
                            score_logprob=small_out["features"]["prompt_logprob_per_byte"])
        large = FakeBackend("fake-large", tokens=["Big"])
        cascade = Cascade(settings, {"small": small, "large": large})
        result = await cascade.run(REQ)
        attempt = result.outcome.attempts[0]
        assert attempt.score == pytest.approx(expected[i], abs=1e-9)
        assert small.calls == 1  # answer shape and prompt familiarity: no extra generation
        assert attempt.features is not None and set(attempt.features) == set(FEATURES.split(","))
        assert attempt.probe_tokens == 4  # the prompt scoring pass: 3 tokens + 1
        escalated = attempt.score < policy.rule.escalate_below  # type: ignore[union-attr]
        assert result.outcome.escalated == escalated
        # the probe's tokens are costed at the small tier's prices: (5 + 4) prompt, n completion
        n = len(small_out["logprobs"])
        assert attempt.cost_usd == pytest.approx((9 * 1.0 + n * 2.0) / 1e6)


async def test_a_stream_with_probes_is_judged_on_the_whole_answer(
        learned: tuple[Path, Path], tmp_path: Path) -> None:
    """The probes ask tier 0 again: a single-engine backend must have finished the stream."""
    _, path = learned
    settings = make_settings(tmp_path, cascade={"policy": str(path), "stream_buffer_tokens": 2})
    small = FakeBackend("fake-small", tokens=["a"] * 5, logprob=-0.05, score_logprob=-0.6)
    cascade = Cascade(settings, {"small": small, "large": FakeBackend("fake-large")})
    items = [x async for x in cascade.stream(REQ)]
    outcome = items[0]
    assert outcome.attempts[0].features["answer_tokens"] == 5.0  # not the 2-token buffer
    assert outcome.attempts[0].probe_tokens == 4 and small.closed_early == 0


def recorded_words(path: Path, n: int = 80) -> Path:
    """Two kinds of question: tier 0 gets sums wrong and capitals right, mostly; its answers'
    words differ by kind too. The token logprobs carry a little signal."""
    rng = random.Random(5)
    rows = []
    for i in range(n):
        is_sum = i % 2 == 0
        ok = rng.random() < (0.15 if is_sum else 0.85)
        lps = [round(-0.5 - rng.random() - (0.0 if ok else 0.4), 3) for _ in range(3)]
        prompt = (f"What is {rng.randint(2, 60)} + {rng.randint(2, 60)}?" if is_sum
                  else f"What is the capital of country number {rng.randint(1, 99)}?")
        words = ["To", " find"] if is_sum else ["It", " is"]
        tokens = [*words, " " + str(rng.randint(1, 99))]
        small = {"tier": "small", "model": "fake-small", "text": "".join(tokens),
                 "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 3,
                 "cost_usd": 1e-6, "correct": ok, "logprobs": lps,
                 "token_bytes": [len(t.encode()) for t in tokens],
                 "top_logprobs": [[x, x - 1.0] for x in lps], "tokens": tokens,
                 "features": {"answer_tokens": 3}}
        large = {"tier": "large", "model": "fake-large", "text": "Big", "correct": True,
                 "finish_reason": "stop", "cost_usd": 1e-5, "logprobs": [-0.1],
                 "token_bytes": [3]}
        rows.append({"id": f"w{i}", "prompt": prompt, "tiers": [small, large]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def test_a_rule_with_text_scores_alike_in_calibrate_eval_and_serve(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = recorded_words(tmp_path / "outputs.jsonl")
    path = tmp_path / "words.yaml"
    assert main(["calibrate", "--recorded", str(rec), "--learn", "--features",
                 "mean_logprob,answer_tokens", "--text", "question,answer",
                 "--target-escalation", "0.4", "--policy-out", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "and the words of the question and the answer" in printed
    assert "question terms: toward escalating" in printed
    # rows whose prompt is in another file are left out of the fit
    held = tmp_path / "held.jsonl"
    held.write_text("".join(line + "\n" for line in rec.read_text().splitlines()[:10]))
    assert main(["calibrate", "--recorded", str(rec), "--learn", "--features", "mean_logprob",
                 "--text", "question", "--exclude-prompts", str(held), "--target-escalation",
                 "0.4", "--policy-out", str(tmp_path / "other.yaml")]) == 0
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    first = {r["prompt"] for r in rows[:10]}
    dropped = sum(r["prompt"] in first for r in rows)  # the first 10 and their repeats
    assert dropped >= 10
    assert f"left out {dropped} of 80 rows" in capsys.readouterr().err
    other = load_policy(tmp_path / "other.yaml").signal
    assert other.fitted["n"] == 80 - dropped  # type: ignore[union-attr]
    policy = load_policy(path)
    sig = policy.signal
    assert isinstance(sig, LearnedSignal) and [b.field for b in sig.text] == ["question",
                                                                            "answer"]
    assert sig.fitted["cv_auroc"] > 0.75 and sig.reads_answer_text
    records = load_recorded(rec)
    expected = policy_scores(policy, records)
    report = evaluate(records, policies=[policy], cv_folds=5)
    assert report["signals"][f"policy:{policy.name}:cv5"]["features"][-2:] == [
        "text:question", "text:answer"]
    settings = make_settings(tmp_path, cascade={"policy": str(path)})
    rows = [json.loads(x) for x in rec.read_text().splitlines()[:6]]
    for i, row in enumerate(rows):
        small_out = row["tiers"][0]
        small = FakeBackend("fake-small", tokens=small_out["tokens"], logprob=small_out["logprobs"])
        cascade = Cascade(settings, {"small": small, "large": FakeBackend("fake-large")})
        req = GenerationRequest(messages=(ChatMessage("user", row["prompt"]),), max_tokens=16)
        result = await cascade.run(req)
        attempt = result.outcome.attempts[0]
        assert attempt.score == pytest.approx(expected[i], abs=1e-9)
        assert attempt.features is not None
        assert {"text:question", "text:answer"} <= set(attempt.features)
        # a stream of the same answer is judged on the whole answer, to the same score
        streamed = Cascade(settings, {"small": FakeBackend("fake-small",
                                                           tokens=small_out["tokens"],
                                                           logprob=small_out["logprobs"]),
                                      "large": FakeBackend("fake-large")})
        items = [x async for x in streamed.stream(req)]
        assert items[0].attempts[0].score == pytest.approx(expected[i], abs=1e-9)


def test_a_gain_target_learns_where_escalation_pays(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Where the last tier is wrong too, escalating cannot help: `--learn-target gain` ranks
    those answers as keepers even when tier 0 is wrong on them."""
    rec = recorded_words(tmp_path / "outputs.jsonl")
    rows = [json.loads(x) for x in rec.read_text().splitlines()]
    for r in rows:  # the large tier fails every sum too
        if r["prompt"].startswith("What is") and "+" in r["prompt"]:
            r["tiers"][1]["correct"] = False
            r["tiers"][1]["text"] = "No idea"
    rec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = {}
    for target in ("correct", "gain"):
        path = tmp_path / f"{target}.yaml"
        assert main(["calibrate", "--recorded", str(rec), "--learn", "--features",
                     "mean_logprob", "--text", "question", "--learn-target", target,
                     "--target-escalation", "0.3", "--policy-out", str(path)]) == 0
        what = "escalating gains nothing" if target == "gain" else "tier 0's answer is right"
        assert f"of '{what}'" in capsys.readouterr().out
        out[target] = load_policy(path)
    sums = [i for i, r in enumerate(rows) if "+" in r["prompt"]]
    records = load_recorded(rec)
    correct, gain = (policy_scores(out[t], records) for t in ("correct", "gain"))
    others = [i for i in range(len(rows)) if i not in sums]
    # the correctness rule escalates sums first; the gain rule keeps them (nothing to gain)
    assert np.mean(correct[sums]) < np.mean(correct[others])
    assert np.mean(gain[sums]) > np.mean(gain[others])
    assert out["gain"].signal.fitted["target"] == "gain"  # type: ignore[union-attr]
    report = evaluate(records, policies=[out["correct"], out["gain"]])
    area = {t: report["signals"][f"policy:{out[t].name}"]["area"] for t in out}
    assert area["gain"] > area["correct"]


async def test_the_time_bound_does_not_cut_a_whole_answer_policy_short(
        learned: tuple[Path, Path], tmp_path: Path) -> None:
    """A slow stream under a policy that reads the whole answer still waits for its end."""
    _, path = learned
    settings = make_settings(tmp_path, cascade={"policy": str(path), "stream_buffer_tokens": 2,
                                                "stream_buffer_seconds": 0.01})
    small = FakeBackend("fake-small", tokens=["a"] * 5, logprob=-0.05, score_logprob=-0.6,
                        delay_s=0.05)
    cascade = Cascade(settings, {"small": small, "large": FakeBackend("fake-large")})
    items = [x async for x in cascade.stream(REQ)]
    outcome = items[0]
    assert outcome.attempts[0].features["answer_tokens"] == 5.0  # not the tokens of 0.01 s
    assert outcome.attempts[0].probe_tokens == 4 and small.closed_early == 0


def test_several_recordings_are_fitted_as_one_set(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first = recorded(tmp_path / "a.jsonl", n=40)
    second = tmp_path / "b.jsonl"  # the same kind of rows under other ids
    second.write_text(first.read_text().replace('"id": "q', '"id": "b'))
    out = tmp_path / "both.yaml"
    assert main(["calibrate", "--recorded", str(first), str(second), "--learn", "--features",
                 FEATURES, "--target-escalation", "0.3", "--policy-out", str(out)]) == 0
    sig = load_policy(out).signal
    assert isinstance(sig, LearnedSignal)
    assert sig.fitted["n"] == 80
    assert sig.fitted["data"] == f"{first} + {second}"
    capsys.readouterr()
    # an id in two files is one error naming where it repeats
    assert main(["calibrate", "--recorded", str(first), str(first), "--learn", "--features",
                 FEATURES, "--target-escalation", "0.3", "--policy-out", str(out)]) == 2
    assert "duplicate id 'q0'" in capsys.readouterr().err
