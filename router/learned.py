"""A learned deferral rule: a logistic regression over named confidence features.

Gupta et al. (ICLR 2024) found that quantiles of token probabilities combined by a small learned
rule beat any single signal. `router calibrate --learn` fits the weights (scikit-learn, at
calibration time only); here they are applied with numpy, so `serve` never imports scikit-learn:

    score = intercept + sum_j weights[j] * (x_j - center[j]) / scale[j]

is the log-odds that tier 0's answer is correct (higher = more confident, like every signal).
A missing feature (NaN: e.g. no yes/no among the verifier's top tokens) contributes nothing: it
is replaced by its center, the training mean. In a policy file:

```yaml
signal:
  name: learned
  features: [quantile_logprob_q0.1, verify_p_yes, consistency]
  center: [-1.9, 0.61, 0.55]
  scale: [0.8, 0.2, 0.35]
  weights: [0.9, 0.4, 1.3]
  intercept: -0.2
  fitted: {model: smollm2-135m-instruct, scorer_version: "1.0", data: ..., n: 80, cv_auroc: 0.86}
  text:                       # optional: words of the question and the answer
    - {field: question, ngrams: 2, scale: 1.0, terms: {"what is": [1.69, -0.41], ...}}
```

A `text` block adds its field's TF-IDF terms times their weights (router.text_features) to the
log-odds; a rule with text blocks is scored with the question and the answer
(`texts={"question": ..., "answer": ...}`). A missing field adds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from router.errors import PolicyError, ScoringError
from router.probes import is_probe_feature
from router.scoring import SignalSpec, TokenLogprobs, sequence_signal, signal_values
from router.text_features import ANSWER, TextBlock, Texts, text_block_from_dict

LEARNED = "learned"


def feature_spec(name: str) -> SignalSpec | None:
    """The token-logprob signal behind a feature name, or None for a probe feature; an unknown
    name is an error. Example: "quantile_logprob_q0.25" -> SignalSpec(q=0.25)."""
    spec = SignalSpec.parse(name)
    return None if spec.is_feature else spec


@dataclass(frozen=True)
class LearnedSignal:
    """Logistic-regression weights over standardised features (see the module docstring)."""

    features: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    intercept: float
    fitted: Mapping[str, Any] = field(default_factory=dict)
    text: tuple[TextBlock, ...] = ()

    def __post_init__(self) -> None:
        d = len(self.features)
        if d == 0 and not self.text:
            raise PolicyError("a learned signal needs at least one feature or text block")
        fields = [b.field for b in self.text]
        if len(set(fields)) != len(fields):
            raise PolicyError("learned signal: one text block per field")
        for key in ("center", "scale", "weights"):
            vals = getattr(self, key)
            if len(vals) != d:
                raise PolicyError(f"learned signal: {key} has {len(vals)} values for {d} "
                                  "features")
            if not all(math.isfinite(v) for v in vals):
                raise PolicyError(f"learned signal: {key} must be finite numbers")
        if any(s <= 0 for s in self.scale):
            raise PolicyError("learned signal: every scale must be positive")
        if len(set(self.features)) != d:
            raise PolicyError("learned signal: features must be distinct")
        for f in self.features:
            try:
                feature_spec(f)
            except ScoringError as exc:
                raise PolicyError(f"learned signal: feature {f!r}: {exc.message}") from None

    @property
    def key(self) -> str:
        return LEARNED

    @property
    def needs_top_k(self) -> bool:
        return any(s is not None and s.needs_top_k for s in self.token_specs)

    @property
    def token_specs(self) -> tuple[SignalSpec | None, ...]:
        """Per feature, its token-logprob signal (None for probe features)."""
        return tuple(feature_spec(f) for f in self.features)

    @property
    def probe_features(self) -> tuple[str, ...]:
        return tuple(f for f in self.features if is_probe_feature(f))

    @property
    def reads_answer_text(self) -> bool:
        """True when a text block reads the answer: it is judged on the whole answer."""
        return any(b.field == ANSWER for b in self.text)

    def text_scores(self, texts: Texts | None) -> dict[str, float]:
        """Each text block's share of the log-odds, keyed `text:FIELD` (0 for a missing
        field). Example: no blocks -> {}."""
        got = texts or {}
        return {f"text:{b.field}": b.score(got.get(b.field, "")) for b in self.text}

    def score_matrix(self, x: npt.ArrayLike,
                     texts: Sequence[Texts] | None = None) -> npt.NDArray[np.float64]:
        """(n, d) feature rows in `features` order (and, with text blocks, each row's texts)
        -> (n,) log-odds of a correct answer.

        >>> s = LearnedSignal(("consistency", "truncated"), (0.5, 0.0), (0.25, 1.0),
        ...                   (2.0, -1.0), 0.5)
        >>> s.score_matrix([[1.0, 0.0], [0.25, 1.0], [float("nan"), 0.0]]).tolist()
        [4.5, -2.5, 0.5]
        """
        m = np.asarray(x, dtype=np.float64)
        out = self._dense(m)
        if self.text:
            if texts is None or len(texts) != m.shape[0]:
                raise ScoringError("learned signal: its text blocks need each row's question "
                                   "and answer")
            out = out + np.array([sum(self.text_scores(t).values()) for t in texts])
        return out

    def _dense(self, m: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if m.ndim != 2 or m.shape[1] != len(self.features):
            raise ScoringError(f"learned signal: expected (n, {len(self.features)}) features, "
                               f"got {m.shape}")
        with np.errstate(invalid="ignore"):
            z = (m - np.asarray(self.center)) / np.asarray(self.scale)
        z = np.where(np.isfinite(z), z, 0.0)  # a missing feature sits at its training mean
        return np.asarray(z @ np.asarray(self.weights) + self.intercept, dtype=np.float64)

    def score_parts(self, values: Mapping[str, float], texts: Texts | None = None
                    ) -> tuple[float, dict[str, float]]:
        """One request's log-odds from a `name -> value` mapping (missing names are NaN) and,
        with text blocks, its question and answer; and each text block's share of it."""
        row = np.array([[float(values.get(f, math.nan)) for f in self.features]])
        shares = self.text_scores(texts)
        return float(self._dense(row)[0]) + sum(shares.values()), shares

    def score(self, values: Mapping[str, float], texts: Texts | None = None) -> float:
        """`score_parts` without the shares."""
        return self.score_parts(values, texts)[0]

    def to_dict(self) -> dict[str, Any]:
        out = {"name": LEARNED, "features": list(self.features),
               "center": [float(v) for v in self.center],
               "scale": [float(v) for v in self.scale],
               "weights": [float(v) for v in self.weights],
               "intercept": float(self.intercept), "fitted": dict(self.fitted)}
        if self.text:
            out["text"] = [b.to_dict() for b in self.text]
        return out


def learned_from_dict(raw: Mapping[str, Any], where: str) -> LearnedSignal:
    """A policy file's `signal: {name: learned, ...}` mapping -> LearnedSignal."""
    allowed = {"name", "features", "center", "scale", "weights", "intercept", "fitted", "text"}
    extra = set(raw) - allowed
    if extra:
        raise PolicyError(f"{where}: signal.{sorted(extra)[0]} is not a key of a learned "
                          f"signal (keys: {', '.join(sorted(allowed))})")
    for key in ("features", "center", "scale", "weights", "intercept"):
        if key not in raw:
            raise PolicyError(f"{where}: a learned signal needs signal.{key}")

    def numbers(key: str) -> tuple[float, ...]:
        vals = raw[key]
        if not isinstance(vals, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            raise PolicyError(f"{where}: signal.{key} must be a list of numbers")
        return tuple(float(v) for v in vals)

    feats = raw["features"]
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        raise PolicyError(f"{where}: signal.features must be a list of signal names")
    intercept = raw["intercept"]
    if isinstance(intercept, bool) or not isinstance(intercept, int | float):
        raise PolicyError(f"{where}: signal.intercept must be a number")
    fitted = raw.get("fitted") or {}
    if not isinstance(fitted, Mapping):
        raise PolicyError(f"{where}: signal.fitted must be a mapping")
    text = raw.get("text") or []
    if not isinstance(text, list):
        raise PolicyError(f"{where}: signal.text must be a list of text blocks")
    blocks = tuple(text_block_from_dict(b, f"{where}: signal.text[{i}]")
                   for i, b in enumerate(text))
    try:
        return LearnedSignal(tuple(feats), numbers("center"), numbers("scale"),
                             numbers("weights"), float(intercept), dict(fitted), blocks)
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc.message}") from None


def feature_matrix(token_signals: Mapping[str, npt.NDArray[np.float64]],
                   probe_values: Sequence[Mapping[str, float]],
                   features: Sequence[str]) -> npt.NDArray[np.float64]:
    """(n, d) rows: token-logprob signals by key (each an (n,) column) and probe features per
    row. Example: ({"mean_logprob": [-1, -2]}, [{"consistency": 1}, {}],
    ["mean_logprob", "consistency"]) -> [[-1, 1], [-2, nan]]."""
    n = len(probe_values)
    cols = []
    for f in features:
        if is_probe_feature(f):
            cols.append(np.array([float(v.get(f, math.nan)) for v in probe_values]))
        elif f in token_signals:
            col = np.asarray(token_signals[f], dtype=np.float64)
            if col.shape != (n,):
                raise ScoringError(f"feature {f}: {col.shape[0]} values for {n} rows")
            cols.append(col)
        else:
            raise ScoringError(f"feature {f} was not computed")
    return np.stack(cols, axis=1) if cols else np.zeros((n, 0))


Confidence = SignalSpec | LearnedSignal


def confidence_and_values(signal: Confidence, seq: TokenLogprobs,
                          features: Mapping[str, float] | None = None,
                          texts: Texts | None = None) -> tuple[float, dict[str, float]]:
    """One answer's confidence under a policy's signal, and the named values it came from: a
    scorer signal of its token logprobs (or a probe feature), or a learned rule over both (and
    over the words of the question and answer, `texts`; their shares are `text:FIELD`).
    Serve, eval and calibrate all score through this.

    Example: mean_logprob of logprobs [-1, -3] -> (-2.0, {"mean_logprob": -2.0}).
    """
    if isinstance(signal, LearnedSignal):
        specs = [s for s in signal.token_specs if s is not None]
        values = signal_values(seq, specs, features)
        values.update((k, math.nan if v is None else float(v))
                      for k, v in (features or {}).items() if k in signal.features)
        score, shares = signal.score_parts(values, texts)
        return score, {**{f: values.get(f, math.nan) for f in signal.features}, **shares}
    score = sequence_signal(seq, signal, features)
    return score, {signal.key: score}


def confidence(signal: Confidence, seq: TokenLogprobs,
               features: Mapping[str, float] | None = None,
               texts: Texts | None = None) -> float:
    """`confidence_and_values` without the values. Example: mean_logprob of [-1, -3] -> -2.0."""
    return confidence_and_values(signal, seq, features, texts)[0]
