"""A histogram result as a figure: PNG or SVG, by the path's suffix.

matplotlib is imported inside :func:`plot_histogram` (it is slow to import and only a
person asking for a figure needs it), on the Agg backend, with mathtext and TeX off so a
column name from a query is drawn as plain text, never parsed. Withheld bins are drawn as
hatched outlines at no height and labelled "suppressed": a figure never shows a partial or
withheld count as if it were known.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from biofed.analytics._tables import HistogramResult
from biofed.core import ConfigurationError

#: Figure formats :func:`plot_histogram` writes, by suffix.
PLOT_SUFFIXES = (".png", ".svg")


def plot_histogram(result: HistogramResult, path: str | Path) -> Path:
    """Draw ``result`` (counts per bin; withheld bins hatched) to ``path``.

    Parameters
    ----------
    result:
        A :class:`HistogramResult`.
    path:
        Where to write; ``.png`` or ``.svg``.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ConfigurationError
        For another suffix or a result that is not a histogram.
    """
    if not isinstance(result, HistogramResult):
        raise ConfigurationError("plot_histogram draws a histogram result")
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise ConfigurationError(
            f"a histogram plot is written as .png or .svg, not {suffix or 'no suffix'!r}"
        )
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        fig = Figure(figsize=(7.0, 4.0))
        ax = fig.add_subplot()
        edges = result.edges
        lefts = edges[:-1]
        widths = [b - a for a, b in itertools.pairwise(edges)]
        heights = [0 if c is None else c for c in result.counts]
        ax.bar(lefts, heights, width=widths, align="edge", color="#4c72b0", edgecolor="white")
        top = max(heights, default=0) or 1
        withheld = [i for i, c in enumerate(result.counts) if c is None]
        for i in withheld:
            ax.bar(
                lefts[i],
                top * 0.05,
                width=widths[i],
                align="edge",
                fill=False,
                hatch="//",
                edgecolor="#999999",
            )
        title = f"{result.column}: n = {'suppressed' if result.total is None else result.total}"
        if result.dp:
            title += " (differentially private)"
        ax.set_title(title)
        ax.set_xlabel(result.column)
        ax.set_ylabel("count")
        notes = []
        if withheld:
            notes.append(f"{len(withheld)} bin(s) suppressed (hatched)")
        for label, value in (("below", result.below), ("above", result.above)):
            notes.append(f"{label} range: {'suppressed' if value is None else value}")
        ax.text(
            0.99, 0.98, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=8
        )
        fig.tight_layout()
        metadata = {"Software": None} if suffix == ".png" else {"Creator": None, "Date": None}
        fig.savefig(out, format=suffix[1:], metadata=metadata)
    return out
