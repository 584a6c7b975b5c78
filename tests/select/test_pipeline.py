from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from select_helpers import FakeBackend, make_docs, shard_rows, top_policy, write_jsonl

from router.policy import BandRule, Policy, ThresholdRule
from router.scoring import SignalSpec
from router.select.cli import main as select_cli
from router.select.options import ReadOptions

Run = Callable[..., dict[str, Any]]
BAD = {2: b"{not json", 5: b'{"id": "nt", "body": "x"}', 9: b'{"id": "e", "text": ""}',
       11: b'{"id": "one", "text": "word"}'}


def three_shards(tmp_path: Path, n: int = 12) -> list[Path]:
    docs = make_docs(3 * n)
    return [write_jsonl(tmp_path / f"in{i}.jsonl", docs[i * n:(i + 1) * n],
                        BAD if i == 1 else None) for i in range(3)]


def test_end_to_end_outputs_and_reconciliation(tmp_path: Path, run_fake: Run) -> None:
    inputs = three_shards(tmp_path)
    out = tmp_path / "out"
    stats = run_fake(inputs, out, shard_size=5)
    c = stats["counts"]
    assert c == {"input": 40, "kept": 18, "dropped": 18, "rejected": 4}
    for name in ("scores.parquet", "rejected.jsonl", "stats.json", "report.html"):
        assert (out / name).exists()
    assert not (out / "_work").exists()
    kept, dropped = shard_rows(out, "kept"), shard_rows(out, "dropped")
    assert len(kept) == 18 and len(dropped) == 18
    ids = [r["id"] for r in kept + dropped]
    assert len(set(ids)) == 36
    # exact cut across all shards: the kept set is the global top half
    scores = pq.read_table(out / "scores.parquet").to_pylist()
    ok = [r for r in scores if r["decision"] != "rejected"]
    vals = sorted((r["logprob_per_byte"] for r in ok), reverse=True)
    assert min(r["score"] for r in kept) == vals[17]
    assert all(not r["noisy"] for r in kept)
    assert sorted(r["priority"] for r in kept) == list(range(1, 19))
    assert np.mean([r["weight"] for r in kept]) == pytest.approx(1.0)
    for col in ("id", "file", "line", "logprob_per_byte", "bits_per_byte", "tokens", "bytes",
                "decision", "model", "scorer_version"):
        assert col in scores[0]
    assert {r["model"] for r in ok} == {"fake-lm"}
    rejected = [json.loads(x) for x in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(Path(r["file"]).name, r["line"]) for r in rejected] == [
        ("in1.jsonl", 3), ("in1.jsonl", 6), ("in1.jsonl", 10), ("in1.jsonl", 12)]
    assert rejected[3]["reason"].startswith("cannot score (fake-lm)")
    assert rejected[0]["raw"] == "{not json"
    report = (out / "report.html").read_text()
    assert "<svg" in report and 'class="cut"' in report and "<script" not in report


def test_order_score_and_band(tmp_path: Path, run_fake: Run) -> None:
    inputs = three_shards(tmp_path)
    band = Policy("b", SignalSpec("logprob_per_byte"), BandRule(keep_quantiles=(0.25, 0.75)))
    run_fake(inputs, tmp_path / "o", band, order_by_score=True, shard_size=100)
    for shard in sorted((tmp_path / "o" / "kept").iterdir()):
        from select_helpers import read_jsonl

        s = [r["score"] for r in read_jsonl(shard)]
        assert s == sorted(s, reverse=True)


def test_stratify(tmp_path: Path, run_fake: Run) -> None:
    inputs = three_shards(tmp_path)
    stats = run_fake(inputs, tmp_path / "o", read=ReadOptions(stratify="lang"), shard_size=7)
    assert set(stats["cut_points"]) == {"en", "fr"}
    scores = pq.read_table(tmp_path / "o" / "scores.parquet").to_pylist()
    for lang in ("en", "fr"):
        rows = [r for r in scores if r["stratum"] == lang and r["decision"] != "rejected"]
        kept = [r for r in rows if r["decision"] == "kept"]
        lo = stats["cut_points"][lang][0]
        assert all(r["logprob_per_byte"] >= lo for r in kept)
        assert len(kept) == pytest.approx(len(rows) / 2, abs=1)


def test_from_scores_recut_without_rescoring(tmp_path: Path, run_fake: Run,
                                             fake: FakeBackend) -> None:
    inputs = three_shards(tmp_path)
    run_fake(inputs, tmp_path / "a", shard_size=5)
    n_scored = len(fake.scored)
    new = top_policy(0.25)
    stats = run_fake([], tmp_path / "b", new, from_scores=tmp_path / "a" / "scores.parquet",
                     shard_size=5)
    assert len(fake.scored) == n_scored  # nothing rescored
    direct = run_fake(inputs, tmp_path / "c", new, shard_size=5)
    assert stats["counts"] == direct["counts"]
    assert shard_rows(tmp_path / "b", "kept") == shard_rows(tmp_path / "c", "kept")
    assert (tmp_path / "b" / "rejected.jsonl").read_text() == (
        tmp_path / "c" / "rejected.jsonl").read_text()


def test_parquet_in_parquet_out(tmp_path: Path, run_fake: Run) -> None:
    p = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(make_docs(20)), p, row_group_size=6)
    stats = run_fake([p], tmp_path / "o", shard_size=8)
    assert stats["counts"]["kept"] + stats["counts"]["dropped"] == 20  # ties may keep more
    assert stats["counts"]["kept"] >= 10
    kept = shard_rows(tmp_path / "o", "kept")
    assert {"id", "text", "lang", "noisy", "score", "priority", "weight"} <= set(kept[0])
    assert all(name.endswith(".parquet") for name in
               (x.name for x in (tmp_path / "o" / "kept").iterdir()))


def test_interrupt_then_resume_skips_finished_parts(tmp_path: Path, run_fake: Run) -> None:
    inputs = three_shards(tmp_path)
    out = tmp_path / "o"
    first = FakeBackend(fail_after=17)
    with pytest.raises(KeyboardInterrupt):
        run_fake(inputs, out, backends={"small": first}, shard_size=5, checkpoint_records=5)
    done = sorted(p.name for p in (out / "_work" / "done").glob("*.json"))
    # input 0 (12 records) in three chunks, then the first 5 records of input 1 (4 scored)
    assert done == ["00000-000000000000.json", "00000-000000000005.json",
                    "00000-000000000010.json", "00001-000000000000.json"]
    with pytest.raises(Exception, match="pass --resume"):
        run_fake(inputs, out, shard_size=5)
    second = FakeBackend()
    stats = run_fake(inputs, out, backends={"small": second}, shard_size=5, resume=True)
    assert len(second.scored) == 36 - 16  # the 16 texts of the saved chunks are not rescored
    ref = run_fake(inputs, tmp_path / "ref", shard_size=5)
    assert stats["counts"] == ref["counts"]
    assert shard_rows(out, "kept") == shard_rows(tmp_path / "ref", "kept")


def test_a_run_records_its_weights_and_does_not_resume_with_others(
        tmp_path: Path, run_fake: Run) -> None:
    """config.yaml's select.weights (f16) scores the embedded tier; --weights overrides it, and
    scores of one kind are never mixed with another's on --resume."""
    inputs = three_shards(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        run_fake(inputs, out, backends={"small": FakeBackend(fail_after=17)}, shard_size=5,
                 checkpoint_records=5)
    run = json.loads((out / "_work" / "run.json").read_text())
    # the scoring tier's, no reference tier
    assert run["kernels"] == [{"weights": "f16", "flash_attn": True}, None]
    with pytest.raises(Exception, match=r"cannot resume: kernels changed .*'file'"):
        run_fake(inputs, out, shard_size=5, resume=True, weights="file")
    stats = run_fake(inputs, out, shard_size=5, resume=True)
    assert stats["weights"] == "f16"
    assert run_fake(inputs, tmp_path / "q", weights="file")["weights"] == "file"


def test_a_run_does_not_resume_with_other_windows(tmp_path: Path, run_fake: Run) -> None:
    """The scoring tier's backend, model and windows are in the run's fingerprint; a run.json
    of a version that did not record them still resumes."""
    import yaml

    from router.config import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text("utf-8"))
    raw["cascade"]["policy"] = str(DEFAULT_CONFIG.parent / raw["cascade"]["policy"])
    raw["select"]["window"] = 64
    windowed = tmp_path / "windowed.yaml"
    windowed.write_text(yaml.safe_dump(raw), encoding="utf-8")
    inputs = three_shards(tmp_path)
    out = tmp_path / "o"
    with pytest.raises(KeyboardInterrupt):
        run_fake(inputs, out, backends={"small": FakeBackend(fail_after=17)}, shard_size=5,
                 checkpoint_records=5, config=windowed)
    run_json = out / "_work" / "run.json"
    run = json.loads(run_json.read_text())
    assert run["scoring"] == [{"backend": "embedded", "model": "smollm2-135m-instruct",
                               "n_ctx": 2048, "window": 64, "stride": None}, None]
    with pytest.raises(Exception, match=r"cannot resume: scoring changed .*'window': 64"):
        run_fake(inputs, out, shard_size=5, resume=True)  # config.yaml: no window
    del run["scoring"]
    run_json.write_text(json.dumps(run))
    stats = run_fake(inputs, out, shard_size=5, resume=True)
    assert sum(stats["counts"].values()) > 0


def test_difference_rule_with_reference(tmp_path: Path, run_fake: Run) -> None:
    from router.policy import DifferenceRule

    inputs = three_shards(tmp_path)
    pol = Policy("d", SignalSpec("logprob_per_byte"), DifferenceRule(reference="large", keep=0.5))
    ref = FakeBackend("ref-lm", bias=-0.5)
    stats = run_fake(inputs, tmp_path / "o", pol, reference="large",
                     backends={"small": FakeBackend(), "large": ref})
    assert stats["signal"] == "difference" and stats["reference_model"] == "ref-lm"
    t = pq.read_table(tmp_path / "o" / "scores.parquet").to_pylist()
    r = next(x for x in t if x["decision"] != "rejected")
    assert r["difference"] == pytest.approx(r["logprob_per_byte"] - r["ref_logprob_per_byte"])


def test_threshold_keeps_by_value(tmp_path: Path, run_fake: Run) -> None:
    inputs = three_shards(tmp_path)
    pol = Policy("t", SignalSpec("logprob_per_byte"), ThresholdRule(keep_above=-1.0))
    run_fake(inputs, tmp_path / "o", pol)
    assert all(r["score"] >= -1.0 for r in shard_rows(tmp_path / "o", "kept"))
    assert all(r["score"] < -1.0 for r in shard_rows(tmp_path / "o", "dropped"))


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = select_cli([str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "missing.jsonl: no such file" in err and "Traceback" not in err
    rc = select_cli([str(tmp_path), "--out", str(tmp_path / "o"), "--policy",
                     str(tmp_path / "nope.yaml")])
    assert rc == 2 and "nope.yaml" in capsys.readouterr().err
    rc = select_cli(["--out", str(tmp_path / "o")])
    assert rc == 2 and "INPUT" in capsys.readouterr().err
