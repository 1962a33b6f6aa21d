"""The ``quantile`` kind: quantiles by federated histograms refined around each target.

Pass 1 counts the column's values in ``bins`` equal bins over the agreed ``bounds`` (and
below/above them), which also gives the consortium's n. Each target order statistic of
numpy's default (linear) quantile, x₍ₖ₎ and x₍ₖ₊₁₎ with k = ⌊p(n−1)⌋, then has a bracket: the
bins its rank can fall in. Every further pass counts the values in ``bins`` sub-bins of
each open bracket, so a bracket shrinks by a factor ``bins`` a pass, until it is no wider
than ``tolerance`` (at most ⌈log_bins((hi − lo)/tolerance)⌉ + 1 passes). The estimate
interpolates the brackets' midpoints; since each order statistic lies in its bracket, the
result's ``errors`` bound |estimate − pooled np.quantile| (half the bracket widths,
interpolated), and they are at most ``tolerance``/2 unless disclosure control stopped the
refinement early.

Every pass is a sum of counts: plain and secure mode alike. No DP (the refinement's
sensitivity compounds over passes; use ``histogram`` with DP instead).

Security notes
--------------
Threat: a quantile pinned so finely that it is one patient's value. A bracket is refined
only while the refined bracket still holds at least ``min_cell`` of the consortium's
records, so each released estimate lies in an interval shared by ``min_cell`` records; the
stated error says how wide that left it. In plain mode each site withholds its own small
bins with complements (:func:`protect_vector`); the coordinator then brackets each rank
between the counts' lower and upper bounds (a withheld bin counted as empty, then as
holding all the withheld mass), which keeps the brackets correct, only wider. A site that
withholds its total (fewer than ``min_cell`` values) withholds the quantiles.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.analytics._descriptive import (
    check_counts,
    check_flags,
    fmt,
    interval,
    number,
    numeric_values,
    only,
    opt_float,
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
from biofed.analytics._suppress import protect_vector
from biofed.analytics._table import QueryTable
from biofed.analytics._tables import bin_codes, bin_counts, present_values, released_bins
from biofed.core import Array, ConfigurationError, ProtocolError

_MAX_PROBS = 20
_MAX_PASSES = 40


@dataclass(frozen=True, slots=True, kw_only=True)
class QuantileResult(Result):
    """Quantiles (numpy's linear definition) with a bound on each one's error; None where
    withheld or outside the bounds."""

    column: str
    probs: tuple[float, ...]
    values: tuple[float | None, ...]
    errors: tuple[float | None, ...]
    n: int | None
    passes: int
    sites: int
    kind: str = "quantile"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "column": self.column,
            "probs": list(self.probs),
            "values": list(self.values),
            "errors": list(self.errors),
            "n": self.n,
            "passes": self.passes,
            "sites": self.sites,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantileResult:
        n = data["n"]
        return cls(
            column=str(data["column"]),
            probs=tuple(float(p) for p in data["probs"]),
            values=tuple(opt_float(v) for v in data["values"]),
            errors=tuple(opt_float(v) for v in data["errors"]),
            n=None if n is None else int(n),
            passes=int(data["passes"]),
            sites=int(data["sites"]),
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        rows = [
            [fmt(p), fmt(v), "" if e is None else f"± {fmt(e)}"]
            for p, v, e in zip(self.probs, self.values, self.errors, strict=True)
        ]
        return [f"{self.column} quantile", "value", "error bound"], rows


def _options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    only(options, ("column", "probs", "bounds", "tolerance", "bins"), "quantile")
    column = check_name(options.get("column"), "quantile column")
    probs = options.get("probs", [0.5])
    if not isinstance(probs, list | tuple) or not 1 <= len(probs) <= _MAX_PROBS:
        raise ConfigurationError(f"quantile probs must list 1 to {_MAX_PROBS} probabilities")
    ps = [number(p, "quantile probs") for p in probs]
    if any(not 0 <= p <= 1 for p in ps):
        raise ConfigurationError("quantile probs must lie in [0, 1]")
    if "bounds" not in options:
        raise ConfigurationError("quantile needs bounds = [lo, hi] (the range to search)")
    lo, hi = interval(options["bounds"], "quantile bounds")
    tol = number(options.get("tolerance", (hi - lo) / 1000), "quantile tolerance")
    if not 0 < tol <= hi - lo:
        raise ConfigurationError("quantile tolerance must lie in (0, hi - lo]")
    bins = options.get("bins", 32)
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= 200:
        raise ConfigurationError("quantile bins must be an integer in [2, 200]")
    if math.ceil(math.log((hi - lo) / tol) / math.log(bins)) + 1 > _MAX_PASSES:
        raise ConfigurationError("quantile tolerance is too fine for its bounds and bins")
    return {"column": column, "probs": ps, "bounds": [lo, hi], "tolerance": tol, "bins": bins}


def _edges(a: float, b: float, bins: int) -> list[float]:
    e = np.linspace(a, b, bins + 1)
    e[0], e[-1] = a, b
    return [float(v) for v in e]


def _state_edges(request: Request) -> list[list[float]]:
    """The request's brackets, checked (a coordinator's state is hostile too)."""
    bins = int(request.query.options["bins"])
    raw = request.state.get("edges")
    if not isinstance(raw, list) or not 1 <= len(raw) <= 2 * _MAX_PROBS:
        raise ProtocolError("a quantile request's state must list its brackets' edges")
    out = []
    for row in raw:
        if not isinstance(row, list) or len(row) != bins + 1:
            raise ProtocolError(f"a quantile bracket must have {bins + 1} edges")
        vals = [number(v, "a quantile edge") for v in row]
        if any(b <= a for a, b in itertools.pairwise(vals)):
            raise ProtocolError("a quantile bracket's edges must increase strictly")
        out.append(vals)
    if request.layout is None or request.layout.get("counts") != (len(out), bins + 2):
        raise ProtocolError("a quantile request's layout does not match its brackets")
    return out


def _answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    edges = _state_edges(request)
    x = numeric_values(table, request.query.options["column"], rows)
    counts = np.stack([bin_counts(x, e) for e in edges])
    flags = np.zeros(counts.shape)
    withheld = np.zeros(1)
    records = int(x.size)
    if not request.secure:
        for i, row in enumerate(counts):
            mask, total_hidden = protect_vector(row, np.zeros(row.shape, bool), rules.min_cell)
            if total_hidden:
                counts[:] = 0.0
                flags[:] = 1.0
                withheld[0], records = 1.0, 0
                break
            counts[i] = np.where(mask, 0.0, row)
            flags[i] = mask
    return Answer(
        arrays={"counts": counts, "suppressed": flags, "withheld": withheld}, records=records
    )


def _cells(request: Request, table: QueryTable, rows: Array, out: Answer) -> list[Array]:
    """The rows of each released bin of each bracket this pass counts (below and above
    the bracket included): what the node's query log compares with other queries' cells,
    so that quantiles asked again with shifted bounds cannot intersect their brackets
    down to fewer than ``min_difference`` patients."""
    if out.arrays["withheld"][0] > 0:
        return []
    ids, x = present_values(table, request.query.options["column"], rows)
    counts, flags = out.arrays["counts"], out.arrays["suppressed"]
    sets: list[Array] = []
    for i, edges in enumerate(_state_edges(request)):
        released = released_bins(counts[i], flags[i])
        sets += rows_by_code(ids, bin_codes(x, edges), released)
    return sets


def _check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed", "withheld")
    check_counts(request, answer, "counts")
    if (answer.arrays["counts"].sum(axis=1) > answer.records).any():
        raise ProtocolError("a quantile answer counts more values than records")


class QuantileAnalysis(Analysis):
    """The coordinator's refinement loop (one bracket per target order statistic)."""

    def __init__(self, query: Query, rules: DisclosureRules, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        opts = query.options
        self._lo, self._hi = opts["bounds"]
        self._bins = int(opts["bins"])
        self._tol = float(opts["tolerance"])
        self._n: int | None = None
        self._brackets: dict[int, tuple[float, float]] = {}
        self._open: list[int] = []  # ranks still refined ([-1] = the first, shared pass)
        self._outside: set[int] = set()
        self._pass = 1
        self._sites = 0
        self._withheld = False
        self._done = False
        self._request = self._make_request([(self._lo, self._hi)], [-1])

    def _make_request(self, brackets: Sequence[tuple[float, float]], ranks: list[int]) -> Request:
        self._open = ranks
        edges = [_edges(a, b, self._bins) for a, b in brackets]
        m = len(edges)
        layout = {
            "counts": (m, self._bins + 2),
            "suppressed": (m, self._bins + 2),
            "withheld": (1,),
        }
        return Request(
            query=self.query,
            pass_no=self._pass,
            step="bins",
            state={"edges": edges},
            rules=self.rules,
            secure=self.secure,
            layout=layout,
        )

    @property
    def done(self) -> bool:
        return self._done

    def request(self) -> Request:
        return self._request

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        self._sites = len(sites)
        counts = np.asarray(total.arrays["counts"], dtype=np.float64)
        flags = np.asarray(total.arrays["suppressed"]) > 0
        if total.arrays["withheld"][0] > 0:
            self._withheld, self._done = True, True
            return self
        if self._pass == 1:
            self._n = int(total.records)
            if self._n < max(1, self.rules.min_cell):
                self._withheld, self._done = True, True
                return self
            ranks = set()
            for p in self.query.options["probs"]:
                k = math.floor(p * (self._n - 1))
                ranks |= {k, min(k + 1, self._n - 1)}
            rows = {k: 0 for k in sorted(ranks)}
            old = {k: (self._lo, self._hi) for k in rows}
        else:
            rows = {k: i for i, k in enumerate(self._open)}
            old = {k: self._brackets[k] for k in rows}
        assert self._n is not None
        still: list[int] = []
        for k, i in rows.items():
            a, b = old[k]
            new = self._refine(k, a, b, counts[i], flags[i])
            if new is None:
                self._outside.add(k)
                self._brackets[k] = (a, b)
                continue
            self._brackets[k] = new
            if new[1] - new[0] > self._tol and new != (a, b):
                still.append(k)
        self._pass += 1
        if not still or self._pass > _MAX_PASSES:
            self._done = True
        else:
            self._request = self._make_request([self._brackets[k] for k in still], still)
        return self

    def _refine(
        self, k: int, a: float, b: float, row: Array, hidden: Array
    ) -> tuple[float, float] | None:
        """The narrowest bracket the rank ``k`` can lie in, or None outside the bounds."""
        assert self._n is not None
        n = self._n
        published = np.where(hidden, 0.0, row)
        lo_cum = np.cumsum(published)  # at least this many values up to entry e
        hi_cum = n - (published.sum() - lo_cum)  # at most this many
        before_lo = np.concatenate([[0.0], lo_cum[:-1]])
        can_hold = hidden | (row > 0)  # a published empty bin holds no rank
        possible = np.flatnonzero((before_lo <= k) & (k < hi_cum) & can_hold)
        if possible.size == 0:
            return (a, b)
        first, last = int(possible[0]), int(possible[-1])
        last_entry = len(row) - 1
        if self._pass == 1 and (first == 0 or last == last_entry):
            return None  # the rank lies (or may lie) below lo or above hi
        # Later passes: the rank is known to lie in [a, b]; clamp to it.
        # Widen to bins holding at least min_cell published records (never pin a rank to
        # an interval of fewer), growing towards the fuller side.
        first, last = max(first, 1), min(last, last_entry - 1)
        while published[first : last + 1].sum() < self.rules.min_cell:
            if first == 1 and last == last_entry - 1:
                return (a, b)
            grow_left = first > 1 and (
                last == last_entry - 1 or published[first - 1] >= published[last + 1]
            )
            if grow_left:
                first -= 1
            else:
                last += 1
        edges = _edges(a, b, self._bins)
        return (edges[first - 1], edges[last])

    def result(self) -> Result:
        opts = self.query.options
        probs = tuple(float(p) for p in opts["probs"])
        if not self._done:
            raise ConfigurationError("the analysis has no result yet")
        if self._withheld or self._n is None:
            none: tuple[None, ...] = tuple(None for _ in probs)
            return QuantileResult(
                column=opts["column"],
                probs=probs,
                values=none,
                errors=none,
                n=None,
                passes=self._pass - 1,
                sites=self._sites,
            )
        values: list[float | None] = []
        errors: list[float | None] = []
        for p in probs:
            r = p * (self._n - 1)
            k = math.floor(r)
            k1 = min(k + 1, self._n - 1)
            frac = r - k
            if k in self._outside or k1 in self._outside:
                values.append(None)
                errors.append(None)
                continue
            (a0, b0), (a1, b1) = self._brackets[k], self._brackets[k1]
            values.append((1 - frac) * (a0 + b0) / 2 + frac * (a1 + b1) / 2)
            errors.append((1 - frac) * (b0 - a0) / 2 + frac * (b1 - a1) / 2)
        return QuantileResult(
            column=opts["column"],
            probs=probs,
            values=tuple(values),
            errors=tuple(errors),
            n=self._n,
            passes=self._pass - 1,
            sites=self._sites,
        )


register(
    KindSpec(
        name="quantile",
        check_options=_options,
        columns=lambda options: (options["column"],),
        start=lambda query, rules, secure: QuantileAnalysis(query, rules, secure),
        answer=_answer,
        check=_check,
        result_from_dict=reader(QuantileResult.from_dict, "quantile"),
        secure_supported=True,
        cells=_cells,
    )
)
