"""Descriptive query kinds: ``count``, ``describe`` and ``correlation``, and what the
table kinds (``histogram``, ``crosstab``, ``quantile``) share with them.

Every pass of these kinds is a sum (a layout), so they run in plain and secure mode alike.
Each answer carries, beside its statistics, a ``suppressed`` 0/1 flag per released value
(arrays must be finite, so a withheld value travels as 0 with its flag set): in plain mode a
site withholds its own small or dominated values and the combined value is withheld if any
site withheld it (a partial total is never shown as if complete); in secure mode the site
sends exact values and the coordinator applies the same rules (:mod:`._suppress`) to the
consortium totals.

DP answers
----------
With ``dp`` the site adds noise to its arrays (:class:`~biofed.analytics.NoiseSource`) with
the query's ε (and δ) split evenly across the noised arrays of the pass (basic
composition); within one array a record moves every entry it touches, so the Laplace
scale is the array's L1 sensitivity over its ε share and the Gaussian σ its L2 sensitivity
by the analytic Gaussian mechanism. Noisy counts are rounded at the site (post-processing,
which also blunts floating-point attacks on the noise). A DP answer reports 0 records (the
exact cohort size would undo the noise on a count) and is not suppressed at the site; the
coordinator clamps noisy counts at 0 and still withholds those below ``min_cell`` — a
small noisy count is mostly noise yet reads as a fact about few patients. ``describe``
needs ``bounds`` for DP: values are clipped to ``[lo, hi]`` at the site, so a record moves
n by 1, the sum by M = max(|lo|, |hi|) and the sum of squares by M². Dominance is not
checked under DP: clipping bounds any record's influence and the noise is calibrated to
that bound.

Not released: exact minima and maxima (each is one patient's value).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.analytics._noise import gaussian_std, laplace_scale
from biofed.analytics._protocol import (
    Analysis,
    Answer,
    KindSpec,
    NoiseSource,
    Request,
    Result,
    register,
)
from biofed.analytics._query import Query, check_name
from biofed.analytics._rules import DisclosureRules
from biofed.analytics._suppress import dominated, small_cells
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, PolicyViolation, ProtocolError

_MAX_COLUMNS = 64
#: More records than any site holds: a count beyond this is not an answer (as glm's).
MAX_RECORDS = 10**9
#: Arrays of counts: rounded after noise is added.
COUNT_ARRAYS = frozenset({"count", "counts", "n"})


# -- option helpers ------------------------------------------------------------------------------
def only(options: Mapping[str, Any], allowed: Sequence[str], kind: str) -> None:
    """Refuse option keys a kind does not know (one line naming them)."""
    unknown = sorted(str(k)[:40] for k in options if k not in allowed)
    if unknown:
        shown = ", ".join(allowed) or "none"
        raise ConfigurationError(
            f"{kind}: unknown option(s) {', '.join(unknown)}; allowed: {shown}"
        )


def names(value: object, what: str, *, lo: int = 1, hi: int = _MAX_COLUMNS) -> list[str]:
    """A list of ``lo``..``hi`` distinct column names."""
    if not isinstance(value, list | tuple) or not lo <= len(value) <= hi:
        raise ConfigurationError(f"{what} must be a list of {lo} to {hi} column names")
    out = [check_name(v, what) for v in value]
    if len(set(out)) != len(out):
        raise ConfigurationError(f"{what} names a column twice")
    return out


def number(value: object, what: str) -> float:
    """A finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number")
    return float(value)


def interval(value: object, what: str) -> list[float]:
    """``[lo, hi]`` with lo < hi, finite."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigurationError(f"{what} must be [lo, hi]")
    lo, hi = number(value[0], what), number(value[1], what)
    if not lo < hi:
        raise ConfigurationError(f"{what} must have lo < hi")
    return [lo, hi]


def edges_of(value: object, what: str, *, most: int = 1000) -> list[float]:
    """Strictly increasing finite bin edges (2 to ``most`` + 1)."""
    if not isinstance(value, list | tuple) or not 2 <= len(value) <= most + 1:
        raise ConfigurationError(f"{what} must list 2 to {most + 1} bin edges")
    out = [number(v, what) for v in value]
    if any(b <= a for a, b in itertools.pairwise(out)):
        raise ConfigurationError(f"{what} must increase strictly")
    return out


def numeric_values(table: QueryTable, name: str, rows: Array) -> Array:
    """The non-missing values of numeric column ``name`` on ``rows``."""
    if table.kinds[name] != "numeric":
        raise DataError(f"column {name!r} is categorical; this statistic needs numbers")
    col = table.column(name)[rows]
    return np.asarray(col[~np.isnan(col)], dtype=np.float64)


# -- DP --------------------------------------------------------------------------------------------
def add_noise(
    request: Request,
    arrays: dict[str, Array],
    sensitivity: Mapping[str, tuple[float, float]],
    noise: NoiseSource | None,
) -> dict[str, Array]:
    """``arrays`` with the query's DP noise added to those named in ``sensitivity``
    (name → (L1, L2) sensitivity); ε and δ are split evenly across them.

    Privacy notes
    -------------
    Noisy counts (:data:`COUNT_ARRAYS`) are rounded at the site before they leave:
    post-processing, so the guarantee stands, and the released value no longer carries the
    low-order bits through which a floating-point sampler can leak the exact count
    (Mironov 2012). The rounding is symmetric, so a sum of noisy counts stays unbiased;
    negative values are kept for the same reason and clamped only after summing.
    """
    dp = request.query.dp
    if dp is None:
        return arrays
    if noise is None:
        raise PolicyViolation("privacy: a DP query needs the site's noise source")
    share = len(sensitivity)
    out = dict(arrays)
    for name, (l1, l2) in sensitivity.items():
        shape = out[name].shape
        if dp.mechanism == "laplace":
            draw = noise.laplace(laplace_scale(l1, dp.epsilon / share), shape)
        else:
            draw = noise.gaussian(gaussian_std(l2, dp.epsilon / share, dp.delta / share), shape)
        out[name] = out[name] + np.asarray(draw, dtype=np.float64).reshape(shape)
        if name in COUNT_ARRAYS:
            out[name] = np.rint(out[name])
    return out


def noisy_counts(values: Array) -> Array:
    """Noisy counts as published: rounded, never below zero."""
    return np.maximum(np.rint(np.asarray(values, dtype=np.float64)), 0.0)


# -- a one-pass summable analysis ------------------------------------------------------------------
Finish = Callable[["OnePass", Answer, Sequence[str]], Result]


class OnePass(Analysis):
    """A kind answered in one summable pass."""

    def __init__(
        self,
        query: Query,
        rules: DisclosureRules,
        secure: bool,
        *,
        step: str,
        layout: Mapping[str, tuple[int, ...]],
        finish: Finish,
    ) -> None:
        super().__init__(query, rules, secure=secure)
        self._request = Request(
            query=query, pass_no=1, step=step, rules=rules, secure=secure, layout=layout
        )
        self._finish = finish
        self._result: Result | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def request(self) -> Request:
        return self._request

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        self._result = self._finish(self, total, sites)
        return self

    def result(self) -> Result:
        if self._result is None:
            raise ConfigurationError("the analysis has no result yet")
        return self._result


def check_flags(answer: Answer, *flags: str) -> None:
    """A site's 0/1 flag arrays."""
    for name in flags:
        values = answer.arrays[name]
        if not np.isin(values, (0.0, 1.0)).all():
            raise ProtocolError(f"answer array {name!r} must hold 0/1 flags")


def check_counts(request: Request, answer: Answer, *counts: str) -> None:
    """A site's exact counts: non-negative integers (noisy under DP: anything finite)."""
    if request.query.dp is not None:
        return
    if answer.records > MAX_RECORDS:
        raise ProtocolError(f"an answer may rest on at most {MAX_RECORDS} records")
    for name in counts:
        values = answer.arrays[name]
        if (values < 0).any() or (values != np.rint(values)).any():
            raise ProtocolError(f"answer array {name!r} must hold counts (integers >= 0)")
        if (values > MAX_RECORDS).any():
            raise ProtocolError(f"answer array {name!r} counts more than {MAX_RECORDS} records")


def fmt(value: float | int | None) -> str:
    """A value for a terminal table."""
    if value is None:
        return "suppressed"
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def reader(
    read: Callable[[Mapping[str, Any]], Result], kind: str
) -> Callable[[Mapping[str, Any]], Result]:
    """``read`` with a one-line ConfigurationError for a malformed stored result."""

    def checked(data: Mapping[str, Any]) -> Result:
        try:
            return read(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            field = f" (field {str(exc)[:40]})" if isinstance(exc, KeyError) else ""
            raise ConfigurationError(f"a stored {kind} result is malformed{field}") from None

    return checked


def opt_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def opt_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


# -- count -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class CountResult(Result):
    """Records in the cohort over the consortium (None when suppressed)."""

    count: int | None
    sites: int
    dp: bool = False
    kind: str = "count"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "sites": self.sites, "dp": self.dp}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CountResult:
        return cls(count=opt_int(data["count"]), sites=int(data["sites"]), dp=bool(data["dp"]))

    def table(self) -> tuple[list[str], list[list[str]]]:
        label = "count (DP)" if self.dp else "count"
        return ["statistic", "value"], [[label, fmt(self.count)], ["sites", str(self.sites)]]


def _count_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    only(options, (), "count")
    return {}


def _count_answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    n = int(rows.sum())
    arrays = {"count": np.array([float(n)]), "suppressed": np.zeros(1)}
    if request.query.dp is not None:
        return Answer(arrays=add_noise(request, arrays, {"count": (1.0, 1.0)}, noise), records=0)
    if not request.secure and 0 < n < rules.min_cell:
        return Answer(arrays={"count": np.zeros(1), "suppressed": np.ones(1)}, records=0)
    return Answer(arrays=arrays, records=n)


def _count_finish(analysis: OnePass, total: Answer, sites: Sequence[str]) -> Result:
    dp = analysis.query.dp is not None
    value = total.arrays["count"][0]
    count = float(noisy_counts(value)) if dp else float(value)
    hidden = total.arrays["suppressed"][0] > 0 or bool(small_cells(count, analysis.rules.min_cell))
    return CountResult(count=None if hidden else int(count), sites=len(sites), dp=dp)


def _count_check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed")
    check_counts(request, answer, "count")
    if request.query.dp is None and answer.arrays["count"][0] != answer.records:
        raise ProtocolError("a count answer's count and record count differ")


def _count_start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    layout = {"count": (1,), "suppressed": (1,)}
    return OnePass(query, rules, secure, step="count", layout=layout, finish=_count_finish)


# -- describe --------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeResult(Result):
    """Per column: n, sum, mean, variance (ddof 1) and sd; None where withheld.

    ``stats`` holds one dict per column with keys column, n, sum, mean, variance, sd.
    Minima and maxima are not released (each is one patient's value).
    """

    stats: tuple[Mapping[str, Any], ...]
    sites: int
    dp: bool = False
    kind: str = "describe"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "stats": [dict(s) for s in self.stats],
            "sites": self.sites,
            "dp": self.dp,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DescribeResult:
        stats = tuple(
            {
                "column": str(s["column"]),
                "n": opt_int(s["n"]),
                **{k: opt_float(s[k]) for k in ("sum", "mean", "variance", "sd")},
            }
            for s in data["stats"]
        )
        return cls(stats=stats, sites=int(data["sites"]), dp=bool(data["dp"]))

    def column(self, name: str) -> Mapping[str, Any]:
        """The statistics of column ``name``."""
        for s in self.stats:
            if s["column"] == name:
                return s
        raise KeyError(name)

    def table(self) -> tuple[list[str], list[list[str]]]:
        headers = ["column", "n", "sum", "mean", "variance", "sd"]
        rows = [[str(s["column"])] + [fmt(s[k]) for k in headers[1:]] for s in self.stats]
        return headers, rows


def _describe_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    only(options, ("columns", "bounds"), "describe")
    columns = names(options.get("columns"), "describe columns")
    raw = options.get("bounds") or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("describe bounds must be a table of column = [lo, hi]")
    bounds = {}
    for key, value in raw.items():
        if key not in columns:
            raise ConfigurationError(
                f"describe bounds name {str(key)[:40]!r}, not a column asked for"
            )
        bounds[key] = interval(value, f"describe bounds of {key!r}")
    return {"columns": columns, "bounds": bounds}


def _need_bounds(query: Query) -> None:
    if query.dp is not None:
        missing = [c for c in query.options["columns"] if c not in query.options["bounds"]]
        if missing:
            raise ConfigurationError(
                f"describe with dp needs bounds for every column (missing: {', '.join(missing)})"
            )


def _describe_answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    query = request.query
    columns = list(query.options["columns"])
    bounds = query.options["bounds"]
    dp = query.dp is not None
    if dp:
        try:
            _need_bounds(query)
        except ConfigurationError as exc:
            raise PolicyViolation(f"privacy: {exc}") from None
    k = len(columns)
    n, s, ss, dom, sup = (np.zeros(k) for _ in range(5))
    for j, name in enumerate(columns):
        x = numeric_values(table, name, rows)
        if dp:
            lo, hi = bounds[name]
            x = np.clip(x, lo, hi)
        n[j], s[j], ss[j] = x.size, x.sum(), (x * x).sum()
        if not dp and x.size:
            dom[j] = float(_dominated_sums(x, rules.dominance))
    arrays = {"n": n, "sum": s, "sumsq": ss, "dominated": dom, "suppressed": sup}
    if dp:
        worst = max(max(abs(a), abs(b)) for a, b in (bounds[c] for c in columns))
        sens = {"n": (k, math.sqrt(k)), "sum": (k * worst, math.sqrt(k) * worst)}
        sens["sumsq"] = (k * worst**2, math.sqrt(k) * worst**2)
        return Answer(arrays=add_noise(request, arrays, sens, noise), records=0)
    records = int(rows.sum())
    if not request.secure:
        hide = (small_cells(n, rules.min_cell) | (dom > 0)).astype(np.float64)
        for key in ("n", "sum", "sumsq"):
            arrays[key] = np.where(hide > 0, 0.0, arrays[key])
        arrays["suppressed"] = hide
        arrays["dominated"] = np.zeros(k)
        if 0 < records < rules.min_cell:
            records = 0
    return Answer(arrays=arrays, records=records)


def _dominated_sums(x: Array, dominance: float) -> bool:
    """Whether one record dominates the sum of |x| (the (1, ``dominance``) rule)."""
    a = np.abs(x)
    return bool(dominated(a.sum(), a.max(), dominance))


def _describe_finish(analysis: OnePass, total: Answer, sites: Sequence[str]) -> Result:
    query = analysis.query
    dp = query.dp is not None
    a = total.arrays
    out = []
    for j, name in enumerate(query.options["columns"]):
        n = float(noisy_counts(a["n"][j])) if dp else float(a["n"][j])
        hidden = (
            a["suppressed"][j] > 0
            or a["dominated"][j] > 0
            or bool(small_cells(n, analysis.rules.min_cell))
        )
        row: dict[str, Any] = {"column": name, "n": None, "sum": None, "mean": None}
        row.update(variance=None, sd=None)
        if not hidden:
            row["n"] = int(n)
            row["sum"] = float(a["sum"][j])
            if n > 0:
                mean = float(a["sum"][j]) / n
                if dp:
                    lo, hi = query.options["bounds"][name]
                    mean = min(max(mean, lo), hi)
                row["mean"] = mean
            if n > 1:
                var = (float(a["sumsq"][j]) - float(a["sum"][j]) ** 2 / n) / (n - 1)
                row["variance"] = max(var, 0.0)
                row["sd"] = math.sqrt(row["variance"])
        out.append(row)
    return DescribeResult(stats=tuple(out), sites=len(sites), dp=dp)


def _describe_check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed", "dominated")
    check_counts(request, answer, "n")
    if request.query.dp is None:
        if (answer.arrays["n"] > answer.records).any():
            raise ProtocolError("a describe answer counts more values than records")
        if (answer.arrays["sumsq"] < 0).any():
            raise ProtocolError("a describe answer has a negative sum of squares")


def _describe_start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    _need_bounds(query)
    k = len(query.options["columns"])
    layout = {name: (k,) for name in ("n", "sum", "sumsq", "dominated", "suppressed")}
    return OnePass(query, rules, secure, step="sums", layout=layout, finish=_describe_finish)


# -- correlation -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class CorrelationResult(Result):
    """Covariance (ddof 1) and Pearson correlation over complete cases (None: withheld)."""

    columns: tuple[str, ...]
    n: int | None
    means: tuple[float, ...] | None
    covariance: tuple[tuple[float, ...], ...] | None
    correlation: tuple[tuple[float | None, ...], ...] | None
    sites: int
    kind: str = "correlation"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "columns": list(self.columns),
            "n": self.n,
            "means": None if self.means is None else list(self.means),
            "covariance": None if self.covariance is None else [list(r) for r in self.covariance],
            "correlation": None
            if self.correlation is None
            else [list(r) for r in self.correlation],
            "sites": self.sites,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorrelationResult:
        def matrix(value: Any) -> Any:
            if value is None:
                return None
            return tuple(tuple(opt_float(v) for v in row) for row in value)

        means = data["means"]
        return cls(
            columns=tuple(str(c) for c in data["columns"]),
            n=opt_int(data["n"]),
            means=None if means is None else tuple(float(v) for v in means),
            covariance=matrix(data["covariance"]),
            correlation=matrix(data["correlation"]),
            sites=int(data["sites"]),
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        headers = ["correlation", *self.columns]
        if self.correlation is None:
            return headers, [[c] + ["suppressed"] * len(self.columns) for c in self.columns]
        rows = [
            [c, *(fmt(v) for v in row)]
            for c, row in zip(self.columns, self.correlation, strict=True)
        ]
        return headers, [*rows, ["n", fmt(self.n)] + [""] * (len(self.columns) - 1)]


def _correlation_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    only(options, ("columns",), "correlation")
    return {"columns": names(options.get("columns"), "correlation columns", lo=2)}


def _correlation_answer(
    request: Request,
    table: QueryTable,
    rows: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    columns = list(request.query.options["columns"])
    for name in columns:
        if table.kinds[name] != "numeric":
            raise DataError(f"column {name!r} is categorical; correlation needs numbers")
    x = np.column_stack([table.column(c)[rows] for c in columns]).astype(np.float64)
    x = x[~np.isnan(x).any(axis=1)]
    m = x.shape[0]
    # the means are released: describe's dominance rule applies to every column (else a
    # correlation query would reveal the sum a describe query withholds)
    dom = m > 0 and any(_dominated_sums(x[:, j], rules.dominance) for j in range(x.shape[1]))
    arrays = {
        "n": np.array([float(m)]),
        "sum": x.sum(axis=0),
        "cross": x.T @ x,
        "suppressed": np.array([float(dom)]),  # secure mode: the total is withheld
    }
    if not request.secure and (0 < m < rules.min_cell or dom):
        k = len(columns)
        hidden = {"n": np.zeros(1), "sum": np.zeros(k), "cross": np.zeros((k, k))}
        return Answer(arrays={**hidden, "suppressed": np.ones(1)}, records=0)
    return Answer(arrays=arrays, records=m)


def _correlation_finish(analysis: OnePass, total: Answer, sites: Sequence[str]) -> Result:
    a = total.arrays
    columns = tuple(analysis.query.options["columns"])
    n = float(a["n"][0])
    if a["suppressed"][0] > 0 or small_cells(n, analysis.rules.min_cell) or n < 2:
        return CorrelationResult(
            columns=columns, n=None, means=None, covariance=None, correlation=None, sites=len(sites)
        )
    mean = a["sum"] / n
    cov = (a["cross"] - n * np.outer(mean, mean)) / (n - 1)
    cov = (cov + cov.T) / 2
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    corr: list[tuple[float | None, ...]] = []
    for i in range(len(columns)):
        corr.append(
            tuple(
                None
                if sd[i] == 0 or sd[j] == 0
                else float(np.clip(cov[i, j] / (sd[i] * sd[j]), -1, 1))
                for j in range(len(columns))
            )
        )
    return CorrelationResult(
        columns=columns,
        n=int(n),
        means=tuple(float(v) for v in mean),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        correlation=tuple(corr),
        sites=len(sites),
    )


def _correlation_check(request: Request, answer: Answer) -> None:
    check_flags(answer, "suppressed")
    check_counts(request, answer, "n")
    if answer.arrays["n"][0] != answer.records:
        raise ProtocolError("a correlation answer's n and record count differ")
    if (np.diag(answer.arrays["cross"]) < 0).any():
        raise ProtocolError("a correlation answer has a negative sum of squares")


def _correlation_start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    k = len(query.options["columns"])
    layout = {"n": (1,), "sum": (k,), "cross": (k, k), "suppressed": (1,)}
    return OnePass(query, rules, secure, step="sums", layout=layout, finish=_correlation_finish)


register(
    KindSpec(
        name="count",
        check_options=_count_options,
        columns=lambda options: (),
        start=_count_start,
        answer=_count_answer,
        check=_count_check,
        result_from_dict=reader(CountResult.from_dict, "count"),
        dp_supported=True,
        secure_supported=True,
    )
)
register(
    KindSpec(
        name="describe",
        check_options=_describe_options,
        columns=lambda options: tuple(options["columns"]),
        start=_describe_start,
        answer=_describe_answer,
        check=_describe_check,
        result_from_dict=reader(DescribeResult.from_dict, "describe"),
        dp_supported=True,
        secure_supported=True,
    )
)
register(
    KindSpec(
        name="correlation",
        check_options=_correlation_options,
        columns=lambda options: tuple(options["columns"]),
        start=_correlation_start,
        answer=_correlation_answer,
        check=_correlation_check,
        result_from_dict=reader(CorrelationResult.from_dict, "correlation"),
        secure_supported=True,
    )
)
