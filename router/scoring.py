"""Token log-probabilities -> sequence scores: THE shared scorer of `serve` and `select`.

Every function here is pure and vectorised over a *ragged batch*: the chosen-token
log-probabilities of all sequences laid end to end in one flat array, plus each sequence's
length. No Python loop runs per token.

Signals (all oriented so that **higher = more confident / more familiar**):

==================  ====================================================================
mean_logprob        mean log-probability per token (length-normalised log-likelihood)
sum_logprob         total log-likelihood
min_logprob         the least likely token
quantile_logprob    the q-quantile of token log-probabilities (Gupta et al. 2024), q=0.1 default
neg_perplexity      -exp(-mean_logprob)
logprob_per_byte    total log-likelihood / UTF-8 bytes of the scored tokens (nats per byte);
                    tokenizer independent, the default for data selection
neg_bits_per_byte   -(bits per byte) = logprob_per_byte / ln 2
neg_mean_entropy    -(mean entropy of the top-k distribution). Entropy over a truncated top-k
                    is an approximation: the top-k log-probabilities are renormalised, so it is
                    a lower bound of the full entropy's effect and bounded by log k
mean_margin         mean of (top-1 minus top-2 log-probability), needs k >= 2
==================  ====================================================================

Informational values that are *not* confidence-oriented (`perplexity`, `bits_per_byte`,
`n_tokens`, `n_bytes`) are reported beside them but cannot be used as policy signals.

Every result carries the model id and `SCORER_VERSION`, so scores from different models or
scorer versions are never compared by accident.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router.errors import ScoringError

SCORER_VERSION = "1.0"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: name -> (needs top-k, takes q)
SIGNALS: dict[str, tuple[bool, bool]] = {
    "mean_logprob": (False, False),
    "sum_logprob": (False, False),
    "min_logprob": (False, False),
    "quantile_logprob": (False, True),
    "neg_perplexity": (False, False),
    "logprob_per_byte": (False, False),
    "neg_bits_per_byte": (False, False),
    "neg_mean_entropy": (True, False),
    "mean_margin": (True, False),
}
INFO_FIELDS = ("perplexity", "bits_per_byte", "n_tokens", "n_bytes")
DEFAULT_QUANTILE = 0.1
LN2 = math.log(2.0)


@dataclass(frozen=True)
class SignalSpec:
    """A signal and its parameter, e.g. `SignalSpec("quantile_logprob", q=0.1)`."""

    name: str
    q: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        if self.name not in SIGNALS:
            known = ", ".join(sorted(SIGNALS))
            raise ScoringError(f"unknown signal {self.name!r}; known signals: {known}")
        if not 0.0 <= self.q <= 1.0:
            raise ScoringError(f"signal {self.name}: q must be in [0, 1], got {self.q}")

    @property
    def needs_top_k(self) -> bool:
        return SIGNALS[self.name][0]

    @property
    def key(self) -> str:
        """Column name: `quantile_logprob` with q=0.1 -> `quantile_logprob_q0.1`."""
        return f"{self.name}_q{self.q:g}" if SIGNALS[self.name][1] else self.name

    @classmethod
    def parse(cls, text: str) -> SignalSpec:
        """`"quantile_logprob_q0.25"` or `"quantile_logprob:0.25"` -> SignalSpec(q=0.25)."""
        for sep in ("_q", ":"):
            head, _, tail = text.rpartition(sep)
            if head in SIGNALS and SIGNALS[head][1]:
                try:
                    return cls(head, q=float(tail))
                except ValueError:
                    raise ScoringError(f"bad quantile in signal {text!r}") from None
        return cls(text)


DEFAULT_SIGNALS: tuple[SignalSpec, ...] = tuple(SignalSpec(n) for n in SIGNALS)


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
    """Sequences laid end to end: `values[offsets[i]:offsets[i+1]]` is sequence i."""

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


def segment_sum(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Per-sequence sums. Example: ([1, 2, 3, 4], [1, 3]) -> [1, 9]."""
    seg = np.repeat(np.arange(len(lengths)), lengths)
    return np.bincount(seg, weights=values, minlength=len(lengths)).astype(np.float64)


def segment_mean(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Per-sequence means; NaN for an empty sequence. Example: ([1, 2, 3, 4], [1, 3]) -> [1, 3]."""
    sums = segment_sum(values, lengths)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)


def segment_quantile(values: FloatArray, lengths: IntArray, q: float) -> FloatArray:
    """Per-sequence q-quantile with linear interpolation (numpy's default method).

    Example: ([5, 1, 3, 9], [1, 3], q=0.5) -> [5, 3]. q=0 is the minimum.
    """
    n = len(lengths)
    out = np.full(n, np.nan)
    if values.size == 0:
        return out
    seg = np.repeat(np.arange(n), lengths)
    order = np.lexsort((values, seg))  # sort by segment, then value
    ranked = values[order]
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


def compute_signals(
    batch: RaggedBatch, specs: Sequence[SignalSpec] = DEFAULT_SIGNALS
) -> dict[str, FloatArray]:
    """All requested signals plus informational fields for every sequence in the batch.

    Signals that need top-k are NaN when the batch has none (or k < 2 for the margin).
    Example: one sequence with logprobs [-1, -3] and 2 bytes per token gives
    mean_logprob -2, sum_logprob -4, min_logprob -3, logprob_per_byte -1.
    """
    lengths = batch.lengths
    nan = np.full(len(lengths), np.nan)
    total = segment_sum(batch.values, lengths)
    mean = segment_mean(batch.values, lengths)
    nbytes = segment_sum(batch.token_bytes.astype(np.float64), lengths)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_byte = np.where(nbytes > 0, total / np.maximum(nbytes, 1.0), np.nan)
        perplexity = np.exp(-mean)
    out: dict[str, FloatArray] = {
        "n_tokens": lengths.astype(np.float64),
        "n_bytes": nbytes,
        "perplexity": perplexity,
        "bits_per_byte": -per_byte / LN2,
    }
    for spec in specs:
        if spec.name == "mean_logprob":
            value = mean
        elif spec.name == "sum_logprob":
            value = total
        elif spec.name == "min_logprob":
            value = segment_quantile(batch.values, lengths, 0.0)
        elif spec.name == "quantile_logprob":
            value = segment_quantile(batch.values, lengths, spec.q)
        elif spec.name == "neg_perplexity":
            value = -perplexity
        elif spec.name == "logprob_per_byte":
            value = per_byte
        elif spec.name == "neg_bits_per_byte":
            value = per_byte / LN2
        elif spec.name == "neg_mean_entropy":
            value = nan if batch.top is None else -segment_mean(topk_entropy(batch.top), lengths)
        elif spec.name == "mean_margin":
            if batch.top is None or batch.top.shape[1] < 2:
                value = nan
            else:
                value = segment_mean(batch.top[:, 0] - batch.top[:, 1], lengths)
        else:  # pragma: no cover - SignalSpec validates names
            raise ScoringError(f"unknown signal {spec.name}")
        out[spec.key] = value
    return out


def sequence_signal(seq: TokenLogprobs, spec: SignalSpec) -> float:
    """One signal of one sequence without building a batch: the serving hot path (a running
    confidence after every streamed token). Equals `compute_signals` on a batch of one.

    Example: logprobs [-1, -3], 2 bytes each: mean_logprob -> -2.0, logprob_per_byte -> -1.0.
    NaN for an empty sequence, or a top-k signal without top-k.
    """
    v = seq.logprobs
    if v.size == 0:
        return math.nan
    name = spec.name
    if name in ("mean_logprob", "neg_perplexity"):
        mean = float(v.sum()) / v.size
        return mean if name == "mean_logprob" else -math.exp(-mean)
    if name == "sum_logprob":
        return float(v.sum())
    if name == "min_logprob":
        return float(v.min())
    if name == "quantile_logprob":
        return float(np.quantile(v, spec.q))
    if name in ("logprob_per_byte", "neg_bits_per_byte"):
        nbytes = int(seq.token_bytes.sum())
        if nbytes <= 0:
            return math.nan
        per_byte = float(v.sum()) / nbytes
        return per_byte if name == "logprob_per_byte" else per_byte / LN2
    top = seq.top_logprobs
    if name == "neg_mean_entropy":
        return math.nan if top is None else -float(topk_entropy(top).mean())
    if name == "mean_margin":
        if top is None or top.shape[1] < 2:
            return math.nan
        return float((top[:, 0] - top[:, 1]).mean())
    raise ScoringError(f"unknown signal {name}")  # pragma: no cover - SignalSpec validates


@dataclass(frozen=True)
class ScoreResult:
    """Signals of a batch of sequences, stamped with the model and scorer version."""

    model: str
    signals: dict[str, FloatArray]
    scorer_version: str = SCORER_VERSION
    extra: Mapping[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.signals["n_tokens"])

    def row(self, i: int) -> dict[str, float | str]:
        """One sequence's signals as a JSON-friendly dict (NaN -> None is left to the caller)."""
        out: dict[str, float | str] = {k: float(v[i]) for k, v in self.signals.items()}
        out["model"] = self.model
        out["scorer_version"] = self.scorer_version
        return out

    def signal(self, spec: SignalSpec) -> FloatArray:
        if spec.key not in self.signals:
            raise ScoringError(f"signal {spec.key} was not computed for model {self.model}")
        return self.signals[spec.key]


def score_sequences(
    model: str,
    seqs: Sequence[TokenLogprobs],
    specs: Sequence[SignalSpec] = DEFAULT_SIGNALS,
) -> ScoreResult:
    """Token logprobs of several sequences -> their signals, stamped with `model`."""
    return ScoreResult(
        model=model, signals=compute_signals(RaggedBatch.from_sequences(seqs), specs)
    )


def check_comparable(a: ScoreResult, b: ScoreResult) -> None:
    """Refuse to compare scores of different models or scorer versions."""
    if (a.model, a.scorer_version) != (b.model, b.scorer_version):
        raise ScoringError(
            f"scores are not comparable: {a.model} (scorer {a.scorer_version}) vs "
            f"{b.model} (scorer {b.scorer_version})"
        )


@dataclass(frozen=True)
class Window:
    """Evaluate tokens [start, end) and keep the log-probabilities of tokens [score_from, end)."""

    start: int
    end: int
    score_from: int


def window_plan(n_tokens: int, window: int, stride: int) -> list[Window]:
    """Strided windows that score every token exactly once, each with its own left context.

    The first window scores all its tokens; each later window advances by `stride` tokens and
    scores only the tokens no earlier window scored, conditioned on up to `window - stride`
    preceding tokens. A text that fits in one window gets exactly one window.

    Example: window_plan(10, 4, 2) ->
        [Window(0, 4, 0), Window(2, 6, 4), Window(4, 8, 6), Window(6, 10, 8)]
    """
    if window < 2:
        raise ScoringError(f"window must be at least 2 tokens, got {window}")
    if not 0 < stride <= window:
        raise ScoringError(f"stride must be in (0, window], got {stride} for window {window}")
    if n_tokens <= window:
        return [Window(0, n_tokens, 0)]
    plan = [Window(0, window, 0)]
    scored = window
    start = 0
    while scored < n_tokens:
        start += stride
        end = min(start + window, n_tokens)
        # the last window keeps a full window of context rather than starting late
        plan.append(Window(max(0, end - window), end, scored))
        scored = end
    return plan
