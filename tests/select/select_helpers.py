"""Helpers of the `router select` tests: a deterministic fake backend and corpus writers."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router.errors import InputError
from router.policy import Policy, TopFractionRule
from router.scoring import SignalSpec, TokenLogprobs


class FakeBackend:
    """Tokens are words; a word's logprob is -1 for lowercase letters-only words, -6 otherwise,
    minus a small per-word offset, so prose scores above noise. Counts every scored text."""

    def __init__(self, model_id: str = "fake-lm", *, delay: float = 0.0,
                 bias: float = 0.0, fail_after: int | None = None) -> None:
        self._model_id = model_id
        self.delay = delay
        self.bias = bias
        self.fail_after = fail_after
        self.scored: list[str] = []

    @property
    def model_id(self) -> str:
        return self._model_id

    async def score(self, texts: Sequence[str]) -> list[TokenLogprobs]:
        out = []
        for text in texts:
            words = text.split()
            if len(words) < 2:
                raise InputError(f"text {text[:20]!r} has {len(words)} token(s)")
        for text in texts:
            if self.fail_after is not None and len(self.scored) >= self.fail_after:
                raise KeyboardInterrupt
            if self.delay:
                await asyncio.sleep(self.delay)
            words = text.split()
            lp = [(-1.0 if w.strip(".,").isalpha() and w.islower() else -6.0)
                  - (len(w) % 5) * 0.1 + self.bias for w in words]
            out.append(TokenLogprobs(np.array(lp), np.array([len(w) + 1 for w in words])))
            self.scored.append(text)
        return out

    async def generate(self, request: Any) -> Any:  # pragma: no cover - not used by select
        raise NotImplementedError

    def stream(self, request: Any) -> Any:  # pragma: no cover
        raise NotImplementedError

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


PROSE = ["the cat sat on the warm mat by the door",
         "we walked along the river until the sun went down",
         "she read the letter twice and then put it away",
         "rain fell on the roof all night long and we slept well",
         "the market opens early and closes when the bread is gone"]
NOISE = ["Xq7 #zz Lorem &&& 9fk QWE", "Home | About | Contact | Login | Cart",
         "A1 B2 C3 D4 E5 F6 G7"]


def make_docs(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        noisy = i % 3 == 2
        base = NOISE[i % len(NOISE)] if noisy else PROSE[i % len(PROSE)]
        words = base.split()
        extra = " ".join(rng.choice(words, size=int(rng.integers(0, 4))).tolist())
        docs.append({"id": f"d{i:03d}", "text": f"{base} {extra}".strip(),
                     "lang": ["en", "fr"][i % 2], "noisy": noisy})
    return docs


def write_jsonl(path: Path, docs: list[dict[str, Any]], bad: dict[int, bytes] | None = None
                ) -> Path:
    lines = [json.dumps(d).encode() for d in docs]
    for pos, raw in sorted((bad or {}).items()):
        lines.insert(pos, raw)
    data = b"\n".join(lines) + b"\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


def top_policy(keep: float = 0.5, signal: str = "logprob_per_byte") -> Policy:
    return Policy("t", SignalSpec.parse(signal), TopFractionRule(keep=keep))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def shard_rows(out: Path, which: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in sorted((out / which).iterdir()):
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(p).to_pylist())
        else:
            rows.extend(read_jsonl(p))
    return rows
