"""Where llama.cpp's scoring time goes: batch size, threads, LM head, weight format.

    python bench/scoring_profile.py [--rounds 3] [--tokens 512]

Every configuration decodes the same `--tokens` tokens of prose (as batches of `batch` tokens,
one sequence each, KV cache cleared per batch) with logits at every position (what scoring
needs) or only at the last one (`last`), interleaved over rounds; medians of tokens/s.
The Q8_0 and Q4_0 files are the packaged Q4_1 model requantized with llama.cpp's own
`llama_model_quantize` (cached in a temporary directory).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from router.backends._llama import LlamaEngine
from router.models import resolve_packaged
from router.select.sample import PROSE

MODEL = "smollm2-135m-instruct"


def requantize(src: Path, dst: Path, ftype: int) -> Path:
    from router.weights import convert_gguf

    return dst if dst.exists() else convert_gguf(src, dst, ftype, nthread=1)


def decode_rate(engine: LlamaEngine, ids: list[int], batch: int, all_logits: bool) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        engine._reset()
        lo = 0 if all_logits else len(chunk) - 1
        engine._decode_packed([(0, chunk, 0, lo, len(chunk))])
    return len(ids) / (time.perf_counter() - t0)


def main() -> None:
    import llama_cpp

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    src = resolve_packaged(MODEL)
    tmp = Path(tempfile.gettempdir()) / "cascade-router-profile"
    tmp.mkdir(exist_ok=True)
    files = {"Q4_1": src,
             "Q8_0": requantize(src, tmp / "q8_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
             "Q4_0": requantize(src, tmp / "q4_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)}
    engines = {(w, t): LlamaEngine(files[w], n_ctx=1024, n_batch=512, n_threads=t)
               for w, t in [("Q4_1", 1), ("Q4_1", 2), ("Q8_0", 1), ("Q4_0", 1)]}
    e0 = engines[("Q4_1", 1)]
    ids = e0.tokenize(" ".join(PROSE), add_bos=e0.add_bos)[: args.tokens]
    configs = [("Q4_1", 2, 512, True), ("Q4_1", 1, 512, True), ("Q4_1", 1, 512, False),
               ("Q4_1", 1, 128, True), ("Q4_1", 1, 32, True), ("Q8_0", 1, 512, True),
               ("Q4_0", 1, 512, True)]
    rates: dict[tuple[str, int, int, bool], list[float]] = {c: [] for c in configs}
    for e in engines.values():
        decode_rate(e, ids[:64], 64, True)  # warm-up
    for r in range(args.rounds):
        for c in configs[r % len(configs):] + configs[: r % len(configs)]:
            w, t, b, all_logits = c
            rates[c].append(decode_rate(engines[(w, t)], ids, b, all_logits))
    print(f"{len(ids)} tokens, medians of {args.rounds} rounds (tokens/s)")
    print(f"{'weights':<8}{'threads':>8}{'batch':>7}{'logits':>8}{'tokens/s':>10}")
    for c, rs in rates.items():
        w, t, b, all_logits = c
        print(f"{w:<8}{t:>8}{b:>7}{'all' if all_logits else 'last':>8}"
              f"{statistics.median(rs):>10.1f}")


if __name__ == "__main__":
    main()
