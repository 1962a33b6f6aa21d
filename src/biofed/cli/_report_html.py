"""The heterogeneity report as one self-contained HTML page, with matplotlib figures.

Everything is inside the file: the style sheet inline, each figure a base64 PNG ``data:`` URI
(written without matplotlib's "Software" metadata), no script, no font or link to fetch, so the
page opens offline and leaks nothing when opened. Every text that came from outside (site,
feature and category names) is HTML-escaped, and drawn in the figures as plain text
(matplotlib's mathtext off: a ``$…$`` name is neither parsed nor rendered). The figures draw
only what the report holds, so they show nothing below the disclosure threshold either:
histograms on the merged bars, withheld comparisons left out.

Imported only by ``biofed report heterogeneity --html`` (matplotlib is slow to import).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from biofed.cli._report import cells, feature_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from biofed.data import HeterogeneityReport

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 68em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #ddd; text-align: left; }
td.n, td.t { text-align: right; font-variant-numeric: tabular-nums; }
tr.flag td { background: #fde8e8; } .flag-mark { color: #b00; font-weight: bold; }
figure { margin: 1em 0; } img { max-width: 100%; }
.note { color: #666; font-size: 0.9em; }
"""

_LABELS = {
    "records": "records (× median site)",
    "outcome": "outcome (SMD)",
    "smd": "SMD",
    "wasserstein": "Wasserstein / sd",
    "ks": "KS (max CDF diff.)",
    "missing": "missing (difference)",
    "category": "category share (SMD)",
}


def render_html(report: HeterogeneityReport, *, title: str = "") -> str:
    """The report as a complete HTML document (UTF-8 text).

    Names from outside are drawn as plain text: matplotlib's mathtext (and TeX) are off, so a
    category called ``"$\\undefined$"`` can neither break the figures nor render as markup.
    """
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        return _render(report, title)


def _render(report: HeterogeneityReport, title: str) -> str:
    e = html.escape
    k = report.min_cell
    heading = "Heterogeneity across sites" + (f": {title}" if title else "")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(heading)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(heading)}</h1>",
        f"<p>Each site is compared with the other sites pooled; sites that stand out are left "
        f"out of the others' reference. {len(report.flags)} of {len(report.findings)} "
        f"comparisons are over their thresholds. Disclosure threshold: {k} — no number below "
        f"rests on fewer records; a withheld value shows as &lt;{k}.</p>",
        "<h2>Sites</h2>",
        _sites_table(report),
    ]
    parts += _figure(_overview_figure(report), "Records and outcome per site")
    smd = _smd_figure(report)
    if smd is not None:
        parts += ["<h2>Standardised mean differences</h2>"]
        parts += _figure(smd, "SMD of each feature, each site against the others")
    if report.histograms:
        parts += ["<h2>Distributions</h2>"]
        for histogram in report.histograms:
            parts += _figure(
                _histogram_figure(histogram.feature, histogram.edges, histogram.counts),
                f"{histogram.feature}: share of each site's values per bar "
                f"(bars merged until each holds 0 or at least {k} values of every site)",
            )
    parts += ["<h2>All comparisons</h2>", _findings_table(report), "</body>", "</html>", ""]
    return "\n".join(parts)


def _sites_table(report: HeterogeneityReport) -> str:
    e = html.escape
    k = report.min_cell
    rows = [
        "<table>",
        "<tr><th>site</th><th>records</th><th>share</th><th>outcome</th><th>note</th></tr>",
    ]
    for s in report.sites:
        records = f"&lt;{k}" if s.records is None else str(s.records)
        share = "" if s.share is None else f"{100 * s.share:.1f}%"
        outcome = "" if s.outcome is None else f"{100 * s.outcome:.1f}%"
        rows.append(
            f"<tr><td>{e(s.site)}</td><td class='n'>{records}</td><td class='n'>{share}</td>"
            f"<td class='n'>{outcome}</td><td>{e(s.note)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _findings_table(report: HeterogeneityReport) -> str:
    e = html.escape
    rows = [
        "<table>",
        "<tr><th></th><th>site</th><th>feature</th><th>measure</th><th>site</th>"
        "<th>others</th><th>score</th><th>threshold</th><th>note</th></tr>",
    ]
    for f in report.ranked():
        value, reference, score = cells(f, report.min_cell)
        mark = "<span class='flag-mark'>&#9873;</span>" if f.flagged else ""
        note = f.note + (f" (reference leaves out {', '.join(f.left_out)})" if f.left_out else "")
        row_class = ' class="flag"' if f.flagged else ""
        rows.append(
            f"<tr{row_class}><td>{mark}</td><td>{e(f.site)}</td>"
            f"<td>{e(feature_label(f))}</td><td>{e(_LABELS[f.measure])}</td>"
            f"<td class='n'>{e(value)}</td><td class='n'>{e(reference)}</td>"
            f"<td class='n'>{e(score)}</td><td class='t'>{f.threshold:g}</td>"
            f"<td class='note'>{e(note)}</td></tr>"
        )
    rows.append("</table>")
    return "\n".join(rows)


def _figure(figure: Figure, caption: str) -> list[str]:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return [
        "<figure>",
        f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">',
        f"<figcaption class='note'>{html.escape(caption)}</figcaption>",
        "</figure>",
    ]


def _overview_figure(report: HeterogeneityReport) -> Figure:
    import matplotlib.pyplot as plt

    shown = [s for s in report.sites if s.records is not None and s.share is not None]
    names = [s.site for s in shown]
    figure, axes = plt.subplots(1, 2, figsize=(9, 0.4 * len(names) + 1.2), squeeze=False)
    bars, outcome = axes[0]
    bars.barh(names, [s.records or 0 for s in shown], color="#4c72b0")
    bars.set_xlabel("records")
    bars.invert_yaxis()
    rates = [(s.site, s.outcome) for s in shown if s.outcome is not None]
    if rates:
        outcome.barh([n for n, _ in rates], [100 * (r or 0) for _, r in rates], color="#dd8452")
        outcome.set_xlabel("outcome: positives or events (%)")
        outcome.invert_yaxis()
    else:
        outcome.set_axis_off()
    figure.tight_layout()
    return figure


def _smd_figure(report: HeterogeneityReport) -> Figure | None:
    """One panel per site: each feature's SMD against the others (a Love plot)."""
    import matplotlib.pyplot as plt

    found = [
        f
        for f in report.findings
        if f.measure in ("smd", "category") and f.score is not None and math.isfinite(f.score)
    ]
    if not found:
        return None
    sites = sorted({f.site for f in found})
    labels = sorted({feature_label(f) for f in found})
    t = report.thresholds["smd"]
    columns = min(3, len(sites))
    rows = math.ceil(len(sites) / columns)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.4 * columns, 0.22 * len(labels) * rows + 1.2 * rows),
        sharey=True,
        sharex=True,
        squeeze=False,
    )
    for ax in axes.flat[len(sites) :]:
        ax.set_axis_off()
    for ax, site in zip(axes.flat, sites, strict=False):
        mine = [f for f in found if f.site == site]
        y = [labels.index(feature_label(f)) for f in mine]
        x = [f.score or 0.0 for f in mine]
        colours = ["#c44e52" if f.flagged else "#4c72b0" for f in mine]
        ax.axvspan(-t, t, color="#eeeeee", zorder=0)
        ax.axvline(0, color="#999999", linewidth=0.8)
        ax.scatter(x, y, c=colours, s=18, zorder=2)
        ax.set_title(site, fontsize=9)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("SMD", fontsize=8)
    axes.flat[0].invert_yaxis()
    figure.tight_layout()
    return figure


def _histogram_figure(
    feature: str, edges: Sequence[float], counts: Mapping[str, tuple[int, ...]]
) -> Figure:
    import matplotlib.pyplot as plt
    import numpy as np

    figure, ax = plt.subplots(figsize=(7, 2.6))
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    for site, c in counts.items():
        values = np.asarray(c, dtype=np.float64)
        density = values / max(values.sum(), 1.0) / widths
        ax.stairs(density, edges, label=site, linewidth=1.4)
    ax.set_xlabel(feature)
    ax.set_ylabel("density")
    ax.legend(fontsize=7, ncols=2, frameon=False)
    figure.tight_layout()
    return figure
