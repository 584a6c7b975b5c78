"""Token log-probabilities -> sequence scores: THE shared scorer of `serve` and `select`.

Every signal is one pure function over a *ragged batch* (`router.ragged`): the chosen-token
log-probabilities of all sequences laid end to end in one flat array, plus each sequence's
length. No Python loop runs per token, and the single-sequence hot path of `serve` (a running
confidence after every streamed token) is the same function on a batch of one.

Signals (all oriented so that **higher = more confident / more familiar**), the `SIGNALS` table:

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

Adding a token signal is one entry in `SIGNALS`: a function `(RaggedBatch, q) -> (n_seqs,)`
with an example in its docstring. An empty sequence scores NaN for every signal, and a signal
that needs k top log-probabilities scores NaN without them; both rules live in `token_signal`.

Request-level features (`FEATURES`) are signals that are not functions of the answer's token
logprobs (a verifier's P(yes), agreement between samples, ...): the caller measures them and
passes them by name, and `compute_signals` / `signal_vector` merge them with the token signals
into one flat `name -> value` mapping, so a policy names either kind the same way. A feature
the caller did not measure is NaN (nothing to score).

Informational values that are *not* confidence-oriented (`perplexity`, `bits_per_byte`,
`n_tokens`, `n_bytes`, the `INFO` table) are reported beside them but cannot be policy signals.

Every result carries the model id and `SCORER_VERSION`, so scores from different models or
scorer versions are never compared by accident.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from router.errors import InputError, RouterError, ScoringError
from router.ragged import (
    FloatArray,
    IntArray,
    RaggedBatch,
    TokenLogprobs,
    ragged,
    segment_mean,
    segment_min,
    segment_quantile,
    topk_entropy,
)

__all__ = [
    "DEFAULT_SIGNALS",
    "FEATURES",
    "INFO",
    "RUNNING_SIGNALS",
    "SCORER_VERSION",
    "SIGNALS",
    "Feature",
    "FloatArray",
    "IntArray",
    "RaggedBatch",
    "RunningSignal",
    "ScoreResult",
    "SignalSpec",
    "TokenLogprobs",
    "TokenSignal",
    "Window",
    "check_comparable",
    "compute_signals",
    "parse_signal_option",
    "ragged",
    "score_sequences",
    "sequence_signal",
    "signal_values",
    "signal_vector",
    "token_signal",
    "window_plan",
]

SCORER_VERSION = "1.0"
DEFAULT_QUANTILE = 0.1
LN2 = math.log(2.0)


# -- the signals: one pure function each, (batch, q) -> (n_seqs,) -------------------------------


def mean_logprob(b: RaggedBatch, q: float) -> FloatArray:
    """Mean log-probability per token. Example: ragged([-1, -3], [-2]) -> [-2, -2]."""
    return b.means


def sum_logprob(b: RaggedBatch, q: float) -> FloatArray:
    """Total log-likelihood. Example: ragged([-1, -3], [-2]) -> [-4, -2]."""
    return b.sums


def min_logprob(b: RaggedBatch, q: float) -> FloatArray:
    """The least likely token. Example: ragged([-1, -3], [-2]) -> [-3, -2]."""
    return segment_min(b.values, b.lengths)


def quantile_logprob(b: RaggedBatch, q: float) -> FloatArray:
    """The q-quantile of token log-probabilities. Example: q=0.5, ragged([-1, -3], [-2]) ->
    [-2, -2]."""
    return segment_quantile(b.values, b.lengths, q)


def neg_perplexity(b: RaggedBatch, q: float) -> FloatArray:
    """-exp(-mean_logprob). Example: ragged([-1, -3]) -> [-e^2] = [-7.389...]."""
    with np.errstate(over="ignore"):
        return np.asarray(-np.exp(-b.means), np.float64)


def logprob_per_byte(b: RaggedBatch, q: float) -> FloatArray:
    """Log-likelihood per UTF-8 byte (nats). Example: ragged([-1, -3], nbytes=2) -> [-1]."""
    return b.per_byte


def neg_bits_per_byte(b: RaggedBatch, q: float) -> FloatArray:
    """-(bits per byte). Example: ragged([-1, -3], nbytes=2) -> [-1 / ln 2] = [-1.4427...]."""
    return b.per_byte / LN2


def neg_mean_entropy(b: RaggedBatch, q: float) -> FloatArray:
    """-(mean top-k entropy per token). Example: one token with top [log .5, log .5] ->
    [-ln 2]."""
    return -segment_mean(topk_entropy(b.top_rows()), b.lengths)


def mean_margin(b: RaggedBatch, q: float) -> FloatArray:
    """Mean of top-1 minus top-2 log-probability. Example: tops [[-0.1, -1.1], [-0.2, -2.2]]
    in one sequence -> [1.5]."""
    top = b.top_rows()
    return segment_mean(top[:, 0] - top[:, 1], b.lengths)


SignalFn = Callable[[RaggedBatch, float], FloatArray]  # (batch, q) -> (n_seqs,)


@dataclass(frozen=True)
class TokenSignal:
    """A table entry: the function, how many top-k log-probabilities it needs, whether it takes
    the quantile parameter q (then its column is `name_q<q>`)."""

    fn: SignalFn
    min_k: int = 0
    takes_q: bool = False


#: name -> signal; the one place a token signal is defined
SIGNALS: dict[str, TokenSignal] = {
    "mean_logprob": TokenSignal(mean_logprob),
    "sum_logprob": TokenSignal(sum_logprob),
    "min_logprob": TokenSignal(min_logprob),
    "quantile_logprob": TokenSignal(quantile_logprob, takes_q=True),
    "neg_perplexity": TokenSignal(neg_perplexity),
    "logprob_per_byte": TokenSignal(logprob_per_byte),
    "neg_bits_per_byte": TokenSignal(neg_bits_per_byte),
    "neg_mean_entropy": TokenSignal(neg_mean_entropy, min_k=1),
    "mean_margin": TokenSignal(mean_margin, min_k=2),
}


@dataclass(frozen=True)
class Feature:
    """A request-level signal: measured by the caller, not computed from token logprobs."""

    description: str


#: name -> request-level feature, merged into the signal mapping; measured by the confidence
#: probes of `router.probes` (each at a cost in tier-0 tokens and time, reported by eval)
FEATURES: dict[str, Feature] = {
    "verify_p_yes": Feature("self-verification: P(yes) / (P(yes) + P(no)) when tier 0 reads "
                            "'question, proposed answer: is it correct?' (Kadavath et al.)"),
    "consistency": Feature("agreement of the greedy answer with k sampled answers of tier 0"),
    "prompt_logprob_per_byte": Feature("prompt familiarity: the question's own log-likelihood "
                                       "per byte under tier 0"),
    "answer_tokens": Feature("answer length in tokens (not oriented: for learned rules)"),
    "truncated": Feature("1 when the answer hit max_tokens (not oriented: for learned rules)"),
}


def _info_perplexity(b: RaggedBatch) -> FloatArray:
    with np.errstate(over="ignore"):
        return np.asarray(np.exp(-b.means), np.float64)


#: informational columns, not confidence-oriented: reported beside the signals, never policies
INFO: dict[str, Callable[[RaggedBatch], FloatArray]] = {
    "n_tokens": lambda b: b.lengths.astype(np.float64),
    "n_bytes": lambda b: b.n_bytes,
    "perplexity": _info_perplexity,
    "bits_per_byte": lambda b: -b.per_byte / LN2,
}
INFO_FIELDS = tuple(INFO)


@dataclass(frozen=True)
class SignalSpec:
    """A signal and its parameter, e.g. `SignalSpec("quantile_logprob", q=0.1)`; the name is a
    token signal (`SIGNALS`) or a request-level feature (`FEATURES`)."""

    name: str
    q: float = DEFAULT_QUANTILE

    def __post_init__(self) -> None:
        if self.name not in SIGNALS and self.name not in FEATURES:
            known = ", ".join(sorted([*SIGNALS, *FEATURES]))
            raise ScoringError(f"unknown signal {self.name!r}; known signals: {known}")
        if not 0.0 <= self.q <= 1.0:
            raise ScoringError(f"signal {self.name}: q must be in [0, 1], got {self.q}")

    @property
    def is_feature(self) -> bool:
        return self.name in FEATURES

    @property
    def needs_top_k(self) -> bool:
        return not self.is_feature and SIGNALS[self.name].min_k > 0

    @property
    def takes_q(self) -> bool:
        return not self.is_feature and SIGNALS[self.name].takes_q

    @property
    def key(self) -> str:
        """Column name: `quantile_logprob` with q=0.1 -> `quantile_logprob_q0.1`."""
        return f"{self.name}_q{self.q:g}" if self.takes_q else self.name

    @classmethod
    def parse(cls, text: str) -> SignalSpec:
        """`"quantile_logprob_q0.25"` or `"quantile_logprob:0.25"` -> SignalSpec(q=0.25)."""
        for sep in ("_q", ":"):
            head, _, tail = text.rpartition(sep)
            if head in SIGNALS and SIGNALS[head].takes_q:
                try:
                    return cls(head, q=float(tail))
                except ValueError:
                    raise ScoringError(f"bad quantile in signal {text!r}") from None
        return cls(text)


DEFAULT_SIGNALS: tuple[SignalSpec, ...] = tuple(SignalSpec(n) for n in SIGNALS)


def parse_signal_option(text: str, option: str = "--signal") -> SignalSpec:
    """A signal named on the command line; a bad one is an input error naming the option.

    Example: parse_signal_option("quantile_logprob:0.25").key -> "quantile_logprob_q0.25".
    """
    try:
        return SignalSpec.parse(text)
    except RouterError as exc:
        raise InputError(f"{option}: {exc.message}") from None


# -- scoring ----------------------------------------------------------------------------------


def token_signal(batch: RaggedBatch, spec: SignalSpec) -> FloatArray:
    """One token signal of every sequence in the batch: (n_seqs,). NaN for an empty sequence,
    and for every sequence when the batch has fewer top-k log-probabilities than it needs.

    Example: mean_logprob of ragged([-1, -3], []) -> [-2, nan].
    """
    sig = SIGNALS[spec.name]
    n = len(batch.lengths)
    if batch.k < sig.min_k or (n == 1 and batch.lengths[0] == 0):
        return np.full(n, np.nan)
    value = sig.fn(batch, spec.q)
    return value if n == 1 else np.where(batch.lengths > 0, value, np.nan)


def feature_column(features: Mapping[str, npt.ArrayLike] | None, name: str,
                   n: int) -> FloatArray:
    """A request-level feature's (n,) values; NaN where the caller did not measure it.

    Example: ({"p_yes": [0.9, 0.2]}, "p_yes", 2) -> [0.9, 0.2]; ({}, "p_yes", 2) -> [nan, nan].
    """
    if name not in FEATURES:
        known = ", ".join(sorted(FEATURES)) or "none registered"
        raise ScoringError(f"unknown request-level feature {name!r}; known features: {known}")
    if features is None or name not in features:
        return np.full(n, np.nan)
    col = np.asarray(features[name], dtype=np.float64).reshape(-1)
    if col.shape != (n,):
        raise ScoringError(f"feature {name}: {col.size} values for {n} sequences")
    return col


def compute_signals(
    batch: RaggedBatch,
    specs: Sequence[SignalSpec] = DEFAULT_SIGNALS,
    features: Mapping[str, npt.ArrayLike] | None = None,
) -> dict[str, FloatArray]:
    """The informational columns, every requested signal and every given request-level
    feature, for every sequence in the batch: one flat `key -> (n_seqs,)` mapping.

    Example: one sequence with logprobs [-1, -3] and 2 bytes per token gives
    mean_logprob -2, sum_logprob -4, min_logprob -3, logprob_per_byte -1.
    """
    n = len(batch.lengths)
    out = {name: info(batch) for name, info in INFO.items()}
    for spec in specs:
        if spec.is_feature:
            out[spec.key] = feature_column(features, spec.name, n)
        else:
            out[spec.key] = token_signal(batch, spec)
    for name in features or {}:
        out[name] = feature_column(features, name, n)
    return out


def signal_vector(seq: TokenLogprobs, specs: Sequence[SignalSpec] = DEFAULT_SIGNALS,
                  features: Mapping[str, float] | None = None) -> dict[str, float]:
    """One answer's flat `key -> value` mapping: `compute_signals` on a batch of one.

    Example: logprobs [-1, -3], 2 bytes each, features {"p_yes": 0.9} (a registered feature)
    -> {"n_tokens": 2.0, ..., "mean_logprob": -2.0, ..., "p_yes": 0.9}.
    """
    cols = compute_signals(RaggedBatch.of(seq), specs,
                           {k: [v] for k, v in (features or {}).items()})
    return {k: float(v[0]) for k, v in cols.items()}


def sequence_signal(seq: TokenLogprobs, spec: SignalSpec,
                    features: Mapping[str, float] | None = None) -> float:
    """One signal of one answer: `token_signal` on a batch of one (no copies), or the named
    request-level feature. The serving hot path (a running confidence after every token).

    Example: logprobs [-1, -3], 2 bytes each: mean_logprob -> -2.0, logprob_per_byte -> -1.0.
    NaN for an empty sequence, or a top-k signal without top-k.
    """
    if spec.is_feature:
        value = (features or {}).get(spec.name)
        return float(feature_column({spec.name: [math.nan if value is None else value]},
                                    spec.name, 1)[0])
    if spec.name in RUNNING_SIGNALS:  # a sum, count and minimum: plain floats beat numpy here
        running = RunningSignal(spec)
        running.add(seq)
        return running.value()
    return float(token_signal(RaggedBatch.of(seq), spec)[0])


def signal_values(seq: TokenLogprobs, specs: Sequence[SignalSpec],
                  features: Mapping[str, float] | None = None) -> dict[str, float]:
    """Only the named signals of one answer (`signal_vector` without its informational
    columns): what a learned rule reads on the request path.

    Example: logprobs [-1, -3], 2 bytes each, [mean_logprob] -> {"mean_logprob": -2.0}.
    """
    return {spec.key: sequence_signal(seq, spec, features) for spec in specs}


#: token signals that a running sum, count, byte count and minimum give: a stream's running
#: confidence under them costs O(delta) per token (`RunningSignal`)
RUNNING_SIGNALS = frozenset({"mean_logprob", "sum_logprob", "min_logprob", "neg_perplexity",
                             "logprob_per_byte", "neg_bits_per_byte"})


class RunningSignal:
    """One token signal of a growing sequence, O(delta) per `add`: what `sequence_signal` gives
    on every token added so far (up to float rounding: sums are accumulated, not pairwise).
    The running confidence of a stream, checked after every delta.

    >>> r = RunningSignal(SignalSpec("mean_logprob"))
    >>> r.value()
    nan
    >>> r.add(TokenLogprobs(np.array([-1.0]), np.array([2])))
    >>> r.add(TokenLogprobs(np.array([-3.0]), np.array([2])))
    >>> r.value()
    -2.0
    """

    def __init__(self, spec: SignalSpec) -> None:
        if spec.name not in RUNNING_SIGNALS:
            raise ScoringError(f"signal {spec.key} has no running form")
        self.name = spec.name
        self.n = 0
        self.total = 0.0  # NaN once any token's logprob is NaN, as numpy's sum
        self.n_bytes = 0
        self.low = math.inf

    def add(self, seq: TokenLogprobs) -> None:
        if not len(seq):
            return
        values = seq.logprobs.tolist()
        self.n += len(values)
        self.total += sum(values)
        self.n_bytes += sum(seq.token_bytes.tolist())
        self.low = min(self.low, *values)

    def value(self) -> float:
        if self.n == 0:
            return math.nan
        name, total = self.name, self.total
        if name == "sum_logprob":
            return total
        if name == "min_logprob":
            return math.nan if math.isnan(total) else self.low  # min() skips NaN; numpy doesn't
        mean = total / self.n
        if name == "mean_logprob":
            return mean
        if name == "neg_perplexity":
            try:
                return -math.exp(-mean)
            except OverflowError:
                return -math.inf
        per_byte = total / self.n_bytes if self.n_bytes > 0 else math.nan
        return per_byte if name == "logprob_per_byte" else per_byte / LN2


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
