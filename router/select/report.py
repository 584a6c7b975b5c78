"""report.html: one self-contained page (no scripts, no network): counts, the histogram of the
decision signal as inline SVG with the cut lines, cut points per stratum, rejection reasons,
duplicate ids."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

W, H, PAD = 720, 260, 40


def histogram_svg(values: npt.NDArray[np.float64], cuts: Mapping[str, list[float | None]],
                  *, bins: int = 40, label: str = "score") -> str:
    """An SVG histogram of the finite `values`, with a dashed red line at every finite cut."""
    vals = values[np.isfinite(values)]
    if vals.size == 0:
        return "<p>No finite scores.</p>"
    lo, hi = float(vals.min()), float(vals.max())
    if hi <= lo:
        hi = lo + 1e-9
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    pw, ph = W - 2 * PAD, H - 2 * PAD

    def x(v: float) -> float:
        return PAD + (v - lo) / (hi - lo) * pw

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
             f'viewBox="0 0 {W} {H}" role="img" aria-label="histogram of {html.escape(label)}">',
             f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>']
    bw = pw / bins
    for i, c in enumerate(counts):
        bh = c / top * ph
        parts.append(f'<rect x="{PAD + i * bw:.1f}" y="{H - PAD - bh:.1f}" width="{bw - 1:.1f}" '
                     f'height="{bh:.1f}" fill="#4a78b5"><title>{edges[i]:.3f}..'
                     f'{edges[i + 1]:.3f}: {int(c)}</title></rect>')
    parts.append(f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>')
    for v in np.linspace(lo, hi, 5):
        parts.append(f'<text x="{x(float(v)):.1f}" y="{H - PAD + 16}" font-size="11" '
                     f'text-anchor="middle">{v:.3f}</text>')
    parts.append(f'<text x="{PAD}" y="{PAD - 10}" font-size="11">max bin {top} documents</text>')
    parts.append(f'<text x="{W / 2}" y="{H - 6}" font-size="12" text-anchor="middle">'
                 f'{html.escape(label)}</text>')
    for stratum, (c_lo, c_hi) in cuts.items():
        for c in (c_lo, c_hi):
            if c is not None and math.isfinite(c) and lo <= c <= hi:
                parts.append(f'<line class="cut" x1="{x(c):.1f}" y1="{PAD - 4}" x2="{x(c):.1f}" '
                             f'y2="{H - PAD}" stroke="#c0392b" stroke-width="2" '
                             f'stroke-dasharray="5,3"><title>cut {html.escape(stratum)}: '
                             f'{c:.4f}</title></line>')
    parts.append("</svg>")
    return "\n".join(parts)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f"<table>{body}</table>"


def render_report(stats: Mapping[str, Any], values: npt.NDArray[np.float64],
                  timing: Mapping[str, Any] | None = None) -> str:
    counts = stats["counts"]
    cuts = stats["cut_points"]
    signal = stats["signal"]
    summary = [("input", counts["input"]), ("kept", counts["kept"]),
               ("dropped", counts["dropped"]), ("rejected", counts["rejected"]),
               ("model", stats["model"]), ("weights", stats.get("weights")),
               ("scorer version", stats["scorer_version"]),
               ("policy", stats["policy"]["name"]), ("signal", signal),
               ("tokens scored", stats["tokens"]),
               ("tokens/s", (timing or {}).get("tokens_per_second")),
               ("engine", (timing or {}).get("engine"))]
    if stats.get("reference_model"):
        summary.append(("reference model", stats["reference_model"]))
    cut_rows = [(k, f"[{v[0]}, {v[1]}]") for k, v in cuts.items()]
    reasons = sorted(stats.get("reject_reasons", {}).items(), key=lambda kv: -kv[1])
    dup = stats.get("duplicate_ids") or {}
    dup_html = (_table([("mode", dup.get("mode")), ("repeated ids", dup.get("ids")),
                        ("records rejected", dup.get("records_rejected")),
                        ("examples", ", ".join(dup.get("examples", [])))])
                if dup.get("ids") else "<p>None.</p>")
    q_rows = [(k, f"{v:.4f}" if isinstance(v, float) else v)
              for k, v in stats.get("quantiles", {}).items()]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>router select report</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:760px}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:3px 8px;
text-align:left}}th{{background:#f4f4f4}}</style></head><body>
<h1>router select</h1>
{_table(summary)}
<h2>Histogram of {html.escape(signal)}</h2>
<p>Higher is more familiar to the model. Dashed red lines: the cut points; records between
them are kept.</p>
{histogram_svg(values, cuts, label=signal)}
<h2>Cut points</h2>
{_table(cut_rows)}
<h2>Quantiles</h2>
{_table(q_rows)}
<h2>Rejected records</h2>
{_table([(k, v) for k, v in reasons]) if reasons else "<p>None.</p>"}
<h2>Duplicate ids</h2>
{dup_html}
</body></html>
"""
