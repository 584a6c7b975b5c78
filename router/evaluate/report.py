"""Recorded outputs -> the evaluation report (`eval.json`), its terminal table and its plot.

Tier 0 ("small") is the tier whose confidence decides; the last tier ("large") is where
escalated prompts go. Every signal is computed by the shared scorer on tier 0's answers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from router.evaluate import metrics_math as mm
from router.evaluate.data import Recorded
from router.evaluate.run import item_texts
from router.learned import LearnedSignal, feature_matrix, feature_spec
from router.learned_fit import (
    DEFAULT_C,
    DEFAULT_FEATURES,
    DEFAULT_TEXT_C,
    DEFAULT_TEXT_FIT,
    NO_TEXT,
    TextFit,
    text_fit_of,
)
from router.policy import Policy
from router.probes import PROBE_FEATURES, needed_probes
from router.scoring import DEFAULT_SIGNALS, SCORER_VERSION, SignalSpec, score_sequences

EVAL_SIGNALS: tuple[SignalSpec, ...] = (
    *DEFAULT_SIGNALS,
    SignalSpec("quantile_logprob", q=0.25),
    SignalSpec("quantile_logprob", q=0.5),
)


def _j(x: float) -> float | None:
    """JSON-friendly: 7 significant digits (costs are tiny numbers), NaN -> None."""
    return float(f"{x:.7g}") if math.isfinite(x) else None


def signal_values(records: Sequence[Recorded],
                  specs: Sequence[SignalSpec] = EVAL_SIGNALS, *,
                  tier: int = 0) -> dict[str, np.ndarray]:
    """Every signal of one tier's answers: {signal key: (n,) scores}: the token-logprob signals
    from the shared scorer, then every probe feature the recording carries."""
    first = records[0].outputs[tier]
    result = score_sequences(first.model, [r.outputs[tier].logprobs for r in records], specs)
    out = {s.key: result.signal(s) for s in specs}
    present = {k for r in records for k in r.outputs[tier].features}
    for name in PROBE_FEATURES:
        if name in present:
            out[name] = np.array([r.outputs[tier].features.get(name, math.nan)
                                  for r in records], dtype=np.float64)
    return out


def probe_costs(records: Sequence[Recorded], tier: int = 0) -> dict[str, tuple[float, float]]:
    """Mean extra tier tokens and seconds per request of each probe in the recording."""
    out: dict[str, tuple[float, float]] = {}
    probes = {k for r in records for k in r.outputs[tier].probe_costs}
    for probe in sorted(probes):
        spent = [r.outputs[tier].probe_costs.get(probe, (0, 0.0)) for r in records]
        out[probe] = (float(np.mean([t for t, _ in spent])), float(np.mean([s for _, s in spent])))
    return out


def feature_cost(features: Sequence[str], costs: Mapping[str, tuple[float, float]]
                 ) -> tuple[float, float]:
    """Extra (tokens, seconds) per request to compute `features` (each probe counted once)."""
    spent = [costs.get(p, (0.0, 0.0)) for p in sorted(needed_probes(features))]
    return (sum(t for t, _ in spent), sum(s for _, s in spent))


def record_texts(records: Sequence[Recorded], tier: int = 0) -> list[dict[str, str]]:
    """Each record's question (as `serve` reads it from the request) and the tier's answer:
    what a learned rule's text blocks read."""
    return [item_texts(r.item, r.outputs[tier].text) for r in records]


def policy_scores(policy: Policy, records: Sequence[Recorded], tier: int = 0) -> np.ndarray:
    """The policy's own confidence of every recorded answer (as `serve` computes it)."""
    sig = policy.signal
    if isinstance(sig, LearnedSignal):
        specs = [s for s in sig.token_specs if s is not None]
        cols = signal_values(records, specs, tier=tier) if specs else {}
        x = feature_matrix(cols, [r.outputs[tier].features for r in records], sig.features)
        return sig.score_matrix(x, record_texts(records, tier) if sig.text else None)
    return signal_values(records, [sig], tier=tier)[sig.key]


def learned_cv_scores(records: Sequence[Recorded], tier: int, folds: int,
                      features: Sequence[str] = DEFAULT_FEATURES, c: float | None = None,
                      text: TextFit = NO_TEXT, *, target: str = "correct", hi: int = -1
                      ) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold scores of a learned rule fitted on this recording (k-fold, stratified). Its
    label: tier `tier`'s answer is right (`target="correct"`), or escalating to tier `hi` gains
    nothing (`"gain"`: tier `tier` right or tier `hi` wrong too)."""
    from router.learned_fit import out_of_fold, usable_features

    specs = [s for s in (feature_spec(f) for f in features) if s is not None]
    cols = signal_values(records, specs, tier=tier) if specs else {}
    feats = [r.outputs[tier].features for r in records]
    x = feature_matrix(cols, feats, features)
    used = usable_features(x, features)
    x = feature_matrix(cols, feats, used)
    y = np.array([r.outputs[tier].correct for r in records], dtype=bool)
    if target == "gain":
        y = y | ~np.array([r.outputs[hi].correct for r in records], dtype=bool)
    texts = record_texts(records, tier) if text.fields else None
    scores = out_of_fold(x, y, used, folds=folds, c=DEFAULT_C if c is None else c,
                         texts=texts, text=text, groups=[r.item.prompt for r in records])
    return scores, [*used, *(f"text:{f}" for f in text.fields)]


def _points(curve: np.ndarray, cost: np.ndarray, rates: Sequence[float], p_small: float,
            p_large: float, large_cost: float) -> list[dict[str, Any]]:
    n = len(curve) - 1
    out = []
    for r in rates:
        k = mm.k_for_rate(r, n)
        q = float(curve[k])
        c = float(cost[k])
        out.append({"rate": r, "escalated": k, "quality": _j(q),
                    "pgr": _j(mm.pgr(q, p_small, p_large)), "cost_per_prompt": _j(c),
                    "cost_vs_large": _j(c / large_cost) if large_cost > 0 else None})
    return out


def _tier_summary(records: Sequence[Recorded], t: int) -> dict[str, Any]:
    outs = [r.outputs[t] for r in records]
    return {"tier": outs[0].tier, "model": outs[0].model,
            "accuracy": _j(float(np.mean([o.correct for o in outs]))),
            "cost_per_prompt": _j(float(np.mean([o.cost_usd for o in outs]))),
            "errors": sum(o.error is not None for o in outs),
            "truncated": sum(o.finish_reason == "length" for o in outs)}


def evaluate(records: Sequence[Recorded], *, specs: Sequence[SignalSpec] = EVAL_SIGNALS,
             rates: Sequence[float] = mm.RATES, data: str = "",
             policies: Sequence[Policy] = (), cv_folds: int | None = None) -> dict[str, Any]:
    """The report of a set of recorded outputs: tier 0 against the last tier, and with more
    than two tiers every adjacent pair under "pairs" (see module docstring). `policies` add
    their own signal (`policy:NAME`); `cv_folds` adds a learned rule's out-of-fold signal
    (`learned_cvK`, every feature), and for each learned policy its own features refit per fold
    (`policy:NAME:cvK`): fitted on this very recording without the rows it scores."""
    tiers = [_tier_summary(records, t) for t in range(len(records[0].outputs))]
    last = len(tiers) - 1
    report = _pair(records, 0, last, specs=specs, rates=rates, policies=policies,
                   cv_folds=cv_folds)
    report = {"data": data, "n": len(records), "scorer_version": SCORER_VERSION,
              "small": tiers[0], "large": tiers[-1], "tiers": tiers, "rates": list(rates),
              **report}
    if last > 1:
        report["pairs"] = [
            {"small": tiers[t], "large": tiers[t + 1],
             **_pair(records, t, t + 1, specs=specs, rates=rates, policies=policies,
                     cv_folds=cv_folds)}
            for t in range(last)]
    return report


def _pair(records: Sequence[Recorded], lo: int, hi: int, *, specs: Sequence[SignalSpec],
          rates: Sequence[float], policies: Sequence[Policy], cv_folds: int | None
          ) -> dict[str, Any]:
    """Deferral from tier `lo` (its answers' signals decide) to tier `hi`."""
    small_ok = np.array([r.outputs[lo].correct for r in records], dtype=np.float64)
    large_ok = np.array([r.outputs[hi].correct for r in records], dtype=np.float64)
    small_cost = np.array([r.outputs[lo].cost_usd for r in records], dtype=np.float64)
    large_cost = np.array([r.outputs[hi].cost_usd for r in records], dtype=np.float64)
    p_small, p_large = float(small_ok.mean()), float(large_ok.mean())
    c_large = float(large_cost.mean())
    n = len(records)

    fraction = np.arange(n + 1) / n
    rand = mm.random_curve(small_ok, large_ok)
    orac = mm.oracle_curve(small_ok, large_ok)
    rand_cost = mm.random_cost_curve(small_cost, large_cost)
    orac_cost = mm.oracle_cost_curve(small_ok, large_ok, small_cost, large_cost)
    a_rand, a_orac = mm.curve_area(rand), mm.curve_area(orac)
    curves: dict[str, list[float | None]] = {
        "fraction": [_j(x) for x in fraction], "random": [_j(x) for x in rand],
        "oracle": [_j(x) for x in orac]}

    costs = probe_costs(records, lo)
    columns: dict[str, tuple[np.ndarray, Sequence[str]]] = {
        k: (v, [k]) for k, v in signal_values(records, specs, tier=lo).items()}
    for policy in policies:
        sig = policy.signal
        feats: Sequence[str] = sig.features if isinstance(sig, LearnedSignal) else [sig.key]
        columns[f"policy:{policy.name}"] = (policy_scores(policy, records, lo), feats)
        if cv_folds and isinstance(sig, LearnedSignal):  # its features and C, refit per fold
            c = sig.fitted.get("C")
            cv, used = learned_cv_scores(records, lo, cv_folds, sig.features,
                                         float(c) if isinstance(c, int | float) else None,
                                         text_fit_of(sig), hi=hi,
                                         target=str(sig.fitted.get("target", "correct")))
            columns[f"policy:{policy.name}:cv{cv_folds}"] = (cv, used)
    if cv_folds:
        cv, used = learned_cv_scores(records, lo, cv_folds)
        columns[f"learned_cv{cv_folds}"] = (cv, used)
        cv, used = learned_cv_scores(records, lo, cv_folds, c=DEFAULT_TEXT_C,
                                     text=DEFAULT_TEXT_FIT)
        columns[f"learned_text_cv{cv_folds}"] = (cv, used)
        cv, used = learned_cv_scores(records, lo, cv_folds, c=DEFAULT_TEXT_C,
                                     text=DEFAULT_TEXT_FIT, target="gain", hi=hi)
        columns[f"learned_text_gain_cv{cv_folds}"] = (cv, used)

    signals: dict[str, Any] = {}
    for key, (scores, used_features) in columns.items():
        curve = mm.deferral_curve(scores, small_ok, large_ok)
        cost = mm.cascade_cost_curve(scores, small_cost, large_cost)
        area = mm.curve_area(curve)
        extra_tokens, extra_s = feature_cost(used_features, costs)
        signals[key] = {
            "auroc": _j(mm.auroc(scores, small_ok)),
            "area": _j(area),
            "area_gain": _j((area - a_rand) / (a_orac - a_rand)) if a_orac > a_rand else None,
            "points": _points(curve, cost, rates, p_small, p_large, c_large),
            "extra_tokens": _j(extra_tokens), "extra_seconds": _j(extra_s),
        }
        if len(used_features) > 1:
            signals[key]["features"] = list(used_features)
        curves[key] = [_j(x) for x in curve]
    ranked = sorted(signals, key=lambda k: -(signals[k]["area"] or -math.inf))
    return {
        "baselines": {
            "small_only": {"quality": _j(p_small), "cost_per_prompt": _j(float(small_cost.mean()))},
            "large_only": {"quality": _j(p_large), "cost_per_prompt": _j(c_large)},
            "random": {"auroc": 0.5, "area": _j(a_rand),
                       "points": _points(rand, rand_cost, rates, p_small, p_large, c_large)},
            "oracle": {"auroc": 1.0, "area": _j(a_orac),
                       "points": _points(orac, orac_cost, rates, p_small, p_large, c_large)},
        },
        "probe_costs": {k: {"tokens": _j(t), "seconds": _j(sec)} for k, (t, sec) in costs.items()},
        "signals": signals, "best_signal": ranked[0] if ranked else None, "curves": curves,
    }


def _f(x: Any, width: int, digits: int = 3) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """The terminal table: one row per signal, then random (floor) and oracle (ceiling)."""
    rates = report["rates"]
    small, large = report["small"], report["large"]
    lines = [
        f"{report['n']} prompts ({report['data']}); quality = fraction correct",
        f"  {small['tier']} ({small['model']}): {small['accuracy']:.3f}, "
        f"${small['cost_per_prompt']:.3g}/prompt   "
        f"{large['tier']} ({large['model']}): {large['accuracy']:.3f}, "
        f"${large['cost_per_prompt']:.3g}/prompt",
    ]
    if (large["accuracy"] or 0) <= (small["accuracy"] or 0):
        lines.append("  note: the large tier is not better than the small one on this data, "
                     "so PGR is undefined or negative")
    lines += _signal_table(report, rates)
    for pair in report.get("pairs", ()):
        s, lg = pair["small"], pair["large"]
        lines += ["", f"pair {s['tier']} ({s['model']}, {s['accuracy']:.3f}) -> "
                      f"{lg['tier']} ({lg['model']}, {lg['accuracy']:.3f})"]
        lines += _signal_table(pair, rates)
    lines.append("")
    lines.append("area: under the deferral curve (quality vs fraction escalated); gain: "
                 "(area - random) / (oracle - random); cost: mean cost vs large-only; "
                 "+tok/+ms: extra tier-0 tokens and milliseconds per request of the signal's "
                 "probes")
    return "\n".join(lines)


def _signal_table(report: Mapping[str, Any], rates: Sequence[float]) -> list[str]:
    pct = [f"{round(r * 100)}%" for r in rates]
    head = (f"{'signal':<26}{'AUROC':>7}{'area':>7}{'gain':>7}"
            + "".join(f"{'Q@' + p:>8}" for p in pct) + "".join(f"{'PGR@' + p:>9}" for p in pct)
            + f"{'cost@' + pct[min(2, len(pct) - 1)]:>10}{'+tok':>7}{'+ms':>7}")
    lines = ["", head, "-" * len(head)]
    ci = min(2, len(rates) - 1)

    def row(name: str, s: Mapping[str, Any]) -> str:
        pts = s["points"]
        ms = s.get("extra_seconds")
        return (f"{name:<26}{_f(s.get('auroc'), 7)}{_f(s.get('area'), 7)}"
                f"{_f(s.get('area_gain'), 7, 2)}"
                + "".join(_f(p["quality"], 8) for p in pts)
                + "".join(_f(p["pgr"], 9, 2) for p in pts)
                + f"{_f(pts[ci]['cost_vs_large'], 10, 2)}"
                + f"{_f(s.get('extra_tokens'), 7, 0)}"
                + f"{_f(None if ms is None else ms * 1000, 7, 0)}")

    for key, s in sorted(report["signals"].items(), key=lambda kv: -(kv[1]["area"] or -9)):
        lines.append(row(key, s))
    b = report["baselines"]
    lines.append("-" * len(head))
    lines.append(row("random (floor)", {**b["random"], "area_gain": 0.0}))
    lines.append(row("oracle (ceiling)", {**b["oracle"], "area_gain": 1.0}))
    return lines


PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")


def plot_html(report: dict[str, Any], *, top: int = 6) -> str:
    """A self-contained HTML page: deferral curves (inline SVG) and the figures table."""
    w, h, pad = 640, 420, 50
    curves = report["curves"]
    xs = [x or 0.0 for x in curves["fraction"]]
    names = sorted(report["signals"], key=lambda k: -(report["signals"][k]["area"] or -9))[:top]
    series: list[tuple[str, list[float | None], str, str]] = [
        ("oracle", curves["oracle"], "#000", "2,3"), ("random", curves["random"], "#888", "6,4")]
    series += [(k, curves[k], PALETTE[i % len(PALETTE)], "") for i, k in enumerate(names)]
    vals = [v for _, ys, _, _ in series for v in ys if v is not None]
    lo, hi = min([*vals, 0.0]), max([*vals, 1e-09])
    lo, hi = max(0.0, lo - 0.05), min(1.0, hi + 0.05) if hi <= 1 else hi

    def px(x: float) -> float:
        return pad + x * (w - 2 * pad)

    def py(y: float) -> float:
        return h - pad - (y - lo) / (hi - lo or 1) * (h - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 20 * len(series)}"'
             ' font-family="sans-serif" font-size="12">',
             f'<rect x="{pad}" y="{pad}" width="{w - 2 * pad}" height="{h - 2 * pad}" '
             'fill="none" stroke="#ccc"/>']
    for i in range(6):
        x, y = i / 5, lo + (hi - lo) * i / 5
        parts.append(f'<text x="{px(x):.1f}" y="{h - pad + 16}" '
                     f'text-anchor="middle">{x:.1f}</text>')
        parts.append(f'<text x="{pad - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle">fraction escalated</text>')
    parts.append(f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" '
                 'text-anchor="middle">quality (fraction correct)</text>')
    for j, (name, ys, color, dash) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True)
                       if y is not None)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                     f'stroke-width="1.8"{style}/>')
        ly = h + 14 + 20 * j
        parts.append(f'<line x1="{pad}" y1="{ly - 4}" x2="{pad + 24}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="2"{style}/>')
        label = name if name in ("oracle", "random") else (
            f"{name} (AUROC {report['signals'][name]['auroc'] or float('nan'):.3f})")
        parts.append(f'<text x="{pad + 30}" y="{ly}">{html.escape(label)}</text>')
    parts.append("</svg>")
    table = html.escape(format_table(report))
    return ("<!doctype html><html><head><meta charset='utf-8'><title>router eval</title>"
            "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style></head>"
            f"<body><h1>Cascade evaluation</h1><p>Deferral curves of the top {len(names)} "
            "signals by area; oracle (dotted) and random routing (dashed).</p>"
            + "".join(parts) + f"<pre>{table}</pre></body></html>\n")
