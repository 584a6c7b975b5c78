"""`--engine ray` writes the same scores and decisions as the local engine (Ray run locally)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from router.policy import load_policy
from router.select.options import SelectOptions
from router.select.pipeline import run_select
from router.select.sample import write_corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.model
def test_ray_equals_local(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    corpus = tmp_path / "c.jsonl"
    write_corpus(corpus, seed=3, n_prose=5, n_shuffled=2, n_random=2, n_boilerplate=3)
    policy = load_policy(ROOT / "policies" / "finetune-top.yaml")

    def run(engine: str) -> list[dict[str, object]]:
        out = tmp_path / engine
        run_select(SelectOptions(inputs=(str(corpus),), out=out, policy=policy, engine=engine,
                                 shard_size=5, progress=False), log=lambda _m: None)  # type: ignore[arg-type]
        return pq.read_table(out / "scores.parquet").to_pylist()

    local = run("local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = run("ray")
    finally:
        ray.shutdown()
    assert [r["id"] for r in remote] == [r["id"] for r in local]
    assert [r["decision"] for r in remote] == [r["decision"] for r in local]
    for a, b in zip(remote, local, strict=True):
        assert a["logprob_per_byte"] == pytest.approx(b["logprob_per_byte"], rel=1e-6,
                                                      nan_ok=True)
        assert a["tokens"] == b["tokens"]
    kept_l = sorted((tmp_path / "local" / "kept").iterdir())
    kept_r = sorted((tmp_path / "ray" / "kept").iterdir())
    assert [p.name for p in kept_l] == [p.name for p in kept_r]
