"""Table query kinds: ``histogram`` (counts per agreed bin) and ``crosstab`` (counts of two
columns' levels or bins, with margins).

One pass each, a sum of counts: plain and secure mode alike, and DP (a record falls in one
cell, so the counts' L1 and L2 sensitivity is 1). Disclosure control as the module
:mod:`._descriptive` describes: each site withholds its small cells with complements
(plain mode), the coordinator protects the combined table (:func:`protect_vector`,
:func:`protect_table`), treating a margin over a site-withheld cell as unknown.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.analytics._descriptive import (
    OnePass,
    add_noise,
    check_counts,
    check_flags,
    edges_of,
    fmt,
    noisy_counts,
    numeric_values,
    only,
    opt_int,
    reader,
)
from biofed.analytics._protocol import (
    Analysis,
    Answer,
    KindSpec,
    NoiseSource,
    Request,
    Result,
    register,
    rows_by_code,
)
from biofed.analytics._query import Query, check_name
from biofed.analytics._rules import DisclosureRules
from biofed.analytics._suppress import protect_table, protect_vector
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, ProtocolError

_MAX_LEVELS = 200
_MAX_CELLS = 10_000


def bin_counts(x: Array, edges: Sequence[float]) -> Array:
    """Counts of ``x`` in ``[below, [e0, e1), …, [e_{k-1}, e_k], above]``."""
    e = np.asarray(edges, dtype=np.float64)
    if x.size == 0:
        return np.zeros(len(e) + 1)
    return np.bincount(bin_codes(x, e), minlength=len(e) + 1).astype(np.float64)


def bin_codes(x: Array, edges: Sequence[float] | Array) -> Array:
    """Per value of ``x`` (no NaN), its cell in :func:`bin_counts`: 0 below the first edge,
    ``i + 1`` in ``[e_i, e_{i+1})`` (the last bin closed), ``len(edges)`` above the last."""
    e = np.asarray(edges, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    idx = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2) + 1
    return np.where(x < e[0], 0, np.where(x > e[-1], len(e), idx))


def present_values(table: QueryTable, name: str, rows: Array) -> tuple[Array, Array]:
    """The row ids and values of the cohort ``rows`` where numeric column ``name`` is
    present (aligned; the rows :func:`numeric_values` counts)."""
    col = np.asarray(table.column(name)[rows], dtype=np.float64)
    present = ~np.isnan(col)
    return np.asarray(table.ids)[rows][present], col[present]


def released_bins(counts: Array, flags: Array) -> list[int]:
    """Indices of the cells that are neither suppressed nor empty."""
    return [int(i) for i in np.flatnonzero((np.ravel(flags) == 0) & (np.ravel(counts) > 0))]


def _masked(values: Array, mask: Array) -> list[int | None]:
    return [None if m else int(v) for v, m in zip(values.ravel(), mask.ravel(), strict=True)]


# -- histogram -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class HistogramResult(Result):
    """Counts per bin ``[e_i, e_{i+1})`` (the last closed), plus below the first edge and
    above the last; None where withheld."""

    column: str
    edges: tuple[float, ...]
    counts: tuple[int | None, ...]
    below: int | None
    above: int | None
    total: int | None
    sites: int
    dp: bool = False
    kind: str = "histogram"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "column": self.column,
            "edges": list(self.edges),
            "counts": list(self.counts),
            "below": self.below,
            "above": self.above,
            "total": self.total,
            "sites": self.sites,
            "dp": self.dp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HistogramResult:
        return cls(
            column=str(data["column"]),
            edges=tuple(float(e) for e in data["edges"]),
            counts=tuple(opt_int(c) for c in data["counts"]),
            below=opt_int(data["below"]),
            above=opt_int(data["above"]),
            total=opt_int(data["total"]),
            sites=int(data["sites"]),
            dp=bool(data["dp"]),
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        rows = [[f"< {fmt(self.edges[0])}", fmt(self.below)]]
        for i, c in enumerate(self.counts):
            close = "]" if i == len(self.counts) - 1 else ")"
            rows.append([f"[{fmt(self.edges[i])}, {fmt(self.edges[i + 1])}{close}", fmt(c)])
        rows += [[f"> {fmt(self.edges[-1])}", fmt(self.above)], ["total", fmt(self.total)]]
        return [self.column + (" (DP)" if self.dp else ""), "count"], rows


def _histogram_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    only(options, ("column", "edges"), "histogram")
    return {
        "column": check_name(options.get("column"), "histogram column"),
        "edges": edges_of(options.get("edges"), "histogram edges"),
    }


def _histogram_answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    opts = request.query.options
    x = numeric_values(table, opts["column"], rows)
    counts = bin_counts(x, opts["edges"])
    arrays = {"counts": counts, "suppressed": np.zeros(counts.shape)}
    if request.query.dp is not None:
        return Answer(arrays=add_noise(request, arrays, {"counts": (1.0, 1.0)}, noise), records=0)
    records = int(x.size)
    if not request.secure:
        mask, total_hidden = protect_vector(counts, np.zeros(counts.shape, bool), rules.min_cell)
        arrays = {"counts": np.where(mask, 0.0, counts), "suppressed": mask.astype(np.float64)}
        if total_hidden:
            records = 0
    return Answer(arrays=arrays, records=records)


def _histogram_cells(request: Request, table: QueryTable, rows: Array, out: Answer) -> list[Array]:
    """The rows of each released bin (below and above included)."""
    opts = request.query.options
    ids, x = present_values(table, opts["column"], rows)
    released = released_bins(out.arrays["counts"], out.arrays["suppressed"])
    return rows_by_code(ids, bin_codes(x, opts["edges"]), released)


def _histogram_finish(analysis: OnePass, total: Answer, sites: Sequence[str]) -> Result:
    opts = analysis.query.options
    dp = analysis.query.dp is not None
    counts = noisy_counts(total.arrays["counts"]) if dp else total.arrays["counts"]
    partial = total.arrays["suppressed"] > 0
    mask, total_hidden = protect_vector(
        counts, partial, analysis.rules.min_cell, total_known=not partial.any()
    )
    values = _masked(counts, mask)
    return HistogramResult(
        column=opts["column"],
        edges=tuple(opts["edges"]),
        counts=tuple(values[1:-1]),
        below=values[0],
        above=values[-1],
        total=None if total_hidden else int(counts.sum()),
        sites=len(sites),
        dp=dp,
    )


def _histogram_check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed")
    check_counts(request, answer, "counts")
    if request.query.dp is None and answer.arrays["counts"].sum() > answer.records:
        raise ProtocolError("a histogram answer counts more values than records")


def _histogram_start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    size = len(query.options["edges"]) + 1
    layout = {"counts": (size,), "suppressed": (size,)}
    return OnePass(query, rules, secure, step="counts", layout=layout, finish=_histogram_finish)


# -- crosstab --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class CrosstabResult(Result):
    """Counts of ``rows`` × ``cols`` with margins; None where withheld."""

    rows: str
    cols: str
    row_labels: tuple[str, ...]
    col_labels: tuple[str, ...]
    counts: tuple[tuple[int | None, ...], ...]
    row_totals: tuple[int | None, ...]
    col_totals: tuple[int | None, ...]
    total: int | None
    sites: int
    dp: bool = False
    kind: str = "crosstab"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rows": self.rows,
            "cols": self.cols,
            "row_labels": list(self.row_labels),
            "col_labels": list(self.col_labels),
            "counts": [list(r) for r in self.counts],
            "row_totals": list(self.row_totals),
            "col_totals": list(self.col_totals),
            "total": self.total,
            "sites": self.sites,
            "dp": self.dp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrosstabResult:
        return cls(
            rows=str(data["rows"]),
            cols=str(data["cols"]),
            row_labels=tuple(str(v) for v in data["row_labels"]),
            col_labels=tuple(str(v) for v in data["col_labels"]),
            counts=tuple(tuple(opt_int(v) for v in r) for r in data["counts"]),
            row_totals=tuple(opt_int(v) for v in data["row_totals"]),
            col_totals=tuple(opt_int(v) for v in data["col_totals"]),
            total=opt_int(data["total"]),
            sites=int(data["sites"]),
            dp=bool(data["dp"]),
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        headers = [f"{self.rows} \\ {self.cols}", *self.col_labels, "total"]
        rows = [
            [label, *(fmt(v) for v in counts), fmt(t)]
            for label, counts, t in zip(self.row_labels, self.counts, self.row_totals, strict=True)
        ]
        rows.append(["total", *(fmt(v) for v in self.col_totals), fmt(self.total)])
        return headers, rows


def _axis(options: Mapping[str, Any], axis: str) -> dict[str, Any]:
    name = check_name(options.get(axis), f"crosstab {axis}")
    single = axis[:-1]
    levels, edges = options.get(f"{single}_levels"), options.get(f"{single}_edges")
    if (levels is None) == (edges is None):
        raise ConfigurationError(
            f"crosstab needs exactly one of {single}_levels and {single}_edges"
        )
    if edges is not None:
        return {
            axis: name,
            f"{single}_edges": edges_of(edges, f"crosstab {single}_edges", most=_MAX_LEVELS),
        }
    if not isinstance(levels, list | tuple) or not 1 <= len(levels) <= _MAX_LEVELS:
        raise ConfigurationError(f"crosstab {single}_levels must list 1 to {_MAX_LEVELS} levels")
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in levels):
        raise ConfigurationError(f"crosstab {single}_levels must be strings or numbers")
    if len({str(v) for v in levels}) != len(levels):
        raise ConfigurationError(f"crosstab {single}_levels repeat a level")
    return {axis: name, f"{single}_levels": list(levels)}


def _crosstab_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    allowed = ("rows", "cols", "row_levels", "col_levels", "row_edges", "col_edges")
    only(options, allowed, "crosstab")
    out = {**_axis(options, "rows"), **_axis(options, "cols")}
    if out["rows"] == out["cols"]:
        raise ConfigurationError("crosstab rows and cols must be different columns")
    if len(_labels(out, "row")) * len(_labels(out, "col")) > _MAX_CELLS:
        raise ConfigurationError(f"a crosstab may have at most {_MAX_CELLS} cells")
    return out


def _labels(options: Mapping[str, Any], single: str) -> list[str]:
    if f"{single}_levels" in options:
        return [str(v) for v in options[f"{single}_levels"]]
    e = options[f"{single}_edges"]
    return [
        f"[{fmt(a)}, {fmt(b)}{']' if i == len(e) - 2 else ')'}"
        for i, (a, b) in enumerate(itertools.pairwise(e))
    ]


def _codes(table: QueryTable, rows: Array, options: Mapping[str, Any], axis: str) -> Array:
    """Per cohort row: the level/bin index, or -1 (missing or outside the agreed levels)."""
    single = axis[:-1]
    name = options[axis]
    col = table.column(name)[rows]
    if f"{single}_edges" in options:
        if table.kinds[name] != "numeric":
            raise DataError(f"crosstab column {name!r} is categorical; give {single}_levels")
        e = np.asarray(options[f"{single}_edges"], dtype=np.float64)
        x = np.asarray(col, dtype=np.float64)
        idx = np.clip(np.searchsorted(e, x, side="right") - 1, 0, len(e) - 2)
        return np.where(np.isnan(x) | (x < e[0]) | (x > e[-1]), -1, idx)
    levels = options[f"{single}_levels"]
    if table.kinds[name] == "numeric":
        x = np.asarray(col, dtype=np.float64)
        out = np.full(x.shape, -1)
        for i, level in enumerate(levels):
            if isinstance(level, str):
                raise DataError(f"crosstab column {name!r} is numeric; its levels must be numbers")
            out[x == float(level)] = i
        return out
    index = {str(v): i for i, v in enumerate(levels)}
    return np.asarray([-1 if v is None else index.get(str(v), -1) for v in col], dtype=np.int64)


def _crosstab_answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    opts = request.query.options
    r, c = len(_labels(opts, "row")), len(_labels(opts, "col"))
    ri, ci = _codes(table, rows, opts, "rows"), _codes(table, rows, opts, "cols")
    keep = (ri >= 0) & (ci >= 0)
    counts = np.bincount(ri[keep] * c + ci[keep], minlength=r * c).astype(np.float64).reshape(r, c)
    arrays = {"counts": counts, "suppressed": np.zeros((r, c))}
    if request.query.dp is not None:
        return Answer(arrays=add_noise(request, arrays, {"counts": (1.0, 1.0)}, noise), records=0)
    records = int(keep.sum())
    if not request.secure:
        ext = protect_table(counts, np.zeros((r + 1, c + 1), bool), rules.min_cell)
        mask = ext[:r, :c]
        arrays = {"counts": np.where(mask, 0.0, counts), "suppressed": mask.astype(np.float64)}
        if ext[r, c]:
            records = 0
    return Answer(arrays=arrays, records=records)


def _crosstab_cells(request: Request, table: QueryTable, rows: Array, out: Answer) -> list[Array]:
    """The rows of each released cell, of each margin over released cells only (the
    coordinator publishes no other), and of the table's total when the site released its
    record count."""
    opts = request.query.options
    c = len(_labels(opts, "col"))
    ri, ci = _codes(table, rows, opts, "rows"), _codes(table, rows, opts, "cols")
    keep = (ri >= 0) & (ci >= 0)
    ids = np.asarray(table.ids)[rows][keep]
    ri, ci = ri[keep], ci[keep]
    counts, flags = out.arrays["counts"], out.arrays["suppressed"]
    clean_rows = [i for i in range(counts.shape[0]) if not flags[i].any()]
    clean_cols = [j for j in range(c) if not flags[:, j].any()]
    sets = rows_by_code(ids, ri * c + ci, released_bins(counts, flags))
    sets += rows_by_code(ids, ri, clean_rows) + rows_by_code(ids, ci, clean_cols)
    if out.records > 0:
        sets.append(ids)
    return sets


def _crosstab_finish(analysis: OnePass, total: Answer, sites: Sequence[str]) -> Result:
    opts = analysis.query.options
    dp = analysis.query.dp is not None
    counts = noisy_counts(total.arrays["counts"]) if dp else np.asarray(total.arrays["counts"])
    partial = total.arrays["suppressed"] > 0
    r, c = counts.shape
    known = np.zeros((r + 1, c + 1), dtype=bool)
    known[:r, :c] = partial
    known[:r, c] = partial.any(axis=1)  # a margin over a withheld cell is a partial sum
    known[r, :c] = partial.any(axis=0)
    known[r, c] = partial.any()
    mask = protect_table(counts, known, analysis.rules.min_cell)
    row_totals, col_totals = counts.sum(axis=1), counts.sum(axis=0)
    cells = _masked(counts, mask[:r, :c])
    return CrosstabResult(
        rows=opts["rows"],
        cols=opts["cols"],
        row_labels=tuple(_labels(opts, "row")),
        col_labels=tuple(_labels(opts, "col")),
        counts=tuple(tuple(cells[i * c : (i + 1) * c]) for i in range(r)),
        row_totals=tuple(_masked(row_totals, mask[:r, c])),
        col_totals=tuple(_masked(col_totals, mask[r, :c])),
        total=None if mask[r, c] else int(counts.sum()),
        sites=len(sites),
        dp=dp,
    )


def _crosstab_check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed")
    check_counts(request, answer, "counts")
    if request.query.dp is None and answer.arrays["counts"].sum() > answer.records:
        raise ProtocolError("a crosstab answer counts more rows than records")


def _crosstab_start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    shape = (len(_labels(query.options, "row")), len(_labels(query.options, "col")))
    layout = {"counts": shape, "suppressed": shape}
    return OnePass(query, rules, secure, step="counts", layout=layout, finish=_crosstab_finish)


register(
    KindSpec(
        name="histogram",
        check_options=_histogram_options,
        columns=lambda options: (options["column"],),
        start=_histogram_start,
        answer=_histogram_answer,
        check=_histogram_check,
        result_from_dict=reader(HistogramResult.from_dict, "histogram"),
        dp_supported=True,
        secure_supported=True,
        cells=_histogram_cells,
    )
)
register(
    KindSpec(
        name="crosstab",
        check_options=_crosstab_options,
        columns=lambda options: (options["rows"], options["cols"]),
        start=_crosstab_start,
        answer=_crosstab_answer,
        check=_crosstab_check,
        result_from_dict=reader(CrosstabResult.from_dict, "crosstab"),
        dp_supported=True,
        secure_supported=True,
        cells=_crosstab_cells,
    )
)
