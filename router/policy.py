"""Policy files -> frozen rules; threshold fitting. One format for `serve` and `select`.

```yaml
name: support-cascade
signal: {name: quantile_logprob, q: 0.1}        # any confidence-oriented scorer signal
rule: {kind: threshold, escalate_below: -2.3}    # serve: escalate when score < threshold
# rule: {kind: target_rate, escalation_rate: 0.25, window: 1000}   # serve, online quantile
# rule: {kind: threshold, keep_above: -1.1}      # select: keep when score >= threshold
# rule: {kind: top_fraction, keep: 0.5}          # select: keep the most familiar half
# rule: {kind: band, keep_quantiles: [0.1, 0.6]} # select: keep quantiles 0.1..0.6 of the signal
# rule: {kind: band, criterion: medium, keep: 0.5}   # Ankner et al.: low|medium|high perplexity
# rule: {kind: difference, reference: large, keep: 0.5}  # Moore-Lewis: score - reference score
calibration: {data: traffic.jsonl, n: 5000, model: smollm2-135m-instruct, fitted_at: ...}
```

`signal` may also be a learned rule over several signals and probes (router.learned):
`signal: {name: learned, features: [...], center: [...], scale: [...], weights: [...], ...}`.

Scores are "higher = more confident". What a rule does with a score, NaN included (it always
escalates / drops), is `router.decision`'s one rule; this module fits where a rule cuts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml

from router.decision import finite
from router.errors import PolicyError, ScoringError
from router.learned import LEARNED, Confidence, LearnedSignal, learned_from_dict
from router.scoring import SignalSpec


@dataclass(frozen=True)
class ThresholdRule:
    kind: Literal["threshold"] = "threshold"
    escalate_below: float | None = None  # serve
    keep_above: float | None = None  # select


@dataclass(frozen=True)
class TargetRateRule:
    """Escalate the lowest `escalation_rate` of recent traffic (threshold = streaming quantile)."""

    escalation_rate: float
    window: int = 1000
    initial_threshold: float | None = None  # used until the window has `min_samples`
    min_samples: int = 50
    kind: Literal["target_rate"] = "target_rate"


@dataclass(frozen=True)
class TopFractionRule:
    keep: float
    kind: Literal["top_fraction"] = "top_fraction"


@dataclass(frozen=True)
class BandRule:
    """Keep signal quantiles lo..hi. `criterion` (Ankner et al. 2024) is in perplexity terms:
    low perplexity = the most familiar `keep` fraction, high = the least, medium = the middle."""

    keep_quantiles: tuple[float, float]
    criterion: str | None = None
    kind: Literal["band"] = "band"


@dataclass(frozen=True)
class DifferenceRule:
    """Moore-Lewis: rank by score(model) - score(reference), keep the top fraction or above a
    threshold. Documents the in-domain model finds more familiar than the general one win."""

    reference: str
    keep: float | None = None
    keep_above: float | None = None
    kind: Literal["difference"] = "difference"


Rule = ThresholdRule | TargetRateRule | TopFractionRule | BandRule | DifferenceRule
SERVE_RULES = (ThresholdRule, TargetRateRule)
SELECT_RULES = (ThresholdRule, TopFractionRule, BandRule, DifferenceRule)


@dataclass(frozen=True)
class Policy:
    name: str
    signal: Confidence
    rule: Rule
    calibration: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None

    def for_serving(self) -> Policy:
        if not isinstance(self.rule, SERVE_RULES) or (
            isinstance(self.rule, ThresholdRule) and self.rule.escalate_below is None
        ):
            raise PolicyError(
                f"policy {self.name!r} ({self.source}): rule {self.rule.kind!r} "
                "cannot drive a cascade; use threshold (escalate_below) or "
                "target_rate"
            )
        return self

    @property
    def features(self) -> tuple[str, ...]:
        """The signal and probe names the policy's confidence is computed from."""
        if isinstance(self.signal, LearnedSignal):
            return self.signal.features
        return (self.signal.key,)

    @property
    def token_signal(self) -> SignalSpec:
        """The one scorer signal of a policy that scores texts (selection, the prompt gate)."""
        if isinstance(self.signal, LearnedSignal):
            raise PolicyError(f"policy {self.name!r} ({self.source}): a learned signal scores "
                              "answers for a cascade; scoring a text needs one scorer signal")
        return self.signal

    def for_selection(self) -> Policy:
        if isinstance(self.signal, LearnedSignal):
            raise PolicyError(f"policy {self.name!r} ({self.source}): a learned signal "
                              "scores answers for a cascade; selection needs one scorer signal")
        if not isinstance(self.rule, SELECT_RULES) or (
            isinstance(self.rule, ThresholdRule) and self.rule.keep_above is None
        ):
            raise PolicyError(
                f"policy {self.name!r} ({self.source}): rule {self.rule.kind!r} "
                "cannot select data; use threshold (keep_above), top_fraction, "
                "band or difference"
            )
        return self


def _fraction(value: Any, key: str, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: {key} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= f <= 1.0:
        raise PolicyError(f"{where}: {key} must be in [0, 1], got {f}")
    return f


def _number(value: Any, key: str, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PolicyError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise PolicyError(f"{where}: {key} must be finite, got {f}")
    return f


def band_for_criterion(criterion: str, keep: float) -> tuple[float, float]:
    """Ankner et al.'s criteria as signal quantiles. Example: ("medium", 0.5) -> (0.25, 0.75)."""
    if criterion == "low":  # low perplexity = high signal
        return (1.0 - keep, 1.0)
    if criterion == "high":
        return (0.0, keep)
    if criterion == "medium":
        return ((1.0 - keep) / 2.0, (1.0 + keep) / 2.0)
    raise PolicyError(f"band criterion must be low, medium or high, got {criterion!r}")


def rule_from_dict(raw: Mapping[str, Any], where: str) -> Rule:
    if not isinstance(raw, Mapping) or "kind" not in raw:
        raise PolicyError(f"{where}: rule must be a mapping with a 'kind'")
    kind = raw["kind"]
    allowed: dict[str, set[str]] = {
        "threshold": {"escalate_below", "keep_above"},
        "target_rate": {"escalation_rate", "window", "initial_threshold", "min_samples"},
        "top_fraction": {"keep"},
        "band": {"keep_quantiles", "criterion", "keep"},
        "difference": {"reference", "keep", "keep_above"},
    }
    if kind not in allowed:
        raise PolicyError(f"{where}: rule.kind must be one of {', '.join(allowed)}, got {kind!r}")
    extra = set(raw) - allowed[kind] - {"kind"}
    if extra:
        raise PolicyError(
            f"{where}: rule.{sorted(extra)[0]} is not a key of a {kind} rule "
            f"(keys: {', '.join(sorted(allowed[kind]))})"
        )
    w = f"{where}: rule"
    if kind == "threshold":
        esc, keep = raw.get("escalate_below"), raw.get("keep_above")
        if esc is None and keep is None:
            raise PolicyError(f"{w}: a threshold rule needs escalate_below or keep_above")
        return ThresholdRule(
            escalate_below=None if esc is None else _number(esc, "escalate_below", w),
            keep_above=None if keep is None else _number(keep, "keep_above", w),
        )
    if kind == "target_rate":
        if "escalation_rate" not in raw:
            raise PolicyError(f"{w}: a target_rate rule needs escalation_rate")
        window = int(raw.get("window", 1000))
        if window < 10:
            raise PolicyError(f"{w}: window must be at least 10, got {window}")
        init = raw.get("initial_threshold")
        return TargetRateRule(
            escalation_rate=_fraction(raw["escalation_rate"], "escalation_rate", w),
            window=window,
            initial_threshold=None if init is None else _number(init, "initial_threshold", w),
            min_samples=int(raw.get("min_samples", 50)),
        )
    if kind == "top_fraction":
        return TopFractionRule(keep=_fraction(raw.get("keep"), "keep", w))
    if kind == "band":
        if "criterion" in raw:
            keep = _fraction(raw.get("keep", 0.5), "keep", w)
            lo, hi = band_for_criterion(str(raw["criterion"]), keep)
            return BandRule(keep_quantiles=(lo, hi), criterion=str(raw["criterion"]))
        q = raw.get("keep_quantiles")
        if not isinstance(q, list | tuple) or len(q) != 2:
            raise PolicyError(f"{w}: keep_quantiles must be a pair [lo, hi]")
        lo, hi = _fraction(q[0], "keep_quantiles[0]", w), _fraction(q[1], "keep_quantiles[1]", w)
        if lo >= hi:
            raise PolicyError(f"{w}: keep_quantiles must have lo < hi, got [{lo}, {hi}]")
        return BandRule(keep_quantiles=(lo, hi))
    if "reference" not in raw:
        raise PolicyError(f"{w}: a difference rule needs reference (a tier name)")
    keep_f = raw.get("keep")
    above = raw.get("keep_above")
    if (keep_f is None) == (above is None):
        raise PolicyError(f"{w}: a difference rule needs exactly one of keep and keep_above")
    return DifferenceRule(
        reference=str(raw["reference"]),
        keep=None if keep_f is None else _fraction(keep_f, "keep", w),
        keep_above=None if above is None else _number(above, "keep_above", w),
    )


def policy_from_dict(raw: Any, source: str = "<policy>") -> Policy:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{source}: a policy file holds a mapping, got {type(raw).__name__}")
    unknown = set(raw) - {"name", "signal", "rule", "calibration", "description"}
    if unknown:
        raise PolicyError(
            f"{source}: unknown key {sorted(unknown)[0]!r} "
            "(keys: name, signal, rule, calibration, description)"
        )
    for key in ("signal", "rule"):
        if key not in raw:
            raise PolicyError(f"{source}: missing key {key!r}")
    sig = raw["signal"]
    signal: Confidence
    try:
        if isinstance(sig, Mapping) and sig.get("name") == LEARNED:
            signal = learned_from_dict(sig, source)
        elif isinstance(sig, str):
            signal = SignalSpec.parse(sig)
        elif isinstance(sig, Mapping) and "name" in sig:
            signal = SignalSpec(str(sig["name"]), q=float(sig.get("q", 0.1)))
        else:
            raise PolicyError(f"{source}: signal must be a name or {{name: ..., q: ...}}")
    except ScoringError as exc:
        raise PolicyError(f"{source}: signal: {exc.message}") from None
    calibration = raw.get("calibration") or {}
    if not isinstance(calibration, Mapping):
        raise PolicyError(f"{source}: calibration must be a mapping")
    return Policy(
        name=str(raw.get("name") or Path(source).stem),
        signal=signal,
        rule=rule_from_dict(raw["rule"], source),
        calibration=dict(calibration),
        source=source,
    )


def load_policy(path: Path | str) -> Policy:
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} does not exist") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PolicyError(f"policy file {p} cannot be read: {exc}") from None
    return policy_from_dict(raw, str(p))


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    rule = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(policy.rule).items()
        if v is not None
    }
    rule = {"kind": rule.pop("kind"), **rule}
    signal: dict[str, Any]
    if isinstance(policy.signal, LearnedSignal):
        signal = policy.signal.to_dict()
    else:
        signal = {"name": policy.signal.name}
        if policy.signal.key != policy.signal.name:
            signal["q"] = policy.signal.q
    out: dict[str, Any] = {"name": policy.name, "signal": signal, "rule": rule}
    if policy.calibration:
        out["calibration"] = dict(policy.calibration)
    return out


class _PolicyDumper(yaml.SafeDumper):
    """Block style, except short lists of numbers (a text term's [idf, weight]) on one line."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = len(data) <= 2 and all(isinstance(v, int | float) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_PolicyDumper.add_representer(list, _represent_list)


def save_policy(policy: Policy, path: Path | str) -> Path:
    """Write a policy file atomically (calibrate's output)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.dump(policy_to_dict(policy), Dumper=_PolicyDumper, sort_keys=False),
                   encoding="utf-8")
    tmp.replace(p)
    return p


# -- fitting ------------------------------------------------------------------------------------


def threshold_for_rate(scores: npt.ArrayLike, rate: float) -> float:
    """The threshold t such that a fraction `rate` of `scores` lies below t (escalates).

    NaN scores are ignored. Example: ([1, 2, 3, 4], 0.25) -> 2.0 (only the 1 is below 2).
    Uses the midpoint between order statistics so ties are not split arbitrarily.
    """
    arr = np.sort(finite(scores))
    if arr.size == 0:
        raise PolicyError("cannot fit a threshold: no finite scores")
    if not 0.0 <= rate <= 1.0:
        raise PolicyError(f"escalation rate must be in [0, 1], got {rate}")
    k = round(rate * arr.size)
    if k <= 0:
        return float(arr[0])  # nothing strictly below the minimum
    if k >= arr.size:
        return float(np.nextafter(arr[-1], np.inf))
    return float((arr[k - 1] + arr[k]) / 2.0)


def keep_interval(rule: Rule, scores: npt.ArrayLike) -> tuple[float, float]:
    """The closed score interval [lo, hi] a selection rule keeps, from all scores at once
    (exact quantiles across every shard: callers pass the complete score column)."""
    arr = finite(scores)
    if isinstance(rule, ThresholdRule):
        if rule.keep_above is None:
            raise PolicyError("a threshold rule for selection needs keep_above")
        return (rule.keep_above, math.inf)
    if arr.size == 0:
        return (math.inf, -math.inf)
    ranked = np.sort(arr)
    n = ranked.size
    if isinstance(rule, TopFractionRule | DifferenceRule):
        if isinstance(rule, DifferenceRule) and rule.keep_above is not None:
            return (rule.keep_above, math.inf)
        k = round((rule.keep if rule.keep is not None else 1.0) * n)
        if k <= 0:
            return (math.inf, math.inf)
        return (-math.inf if k >= n else float(ranked[n - k]), math.inf)
    if isinstance(rule, BandRule):
        # order statistics round(lo*n) .. round(hi*n)-1: keeps round((hi-lo)*n) scores
        lo_i, hi_i = round(rule.keep_quantiles[0] * n), round(rule.keep_quantiles[1] * n)
        if hi_i <= lo_i:
            return (math.inf, -math.inf)
        lo = -math.inf if lo_i <= 0 else float(ranked[lo_i])
        hi = math.inf if hi_i >= n else float(ranked[hi_i - 1])
        return (lo, hi)
    raise PolicyError(f"rule {rule.kind!r} does not select data")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
