"""Ragged batches of token log-probabilities and the per-segment primitives that the signals in
`router.scoring` are written in.

A ragged batch lays the chosen-token log-probabilities of all its sequences end to end in one
flat array, with each sequence's length: `values[offsets[i]:offsets[i+1]]` is sequence i. The
primitives reduce each sequence without a Python loop per token, and take a shortcut for a
batch of one (the serving hot path), so a signal needs no second single-sequence definition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from router.errors import ScoringError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_T = TypeVar("_T")


class _once(Generic[_T]):  # lower case: used like @property
    """An attribute computed on first use, then stored on the instance (what
    `functools.cached_property` does, without the lock it takes on Python 3.11)."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn, self.name = fn, fn.__name__

    def __get__(self, obj: Any, owner: type | None = None) -> _T:
        value = self.fn(obj)
        obj.__dict__[self.name] = value  # shadows this descriptor from now on
        return value


@dataclass(frozen=True)
class TokenLogprobs:
    """The scored tokens of one sequence under one model.

    logprobs:     (n,) log-probability of each chosen token
    token_bytes:  (n,) UTF-8 byte length of each token (for per-byte normalisation)
    top_logprobs: (n, k) top-k log-probabilities per position, sorted descending, or None
    tokens:       the token strings, when the backend returns them (display only)
    """

    logprobs: FloatArray
    token_bytes: IntArray
    top_logprobs: FloatArray | None = None
    tokens: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.logprobs.shape != self.token_bytes.shape or self.logprobs.ndim != 1:
            raise ScoringError(
                f"logprobs {self.logprobs.shape} and token_bytes {self.token_bytes.shape} differ"
            )
        if self.top_logprobs is not None and self.top_logprobs.shape[0] != len(self.logprobs):
            raise ScoringError("top_logprobs must have one row per token")

    def __len__(self) -> int:
        return len(self.logprobs)

    @classmethod
    def built(cls, logprobs: FloatArray, token_bytes: IntArray,
              top_logprobs: FloatArray | None = None,
              tokens: tuple[str, ...] | None = None) -> TokenLogprobs:
        """Without `__post_init__`'s shape checks: for a parser that built the columns with
        one length itself (a streamed token is one such call per token, and the checks and
        the frozen dataclass's `__init__` were a third of its parse)."""
        obj = object.__new__(cls)
        obj.__dict__.update(logprobs=logprobs, token_bytes=token_bytes,
                            top_logprobs=top_logprobs, tokens=tokens)
        return obj

    @classmethod
    def from_lists(
        cls,
        logprobs: Sequence[float],
        token_bytes: Sequence[int],
        top_logprobs: Sequence[Sequence[float]] | None = None,
        tokens: Sequence[str] | None = None,
    ) -> TokenLogprobs:
        top = None
        if top_logprobs is not None and len(top_logprobs) > 0:
            k = min(len(row) for row in top_logprobs)
            if k > 0:
                if all(len(row) == k for row in top_logprobs):  # the usual case: one sort
                    top = -np.sort(-np.asarray(top_logprobs, dtype=np.float64), axis=1)
                else:
                    top = np.array([sorted(row, reverse=True)[:k] for row in top_logprobs],
                                   np.float64)
        return cls(
            np.asarray(logprobs, dtype=np.float64),
            np.asarray(token_bytes, dtype=np.int64),
            top,
            tuple(tokens) if tokens is not None else None,
        )

    def concat(self, other: TokenLogprobs) -> TokenLogprobs:
        """Append another run of tokens (windows of one document, chunks of one stream)."""
        top = None
        if self.top_logprobs is not None and other.top_logprobs is not None:
            k = min(self.top_logprobs.shape[1], other.top_logprobs.shape[1])
            top = np.concatenate([self.top_logprobs[:, :k], other.top_logprobs[:, :k]])
        toks = None
        if self.tokens is not None and other.tokens is not None:
            toks = self.tokens + other.tokens
        return TokenLogprobs(
            np.concatenate([self.logprobs, other.logprobs]),
            np.concatenate([self.token_bytes, other.token_bytes]),
            top,
            toks,
        )


@dataclass(frozen=True)
class RaggedBatch:
    """Sequences laid end to end: `values[offsets[i]:offsets[i+1]]` is sequence i.

    The per-sequence sums, means and byte counts that several signals share are computed once
    per batch, on first use.
    """

    values: FloatArray  # (total,)
    lengths: IntArray  # (batch,)
    token_bytes: IntArray  # (total,)
    top: FloatArray | None = None  # (total, k)

    @property
    def offsets(self) -> IntArray:
        return np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    @property
    def segment_ids(self) -> IntArray:
        return np.repeat(np.arange(len(self.lengths), dtype=np.int64), self.lengths)

    @property
    def k(self) -> int:
        """Top log-probabilities per position (0 without any)."""
        return 0 if self.top is None else int(self.top.shape[1])

    @_once
    def sums(self) -> FloatArray:
        """(batch,) total log-likelihood."""
        return segment_sum(self.values, self.lengths)

    @_once
    def means(self) -> FloatArray:
        """(batch,) mean log-probability per token; NaN for an empty sequence."""
        return _ratio(self.sums, self.lengths)

    @_once
    def n_bytes(self) -> FloatArray:
        """(batch,) UTF-8 bytes of the scored tokens."""
        return segment_sum(self.token_bytes.astype(np.float64), self.lengths)

    @_once
    def per_byte(self) -> FloatArray:
        """(batch,) log-likelihood per byte (nats); NaN without bytes."""
        return _ratio(self.sums, self.n_bytes)

    def top_rows(self) -> FloatArray:
        """(total, k) top-k log-probabilities; only called by signals that declare `min_k`."""
        if self.top is None:  # pragma: no cover - token_signal checks min_k first
            raise ScoringError("this signal needs top-k log-probabilities")
        return self.top

    @classmethod
    def of(cls, seq: TokenLogprobs) -> RaggedBatch:
        """A batch of one, without copying: the serving hot path."""
        return cls(seq.logprobs, np.array([len(seq)], np.int64), seq.token_bytes,
                   seq.top_logprobs)

    @classmethod
    def from_sequences(cls, seqs: Sequence[TokenLogprobs]) -> RaggedBatch:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        values = np.concatenate([s.logprobs for s in seqs]) if seqs else np.zeros(0, np.float64)
        nbytes = np.concatenate([s.token_bytes for s in seqs]) if seqs else np.zeros(0, np.int64)
        top = None
        if seqs and all(s.top_logprobs is not None for s in seqs):
            k = min(s.top_logprobs.shape[1] for s in seqs if s.top_logprobs is not None)
            top = np.concatenate(
                [s.top_logprobs[:, :k] for s in seqs if s.top_logprobs is not None]
            )
        return cls(values.astype(np.float64), lengths, nbytes.astype(np.int64), top)


def ragged(*seqs: Sequence[float], nbytes: int = 1) -> RaggedBatch:
    """A batch from plain lists (examples and tests), `nbytes` bytes per token.

    Example: ragged([-1, -3], [-2]) -> values [-1, -3, -2], lengths [2, 1].
    """
    return RaggedBatch.from_sequences(
        [TokenLogprobs(np.asarray(s, np.float64), np.full(len(s), nbytes, np.int64))
         for s in seqs])


# -- per-segment primitives -------------------------------------------------------------------


def _ratio(num: FloatArray, den: FloatArray | IntArray) -> FloatArray:
    """num / den where den > 0, else NaN. Example: ([4, 1], [2, 0]) -> [2, nan]."""
    if den.shape == (1,):  # a batch of one: a scalar test, no masked divide
        d = float(den[0])
        return num / d if d > 0 else np.full(1, np.nan)
    return np.asarray(num / np.where(den > 0, den, np.nan), np.float64)  # x / nan: no warning


def segment_sum(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Per-sequence sums. Example: ([1, 2, 3, 4], [1, 3]) -> [1, 9]."""
    if len(lengths) == 1:  # a batch of one: no segment bookkeeping
        return np.add.reduce(values, keepdims=True, dtype=np.float64)
    seg = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(seg, weights=values, minlength=len(lengths)).astype(np.float64)


def segment_mean(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Per-sequence means; NaN for an empty sequence. Example: ([1, 2, 3, 4], [1, 3]) -> [1, 3]."""
    return _ratio(segment_sum(values, lengths), lengths)


def segment_min(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Per-sequence minimum; NaN for an empty one. Example: ([5, 1, 3, 9], [1, 3]) -> [5, 1]."""
    if len(lengths) == 1 and values.size:  # a batch of one
        return np.minimum.reduce(values, keepdims=True)
    out = np.full(len(lengths), np.nan)
    nonempty = lengths > 0
    if values.size:  # reduceat over the starts of the non-empty sequences only
        out[nonempty] = np.minimum.reduceat(values, (np.cumsum(lengths) - lengths)[nonempty])
    return out


def segment_quantile(values: FloatArray, lengths: IntArray, q: float) -> FloatArray:
    """Per-sequence q-quantile with linear interpolation (numpy's default method).

    Example: ([5, 1, 3, 9], [1, 3], q=0.5) -> [5, 3]. q=0 is the minimum.
    """
    n = len(lengths)
    out = np.full(n, np.nan)
    if values.size == 0:
        return out
    if n == 1:  # a batch of one: one sort, scalar interpolation
        ranked = np.sort(values)
        at = q * (values.size - 1)
        i = math.floor(at)
        w = at - i
        out[0] = ranked[i] * (1.0 - w) + ranked[min(i + 1, values.size - 1)] * w
        return out
    seg = np.repeat(np.arange(n), lengths)
    ranked = values[np.lexsort((values, seg))]  # sort by segment, then value
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    nonempty = lengths > 0
    pos = q * (lengths[nonempty] - 1).astype(np.float64)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, lengths[nonempty] - 1)
    frac = pos - lo
    base = starts[nonempty]
    out[nonempty] = ranked[base + lo] * (1.0 - frac) + ranked[base + hi] * frac
    return out


def topk_entropy(top: FloatArray) -> FloatArray:
    """Entropy (nats) of each row's top-k distribution, renormalised over the k entries.

    Example: [[log .5, log .5]] -> [0.693...]. Rows of -inf only give NaN.
    """
    m = np.max(top, axis=1, keepdims=True)
    shifted = top - m
    p = np.exp(shifted)
    z = p.sum(axis=1, keepdims=True)
    logq = shifted - np.log(z)
    q = p / z
    return np.asarray(-(q * np.where(q > 0, logq, 0.0)).sum(axis=1), dtype=np.float64)
