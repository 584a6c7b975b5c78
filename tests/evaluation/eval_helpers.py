"""Helpers of the evaluation tests: synthetic recorded outputs and plain-loop references."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def brute_auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Every (positive, negative) pair: 1 if the positive scores higher, 0.5 on a tie."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def loop_quality(scores: Sequence[float], small: Sequence[int], large: Sequence[int],
                 k: int) -> float:
    """Quality after escalating the k least confident, averaged over every order of ties."""
    n = len(scores)
    results = []
    # group ties: enumerate every ordering inside each tie group (small inputs only)
    groups: dict[float, list[int]] = {}
    for i, s in enumerate(scores):
        groups.setdefault(s, []).append(i)
    keys = sorted(groups)
    for perms in itertools.product(*(itertools.permutations(groups[g]) for g in keys)):
        order = [i for p in perms for i in p]
        escalated = set(order[:k])
        correct = 0
        for i in range(n):
            correct += large[i] if i in escalated else small[i]
        results.append(correct / n)
    return sum(results) / len(results)


def loop_oracle(small: Sequence[int], large: Sequence[int], k: int) -> float:
    """Best quality over every subset of exactly k escalated prompts."""
    n = len(small)
    best = 0.0
    for subset in itertools.combinations(range(n), k):
        chosen = set(subset)
        best = max(best, sum(large[i] if i in chosen else small[i] for i in range(n)) / n)
    return best


def synthetic_recorded(path: Path, n: int = 40, seed: int = 0,
                       with_check: bool = True) -> Path:
    """Outputs of two fake tiers: tier 0 is right more often when its logprobs are high."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        conf = rng.random()
        small_ok = rng.random() < conf
        large_ok = rng.random() < 0.8
        lps = [round(-3.0 * (1 - conf) - rng.random(), 3) for _ in range(rng.randint(2, 6))]
        tiers: list[dict[str, Any]] = []
        for name, model, ok, lp, pt in (("small", "fake-small", small_ok, lps, 10),
                                        ("large", "fake-large", large_ok, [-0.5, -0.4], 12)):
            tiers.append({"tier": name, "model": model, "text": "42" if ok else "41",
                          "finish_reason": "stop", "prompt_tokens": pt,
                          "completion_tokens": len(lp),
                          "cost_usd": (1e-6 if name == "small" else 1e-5) * (pt + len(lp)),
                          "correct": ok, "logprobs": lp, "token_bytes": [1] * len(lp),
                          "top_logprobs": [[x, x - 1.0] for x in lp]})
        row: dict[str, Any] = {"id": f"q{i}", "prompt": "What is 40 + 2?", "tiers": tiers}
        if with_check:
            row["check"] = {"kind": "number", "value": 42}
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


