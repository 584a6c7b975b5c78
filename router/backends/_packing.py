"""Pure helpers of packed scoring: which windows share a llama.cpp batch, and the logit math.

Scoring needs, per position, only the log-probability of the token that follows (and, for the
entropy/margin signals, the top-k). Both come from the raw logits without materialising a
log-softmax over the vocabulary:

    logprob[i] = logits[i, target[i]] - logsumexp(logits[i, :])
    top_k[i]   = top-k of logits[i, :] - logsumexp(logits[i, :])

so one pass over the logits (max, exp, sum) per row plus one gather is all the work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

#: rows per block of the log-sum-exp: keeps the exp temporary at 64 x vocab floats
LSE_BLOCK_ROWS = 64


def row_logsumexp(logits: F32, *, block: int = LSE_BLOCK_ROWS) -> F32:
    """Stable log(sum(exp(row))) of every row, in row blocks (small temporaries).

    Example: [[0, 0], [1, 1]] -> [0.693, 1.693]
    """
    n, width = logits.shape
    out = np.empty(n, np.float32)
    if n == 0:
        return out
    buf = np.empty((min(block, n), width), np.float32)
    for s in range(0, n, block):
        rows = logits[s : s + block]
        tmp = buf[: len(rows)]
        m = rows.max(axis=1)  # (rows,)
        np.subtract(rows, m[:, None], out=tmp)
        np.exp(tmp, out=tmp)
        out[s : s + len(rows)] = m + np.log(tmp.sum(axis=1))
    return out


def gather_logprobs(logits: F32, targets: I64, lse: F32) -> F32:
    """Log-probability of `targets[i]` under row i. Example: ([[0, 0]], [1], [0.693]) -> [-0.693]"""
    picked = logits[np.arange(len(targets)), targets]  # (n,)
    return np.asarray(picked - lse, dtype=np.float32)


def top_k_logprobs(logits: F32, lse: F32, k: int) -> F32:
    """The k largest log-probabilities of every row, sorted descending: (n, V) -> (n, k)."""
    k = min(k, logits.shape[1])
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(logits, part, axis=1)  # (n, k), unsorted
    return np.asarray(-np.sort(-vals, axis=1) - lse[:, None], dtype=np.float32)


@dataclass(frozen=True)
class Segment:
    """One window of one text, evaluated on its own from position 0.

    tokens [start, end) of text `doc` are evaluated; the logits of the relative positions
    [out_from, end - start - 1) are kept (position j predicts token start + j + 1).
    """

    doc: int
    start: int
    end: int
    out_from: int

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def n_out(self) -> int:
        return self.end - self.start - 1 - self.out_from


def pack_segments(lengths: Sequence[int], *, n_batch: int, max_seqs: int) -> list[list[int]]:
    """Group segments into batches of at most `n_batch` tokens and `max_seqs` sequences.

    First-fit decreasing: longest first, each into the first batch with room. A segment longer
    than `n_batch` gets a batch of its own (decoded in chunks). Returns segment indices per
    batch; within a batch they are in decreasing length.

    Example: pack_segments([300, 200, 250, 100], n_batch=512, max_seqs=8) -> [[0, 1], [2, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        if n > n_batch:
            batches.append([i])
            room.append(0)
            continue
        for b, free in enumerate(room):
            if free >= n and len(batches[b]) < max_seqs:
                batches[b].append(i)
                room[b] -= n
                break
        else:
            batches.append([i])
            room.append(n_batch - n)
    return batches
