"""Kaplan–Meier plots: curves with confidence bands and numbers at risk, PNG/SVG and HTML.

Drawn with matplotlib's object API (``Figure``, the Agg canvas: no GUI, no global pyplot
state), imported inside the functions so that importing :mod:`biofed.analytics` stays
cheap. A plot shows only what the :class:`KaplanMeierResult` holds — the released steps —
so it shows nothing the disclosure rules withheld: each curve ends at its last released
time, and the numbers-at-risk row shows "<k" past it. Group names come from outside and
are drawn as plain text (mathtext and TeX off) and HTML-escaped in the page.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biofed.analytics._survival_results import KaplanMeierResult, SurvivalCurve
from biofed.core import ConfigurationError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 68em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { padding: 0.15em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { text-align: left; } .note { color: #666; font-size: 0.9em; }
svg { max-width: 100%; height: auto; }
"""


def _at_risk_at(curve: SurvivalCurve, x: float, k: int) -> str:
    """Numbers at risk at ``x``: the at-risk count of the first released time ≥ x (exits
    happen only at released times inside the released region); "<k" beyond it."""
    if curve.tail_after is None or x > curve.tail_after:
        return f"<{k}" if curve.records else "0"
    i = int(np.searchsorted(curve.times, x, side="left"))
    return str(int(curve.at_risk[i]))


def _figure(result: KaplanMeierResult) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.2 + 0.25 * len(result.curves)))
    ax = fig.add_axes(
        (0.1, 0.16 + 0.05 * len(result.curves), 0.85, 0.76 - 0.05 * len(result.curves))
    )
    level = round(100 * (1 - result.alpha))
    colors = [f"C{i % 10}" for i in range(len(result.curves))]
    last = 0.0
    for curve, color in zip(result.curves, colors, strict=True):
        if curve.tail_after is None:
            ax.plot([], [], color=color, label=f"{curve.level} (nothing released)")
            continue
        x = np.concatenate([[0.0], curve.times])
        y = np.concatenate([[1.0], curve.estimate])
        lo = np.concatenate([[1.0], curve.lower])
        hi = np.concatenate([[1.0], curve.upper])
        ax.step(x, y, where="post", color=color, label=curve.level)
        ax.fill_between(x, lo, hi, step="post", color=color, alpha=0.2, linewidth=0)
        last = max(last, float(curve.tail_after))
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, last * 1.02 if last > 0 else 1.0)
    ax.set_ylabel("survival probability")
    ax.set_title(f"Kaplan–Meier, {level}% confidence bands (exponential Greenwood)")
    ax.legend(loc="lower left", frameon=False)
    ax.grid(alpha=0.3)
    ticks = [t for t in ax.get_xticks() if 0 <= t <= ax.get_xlim()[1]]
    ax.set_xticks(ticks)
    ax.set_xlabel("time")
    # numbers at risk, one row per group, under the axis (like lifelines' add_at_risk_counts)
    k = result.min_at_risk
    fig.text(0.01, 0.06 + 0.05 * len(result.curves), "at risk", fontsize=8, weight="bold")
    for row, (curve, color) in enumerate(zip(result.curves, colors, strict=True)):
        ypos = 0.03 + 0.05 * (len(result.curves) - 1 - row)
        fig.text(0.01, ypos, curve.level[:14], fontsize=8, color=color)
        for t in ticks:
            xfig = ax.transData.transform((t, 0))[0]
            xfig = fig.transFigure.inverted().transform((xfig, 0))[0]
            fig.text(xfig, ypos, _at_risk_at(curve, t, k), fontsize=8, ha="center")
    return fig


def _render(result: KaplanMeierResult, fmt: str) -> bytes:
    import matplotlib

    if not isinstance(result, KaplanMeierResult):
        raise ConfigurationError("plot_km draws a KaplanMeierResult")
    with matplotlib.rc_context(
        {"text.parse_math": False, "text.usetex": False, "svg.fonttype": "none"}
    ):
        fig = _figure(result)
        buf = io.BytesIO()
        meta = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
        fig.savefig(buf, format=fmt, dpi=120, metadata=meta)
    return buf.getvalue()


def plot_km(result: KaplanMeierResult, path: str | Path) -> Path:
    """Write the curves (confidence bands as shaded steps, numbers at risk under the axis)
    to ``path``: PNG or SVG by its suffix.

    Raises
    ------
    ConfigurationError
        If the suffix is neither ``.png`` nor ``.svg``, or ``result`` is not a KM result.
    """
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ConfigurationError(f"plot_km writes .png or .svg, not {out.suffix[:10]!r}")
    out.write_bytes(_render(result, fmt))
    return out


def km_html(result: KaplanMeierResult) -> str:
    """A self-contained HTML page: the plot as inline SVG, the summary table, and every
    released value per group (no script, nothing fetched)."""
    e = html.escape
    svg = _render(result, "svg").decode("utf-8")
    svg = svg[svg.index("<svg") :]
    if "<metadata>" in svg:  # matplotlib's RDF block: namespaces only, nothing a reader needs
        svg = svg[: svg.index("<metadata>")] + svg[svg.index("</metadata>") + 11 :]
    headers, rows = result.table()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Kaplan–Meier</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Kaplan–Meier</h1>",
        f'<p class="note">{result.records} patients at {result.sites} sites'
        f"{' (secure aggregation)' if result.secure else ''}; steps are shown only where at "
        f"least {result.min_at_risk} patients are at risk; later times are one coarsened "
        "block.</p>",
        svg,
        "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>",
        *("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in rows),
        "</table>",
    ]
    level = round(100 * (1 - result.alpha))
    for c in result.curves:
        parts.append(f"<h2>{e(c.level)}</h2><table>")
        parts.append(
            f"<tr><th>time</th><th>survival</th><th>{level}% lower</th><th>{level}% upper</th>"
            "<th>at risk</th><th>events</th><th>censored</th></tr>"
        )
        for j in range(len(c.times)):
            parts.append(
                f"<tr><td>{c.times[j]:g}</td><td>{c.estimate[j]:.4f}</td>"
                f"<td>{c.lower[j]:.4f}</td><td>{c.upper[j]:.4f}</td><td>{int(c.at_risk[j])}</td>"
                f"<td>{int(c.events[j])}</td><td>{int(c.censored[j])}</td></tr>"
            )
        after = "start" if c.tail_after is None else f"{c.tail_after:g}"
        parts.append(
            f'<tr><td colspan="4">after {after}: coarsened</td><td>{c.tail_at_risk}</td>'
            f"<td>{c.tail_events}</td><td>{c.tail_censored}</td></tr></table>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
