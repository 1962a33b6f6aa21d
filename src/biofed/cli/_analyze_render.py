"""Rendering of ``biofed analyze`` results: terminal tables, plots and an HTML page.

Every result offers ``table()`` (headers, rows of formatted strings); this module prints it
so that no number or name is ever cut: numeric columns never wrap, names fold, and a table
wider than the terminal is printed in column pages, each repeating the first column (a
regression table on both scales has ten columns; 80 columns hold about six).

Plots: KM curves through :func:`biofed.analytics.plot_km` (bands, numbers at risk),
histograms through :func:`biofed.analytics.plot_histogram` (withheld bins hatched).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from biofed.analytics import HistogramResult, Result

_TITLES = {
    "count": "count",
    "describe": "descriptive statistics",
    "histogram": "histogram",
    "quantile": "quantiles",
    "crosstab": "cross-tabulation",
    "correlation": "correlation",
    "km": "Kaplan–Meier",
    "nelson_aalen": "Nelson–Aalen",
    "logrank": "log-rank test",
    "glm": "generalised linear model",
    "cox": "Cox proportional hazards",
}
#: Scalar fields of a result's JSON worth a line above its table.
_NOTES = (
    "model",
    "family",
    "records",
    "events",
    "sites",
    "iterations",
    "converged",
    "loglik",
    "deviance",
    "secure",
    "dp",
    "exact",
    "error_bound",
    "tolerance",
)


def _width(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def _is_number(text: str) -> bool:
    """A cell of a value column: a number, or a withheld/absent marker."""
    if text.strip() in ("suppressed", "–", "—", "-"):
        return True
    t = text.strip().lstrip("<>≤≥=~ ").replace(",", "")
    try:
        float(t.rstrip("%"))
    except ValueError:
        return False
    return True


#: Widest the first (label) column gets before its names fold onto more lines.
_LABEL_WIDTH = 28


def _min_widths(headers: list[str], rows: list[list[str]], width: int) -> list[int]:
    """Each column's width. A value column is as wide as its widest cell (never cut) and
    its header when that fits beside the label column, else its header wraps; the label
    column folds past :data:`_LABEL_WIDTH` (every character kept)."""
    widths: list[int] = []
    for j, head in enumerate(headers):
        cells = [_width(r[j]) for r in rows if j < len(r)]
        words = max((len(w) for w in head.split()), default=0)
        if j == 0:
            widths.append(max(min(words, _LABEL_WIDTH), min(_LABEL_WIDTH, max(cells, default=0))))
            continue
        room = width - widths[0] - 3
        widest = max(cells, default=0)
        wanted = max(widest, len(head))
        widths.append(wanted if wanted <= room else max(widest, min(words, room)))
    return widths


def pages(headers: list[str], rows: list[list[str]], width: int) -> list[list[int]]:
    """Column indices per printed table: column 0 repeated, the others as many as fit."""
    widths = _min_widths(headers, rows, width)
    if not headers:
        return []
    first = widths[0] + 1
    out: list[list[int]] = []
    current: list[int] = []
    used = first
    for j in range(1, len(headers)):
        need = widths[j] + 2
        if current and used + need > width - 1:
            out.append([0, *current])
            current, used = [], first
        current.append(j)
        used += need
    out.append([0, *current])
    return out


def table_of(result: Result) -> tuple[list[str], list[list[str]]]:
    """The result's ``table()`` (every kind offers one); a kind without one shows its JSON
    form's scalar fields."""
    table = getattr(result, "table", None)
    if callable(table):
        headers, rows = table()
        return list(headers), [list(r) for r in rows]
    data = result.to_dict()
    scalars = [[k, str(v)] for k, v in data.items() if not isinstance(v, list | dict)]
    return ["field", "value"], scalars


def result_tables(result: Result, width: int) -> list[Table]:
    """The result's ``table()`` as Rich tables that fit ``width`` columns, cutting nothing."""
    headers, rows = table_of(result)
    widths = _min_widths(headers, rows, width)
    numeric = [
        j > 0 and all(_is_number(r[j]) or not r[j].strip() for r in rows if j < len(r))
        for j in range(len(headers))
    ]
    tables = []
    for cols in pages(headers, rows, width):
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for j in cols:
            table.add_column(
                escape(headers[j]),
                justify="right" if numeric[j] else "left",
                width=widths[j],
                overflow="fold",
            )
        for r in rows:
            table.add_row(*[escape(r[j]) if j < len(r) else "" for j in cols])
        tables.append(table)
    return tables


def notes(result: Result) -> str:
    """A line of the result's scalar facts (sites, records, converged…)."""
    data = result.to_dict()
    parts = []
    for key in _NOTES:
        value = data.get(key)
        if key == "converged" and isinstance(value, bool):
            parts.append("converged" if value else "NOT converged")
            continue
        if value is None or value is False or isinstance(value, list | dict):
            continue
        if value is True and key in ("secure", "dp"):
            parts.append("secure aggregation" if key == "secure" else "DP answers")
            continue
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return " · ".join(parts)


def print_result(console: Console, result: Result) -> None:
    """The result's title, its facts and its table(s) on ``console``."""
    console.print(f"[bold]{_TITLES.get(result.kind, result.kind)}[/]", highlight=False)
    line = notes(result)
    if line:
        console.print(escape(line), highlight=False)
    for i, table in enumerate(result_tables(result, console.width)):
        if i:
            console.print()
        console.print(table)


# -- plots --------------------------------------------------------------------------------------


def _histogram_svg(result: HistogramResult) -> bytes:
    """The histogram drawn by :func:`biofed.analytics.plot_histogram`, as SVG bytes."""
    import tempfile

    from biofed.analytics import plot_histogram

    with tempfile.TemporaryDirectory(prefix="biofed-plot-") as folder:
        return plot_histogram(result, Path(folder) / "histogram.svg").read_bytes()


def plot(result: Result, path: Path) -> Path:
    """Write ``result``'s plot (KM curves or a histogram) as PNG or SVG by ``path``'s suffix."""
    from biofed.analytics import HistogramResult, KaplanMeierResult, plot_histogram, plot_km
    from biofed.core import ConfigurationError

    if isinstance(result, KaplanMeierResult):
        return plot_km(result, path)
    if isinstance(result, HistogramResult):
        return plot_histogram(result, path)
    raise ConfigurationError(f"--plot draws km curves and histograms, not {result.kind}")


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 68em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { padding: 0.15em 0.6em; border-bottom: 1px solid #ddd; text-align: right; }
th { text-align: left; } td:first-child { text-align: left; }
.note { color: #666; font-size: 0.9em; } svg { max-width: 100%; height: auto; }
"""


def _inline_svg(data: bytes) -> str:
    svg = data.decode("utf-8")
    svg = svg[svg.index("<svg") :]
    if "<metadata>" in svg:
        svg = svg[: svg.index("<metadata>")] + svg[svg.index("</metadata>") + 11 :]
    return svg


def page(result: Result) -> str:
    """A self-contained HTML page (no script, nothing fetched): KM results use
    :func:`biofed.analytics.km_html`; others show the table, and a histogram its plot."""
    from biofed.analytics import HistogramResult, KaplanMeierResult, km_html

    if isinstance(result, KaplanMeierResult):
        return km_html(result)
    e = html.escape
    title = _TITLES.get(result.kind, result.kind)
    headers, rows = table_of(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="note">{e(notes(result))}</p>',
    ]
    if isinstance(result, HistogramResult):
        parts.append(_inline_svg(_histogram_svg(result)))
    parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
    parts.append("</thead><tbody>")
    for r in rows:
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
    parts.append("</tbody></table>")
    parts.append(
        '<p class="note">Only disclosure-controlled figures appear here: "suppressed" marks '
        "a value the rules withheld.</p></body></html>"
    )
    return "\n".join(parts)
