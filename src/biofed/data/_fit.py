"""The coordinator's side of federated preprocessing: a pure, immutable multi-pass fit.

``fit = PreprocessingFit.start(spec)``; while not ``fit.done``: send ``fit.request()`` to every
site, collect their :class:`SiteSummary` replies, ``fit = fit.add(replies)``; then
``fit.result()`` is the :class:`Preprocessing`. No I/O: the engine owns the loop.

Passes (only those needed run):

1. moments (Chan et al. parallel n/mean/m2) and missing counts of every numeric covariate after
   its *known* transforms (absolute clip, log), category counts, outcome counts; a covariate
   with ``winsorise`` is summarised raw here;
2. winsorised covariates only: histograms of the raw values on common edges, then refinement
   passes (below) until the quantiles are fitted; then their moments after clip → log;
3. every numeric covariate: histograms on common edges (pooled mean ± 4 sd, 32 bins plus
   under/overflow) of the values after clip → log, with moments and category counts: the
   heterogeneity input (:attr:`PreprocessingFit.last_summaries`) and the median's first
   histogram;
4. covariates imputed with the median: refinement passes.

The moments of the values *after* imputation (which standardisation uses) follow exactly from
the moments of the present values and the fill value (a group of ``missing`` values equal to
the fill, combined by Chan's formula), so they need no pass of their own; the pooled mean and
standard deviation equal numpy's on the pooled rows to rounding (≤ 1e-9 relative).

Federated quantiles
-------------------
The ``q``-quantile follows numpy's default (linear) definition over the pooled present values:
with ``h = (N − 1) q``, it interpolates the order statistics ``x₍⌊h⌋₎`` and ``x₍⌈h⌉₎``. Each
needed order statistic is located in the pooled histogram on common edges (bin width
``w = 8 sd / 32``); the next pass asks for a histogram of 32 equal sub-bins of the bin that
holds it (under/overflow bins are first split geometrically outwards, then the same way), until
the bin holding it is at most ``w / 32`` wide. The estimate is inside that bin, so

    |q̂ − q| ≤ w / 32 = sd / 128

where ``sd`` is the pooled standard deviation of the values the quantile is taken of (raw values
for ``winsorise``; values after clip → log for the median). Order statistics within the common
edges need exactly one refinement pass; a constant column's quantiles are exact.

All sites must answer every pass (the same set of site names): statistics pooled over different
populations would be silently wrong. A site that drops out fails the fit (restart it without
that site).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from biofed.core import ConfigurationError, DataError, check_id
from biofed.data._encode import OTHER
from biofed.data._prep import FittedColumn, Preprocessing, fitted_scale
from biofed.data._spec import StudySpec
from biofed.data._summary import (
    MAX_PASSES,
    NumericRequest,
    NumericStats,
    SiteSummary,
    SummaryRequest,
)

#: Bins of the common histogram between pooled mean ± HIST_SDS standard deviations.
HIST_BINS = 32
HIST_SDS = 4.0
#: Sub-bins of each refinement pass.
REFINE_BINS = 32
DEFAULT_MIN_COUNT = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnPlan:
    """One covariate's transforms with every default resolved (the spec's ``[transforms]``)."""

    kind: str
    clip: tuple[float, float] | None = None
    winsorise: tuple[float, float] | None = None
    log: bool = False
    impute: str | None = "mean"
    impute_value: float | None = None
    missing_indicator: bool | None = None  # None: only if some site has missing values
    standardise: bool | None = None  # None: numeric yes, binary no
    min_count: int = DEFAULT_MIN_COUNT

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "binary", "categorical"):
            raise ConfigurationError(f"unknown covariate kind {self.kind!r}")
        if self.impute not in (None, "mean", "median", "constant"):
            raise ConfigurationError(f"impute must be mean, median or constant, not {self.impute}")
        if (self.impute == "constant") != (self.impute_value is not None):
            raise ConfigurationError("impute_value goes with, and only with, impute = 'constant'")
        if self.clip is not None and self.winsorise is not None:
            raise ConfigurationError("give clip or winsorise, not both")
        if self.winsorise is not None and not 0.0 <= self.winsorise[0] <= self.winsorise[1] <= 1:
            raise ConfigurationError("winsorise quantiles must be within [0, 1]")
        if self.min_count < 1:
            raise ConfigurationError("min_count must be ≥ 1")
        if self.standardise is None:
            object.__setattr__(self, "standardise", self.kind == "numeric")

    @property
    def quantiles(self) -> tuple[float, ...]:
        """The quantile levels of the raw values this column needs (winsorise)."""
        return self.winsorise if self.winsorise is not None else ()


def plan_from_spec(spec: StudySpec) -> dict[str, ColumnPlan]:
    """Each covariate's :class:`ColumnPlan` from a :class:`StudySpec` and its defaults.

    A covariate takes its own ``[transforms.<name>]`` table, else ``[transforms."*"]``; fields
    not stated default by kind: numeric → impute mean (indicator only if some site has missing
    values), standardise; binary (0/1) → left as is (imputed with the mean, with an indicator,
    only if values are missing); categorical → one-hot, ``min_count`` 10.
    """
    transforms = spec.transforms
    plans: dict[str, ColumnPlan] = {}
    for name, kind in spec.covariate_kinds.items():
        t = transforms.get(name, transforms.get("*"))
        if t is None:
            plans[name] = ColumnPlan(kind=kind)
            continue
        if kind == "categorical" and t.one_hot is False:
            raise ConfigurationError(
                f"transforms.{name}: a categorical covariate must be one-hot encoded"
            )
        plans[name] = ColumnPlan(
            kind=kind,
            clip=t.clip,
            winsorise=t.winsorise,
            log=bool(t.log),
            impute=t.impute if t.impute is not None else "mean",
            impute_value=t.impute_value,
            missing_indicator=t.missing_indicator,
            standardise=t.standardise,
            min_count=t.min_count if t.min_count is not None else DEFAULT_MIN_COUNT,
        )
    return plans


@dataclass(frozen=True, slots=True, kw_only=True)
class _Search:
    """Order statistics being located for one column: rank → bin, or → estimate when found."""

    target: float  # the final bin width to reach
    brackets: Mapping[int, tuple[float, float]] = field(default_factory=dict)
    found: Mapping[int, float] = field(default_factory=dict)

    def edges(self) -> tuple[float, ...]:
        """The next pass's edges: each open bracket split into sub-bins, all merged."""
        points: set[float] = set()
        for lo, hi in self.brackets.values():
            points.update(_split(lo, hi, self.target * REFINE_BINS))
        return tuple(sorted(points))

    def update(self, edges: tuple[float, ...], counts: tuple[int, ...]) -> _Search:
        """Locate each open rank in the pooled histogram ``counts`` on ``edges``."""
        found = dict(self.found)
        brackets: dict[int, tuple[float, float]] = {}
        cum = np.cumsum(counts)
        for rank in self.brackets:
            i = int(np.searchsorted(cum, rank, side="right"))
            if i >= len(counts):  # a site's histograms disagree with its n; be safe
                raise DataError("the sites' histograms do not hold the requested value")
            lo = edges[i - 1] if i > 0 else -math.inf
            hi = edges[i] if i < len(edges) else math.inf
            finite = math.isfinite(lo) and math.isfinite(hi)
            if finite and (hi - lo <= self.target * (1 + 1e-9) or not _divisible(lo, hi)):
                before = int(cum[i - 1]) if i > 0 else 0
                share = (rank - before + 0.5) / counts[i]
                found[rank] = lo + share * (hi - lo)
            else:
                brackets[rank] = (lo, hi)
        return _Search(target=self.target, brackets=brackets, found=found)


def _divisible(lo: float, hi: float) -> bool:
    sub = np.linspace(lo, hi, REFINE_BINS + 1)
    return bool(np.all(np.diff(sub) > 0))


def _split(lo: float, hi: float, width: float) -> list[float]:
    """Edges that split ``[lo, hi)``: 32 equal parts, or geometric steps into an open side."""
    big = np.finfo(np.float64).max / 4
    steps = width * np.concatenate([[0.0], 2.0 ** np.arange(REFINE_BINS)])
    if math.isinf(hi):
        raw = lo + steps
    elif math.isinf(lo):
        raw = hi - steps[::-1]
    else:
        raw = np.linspace(lo, hi, REFINE_BINS + 1)
    return [float(v) for v in np.clip(raw, -big, big)]


def _order_ranks(n: int, levels: tuple[float, ...]) -> set[int]:
    ranks: set[int] = set()
    for q in levels:
        h = (n - 1) * q
        ranks.update({math.floor(h), math.ceil(h)})
    return ranks


def _quantile(n: int, q: float, found: Mapping[int, float]) -> float:
    h = (n - 1) * q
    lo, hi = math.floor(h), math.ceil(h)
    return found[lo] + (h - lo) * (found[hi] - found[lo])


def _common_edges(stats: NumericStats) -> tuple[float, ...]:
    """Pooled mean ± 4 sd in 32 bins (± 0.5 when the spread is too small to split)."""
    for half in (HIST_SDS * stats.std, 0.5 * max(1.0, abs(stats.mean))):
        edges = np.linspace(stats.mean - half, stats.mean + half, HIST_BINS + 1)
        if half > 0 and np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0):
            return tuple(float(v) for v in edges)
    raise DataError("a column's values are too large to histogram")


def _target(edges: tuple[float, ...]) -> float:
    return (edges[-1] - edges[0]) / HIST_BINS / REFINE_BINS


def _start_search(stats: NumericStats, levels: tuple[float, ...]) -> _Search | dict[int, float]:
    """A search for ``levels``' order statistics, or their exact values for a constant column."""
    ranks = _order_ranks(stats.n, levels)
    if stats.std == 0:
        return dict.fromkeys(ranks, stats.mean)
    edges = _common_edges(stats)
    return _Search(target=_target(edges), brackets=dict.fromkeys(ranks, (edges[0], edges[-1])))


def _first_search(stats: NumericStats, levels: tuple[float, ...]) -> _Search:
    """A search whose first histogram is the common one (``stats`` carries it)."""
    assert stats.edges is not None
    assert stats.counts is not None
    ranks = _order_ranks(stats.n, levels)
    search = _Search(
        target=_target(stats.edges), brackets=dict.fromkeys(ranks, (-math.inf, math.inf))
    )
    return search.update(stats.edges, stats.counts)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreprocessingFit:
    """The coordinator's fit of a study's preprocessing across sites (pure and immutable).

    Start with :meth:`start` (or :meth:`from_plans`); see the module docstring for the passes
    and the quantiles' error bound.
    """

    plans: Mapping[str, ColumnPlan]
    outcome_kind: str
    passes: int = 0
    sites: tuple[str, ...] = ()
    clip: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    raw: Mapping[str, NumericStats] = field(default_factory=dict)
    moments: Mapping[str, NumericStats] = field(default_factory=dict)
    searches: Mapping[str, _Search] = field(default_factory=dict)
    quantiles: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    categories: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    common_done: bool = False
    last_summaries: Mapping[str, SiteSummary] = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def start(cls, spec: StudySpec) -> PreprocessingFit:
        """A fit of ``spec``'s (a :class:`StudySpec`) covariates with their transforms."""
        return cls.from_plans(plan_from_spec(spec), outcome_kind=spec.outcome_kind)

    @classmethod
    def from_plans(cls, plans: Mapping[str, ColumnPlan], *, outcome_kind: str) -> PreprocessingFit:
        """A fit of covariates given directly as :class:`ColumnPlan` (spec-free)."""
        if outcome_kind not in ("binary", "time_to_event"):
            raise ConfigurationError(f"unknown outcome kind {outcome_kind!r}")
        if not plans:
            raise ConfigurationError("the study has no covariates to preprocess")
        for name in plans:
            check_id(name, what="covariate name")
        clip = {n: p.clip for n, p in plans.items() if p.clip is not None}
        return cls(
            plans=MappingProxyType(dict(plans)),
            outcome_kind=outcome_kind,
            clip=MappingProxyType(clip),
        )

    # -- state ------------------------------------------------------------------------
    def _numeric(self) -> list[str]:
        return [n for n, p in self.plans.items() if p.kind != "categorical"]

    def _stage(self, name: str) -> str:
        plan = self.plans[name]
        if plan.winsorise is not None and name not in self.clip:
            return "raw-moments" if name not in self.raw else "raw-quantiles"
        if name not in self.moments:
            return "moments"
        if not self.common_done:
            return "common"
        if plan.impute == "median" and name not in self.quantiles:
            return "median"
        return "done"

    @property
    def done(self) -> bool:
        """Whether every parameter is fitted (then call :meth:`result`)."""
        return (
            self.passes > 0
            and self.common_done
            and all(self._stage(n) == "done" for n in self._numeric())
        )

    def _transforms(self, name: str, **extra: Any) -> NumericRequest:
        return NumericRequest(clip=self.clip.get(name), log=self.plans[name].log, **extra)

    def request(self) -> SummaryRequest:
        """What every site is asked in the next pass."""
        if self.done:
            raise DataError("the preprocessing fit is done; call result()")
        if self.passes >= MAX_PASSES:
            raise DataError(f"the preprocessing fit did not finish in {MAX_PASSES} passes")
        stages = {n: self._stage(n) for n in self._numeric()}
        early = any(s in ("raw-moments", "raw-quantiles", "moments") for s in stages.values())
        numeric: dict[str, NumericRequest] = {}
        for name, stage in stages.items():
            if stage == "raw-moments":
                numeric[name] = NumericRequest()
            elif stage == "raw-quantiles":
                numeric[name] = NumericRequest(edges=self.searches[name].edges())
            elif stage == "moments":
                numeric[name] = self._transforms(name)
            elif stage == "common" and not early:
                numeric[name] = self._transforms(name, edges=_common_edges(self.moments[name]))
            elif stage == "median":
                numeric[name] = self._transforms(name, edges=self.searches[name].edges())
        categorical: tuple[str, ...] = ()
        if self.passes == 0 or (not early and not self.common_done):
            categorical = tuple(n for n, p in self.plans.items() if p.kind == "categorical")
        return SummaryRequest(pass_no=self.passes + 1, numeric=numeric, categorical=categorical)

    # -- combine ----------------------------------------------------------------------
    def add(self, summaries: Mapping[str, SiteSummary]) -> PreprocessingFit:
        """The fit after this pass's replies (site name → its :class:`SiteSummary`)."""
        request = self.request()
        if not summaries:
            raise DataError("no site answered the preprocessing pass")
        names = tuple(sorted(summaries))
        for site in names:
            check_id(site, what="site name")
        if self.passes and names != self.sites:
            gone = sorted(set(self.sites) - set(names))
            extra = sorted(set(names) - set(self.sites))
            raise DataError(
                f"pass {request.pass_no} has replies from other sites than pass 1 "
                f"(missing {gone}, new {extra}); restart the fit with the sites that answer"
            )
        outcome = (
            {"n", "positives"} if self.outcome_kind == "binary" else {"n", "events", "time_sum"}
        )
        for site, summary in summaries.items():
            _check_reply(site, summary, request)
            # a site withholds its count of cases when it (or the non-cases) is below its
            # disclosure threshold (``summarise``): "n" is all the fit needs
            if "n" not in summary.outcome or not set(summary.outcome) <= outcome:
                raise DataError(f"site {site!r}: the outcome statistics must be {sorted(outcome)}")
        state = replace(self, passes=self.passes + 1, sites=names)
        pooled = {
            n: NumericStats.combine([s.numeric[n] for s in summaries.values()])
            for n in request.numeric
        }
        clip = dict(state.clip)
        raw = dict(state.raw)
        moments = dict(state.moments)
        searches = dict(state.searches)
        quantiles = {k: dict(v) for k, v in state.quantiles.items()}
        common_done = state.common_done
        for name, stats in pooled.items():
            plan = self.plans[name]
            stage = self._stage(name)
            if stage in ("raw-moments", "raw-quantiles"):
                if stage == "raw-moments":
                    raw[name] = stats
                    if stats.n == 0:
                        raise DataError(f"column {name!r} has no values at any site to winsorise")
                    begun = _start_search(stats, plan.quantiles)
                    if isinstance(begun, _Search):
                        searches[name] = begun
                        continue
                    found = begun
                else:
                    assert stats.edges is not None
                    assert stats.counts is not None
                    search = searches[name].update(stats.edges, stats.counts)
                    if search.brackets:
                        searches[name] = search
                        continue
                    found = dict(search.found)
                    del searches[name]
                assert plan.winsorise is not None
                n = raw[name].n
                clip[name] = (
                    _quantile(n, plan.winsorise[0], found),
                    _quantile(n, plan.winsorise[1], found),
                )
            elif stage == "moments":
                moments[name] = replace(stats, edges=None, counts=None)
            elif stage == "common":
                moments[name] = replace(stats, edges=None, counts=None)
                if plan.impute == "median":
                    if stats.n == 0:
                        raise DataError(f"column {name!r} has no values at any site for a median")
                    if stats.std == 0:
                        quantiles[name] = dict.fromkeys(_order_ranks(stats.n, (0.5,)), stats.mean)
                    else:
                        search = _first_search(stats, (0.5,))
                        if search.brackets:
                            searches[name] = search
                        else:
                            quantiles[name] = dict(search.found)
            elif stage == "median":
                assert stats.edges is not None
                assert stats.counts is not None
                search = searches[name].update(stats.edges, stats.counts)
                if search.brackets:
                    searches[name] = search
                else:
                    quantiles[name] = dict(search.found)
                    del searches[name]
        categories = dict(state.categories)
        for name in request.categorical:
            total: dict[str, int] = {}
            for summary in summaries.values():
                for cat, count in summary.categorical[name].items():
                    total[cat] = total.get(cat, 0) + count
            categories[name] = MappingProxyType(total)
        last = state.last_summaries
        if not common_done and not any(
            s in ("raw-moments", "raw-quantiles", "moments")
            for s in (self._stage(n) for n in self._numeric())
        ):
            common_done = True
            last = MappingProxyType(dict(summaries))
        new = replace(
            state,
            clip=MappingProxyType(clip),
            raw=MappingProxyType(raw),
            moments=MappingProxyType(moments),
            searches=MappingProxyType(searches),
            quantiles=MappingProxyType(quantiles),
            categories=MappingProxyType(categories),
            common_done=common_done,
            last_summaries=last,
        )
        if not new._numeric() and not new.common_done:  # categorical only: pass 1 is all
            new = replace(new, common_done=True, last_summaries=MappingProxyType(dict(summaries)))
        return new

    # -- result -----------------------------------------------------------------------
    def result(self) -> Preprocessing:
        """The fitted :class:`Preprocessing` (once :attr:`done`)."""
        if not self.done:
            raise DataError("the preprocessing fit is not done; send request() to the sites")
        columns: list[FittedColumn] = []
        for name, plan in self.plans.items():
            if plan.kind == "categorical":
                counts = self.categories[name]
                kept = sorted(c for c, n in counts.items() if n >= plan.min_count and c != OTHER)
                columns.append(FittedColumn(name=name, kind=plan.kind, vocabulary=(*kept, OTHER)))
                continue
            columns.append(self._fitted_numeric(name, plan))
        return Preprocessing(outcome_kind=self.outcome_kind, columns=tuple(columns))

    def _fitted_numeric(self, name: str, plan: ColumnPlan) -> FittedColumn:
        stats = self.moments[name]
        fill: float | None = None
        if plan.impute == "mean":
            fill = stats.mean if stats.n else None
        elif plan.impute == "median":
            fill = _quantile(stats.n, 0.5, self.quantiles[name])
        elif plan.impute == "constant":
            assert plan.impute_value is not None
            fill = float(plan.impute_value)
        if stats.missing and fill is None:
            raise DataError(
                f"column {name!r} has missing values at some site but no value to impute them "
                "with (set impute, or it has no values at all)"
            )
        indicator = (
            plan.missing_indicator if plan.missing_indicator is not None else stats.missing > 0
        )
        if indicator and fill is None:
            raise DataError(f"column {name!r}: a missing indicator needs an impute method")
        after = stats
        if stats.missing and fill is not None:
            filled = NumericStats(n=stats.missing, missing=0, mean=fill, m2=0.0)
            after = NumericStats.combine([replace(stats, missing=0), filled])
        center, scale = (
            (after.mean, fitted_scale(after.std, after.mean)) if plan.standardise else (0.0, 1.0)
        )
        return FittedColumn(
            name=name,
            kind=plan.kind,
            clip=self.clip.get(name),
            log=plan.log,
            fill=fill,
            indicator=bool(indicator),
            center=center,
            scale=scale,
        )


def _check_reply(site: str, summary: SiteSummary, request: SummaryRequest) -> None:
    if not isinstance(summary, SiteSummary):
        raise DataError(f"site {site!r}: the reply is not a SiteSummary")
    if set(summary.numeric) != set(request.numeric):
        raise DataError(f"site {site!r}: the reply's numeric columns are not the requested ones")
    for name, ask in request.numeric.items():
        if summary.numeric[name].edges != ask.edges:
            raise DataError(f"site {site!r}: column {name!r}'s histogram is not on the edges asked")
    if set(summary.categorical) != set(request.categorical):
        raise DataError(f"site {site!r}: the reply's categorical columns are not the requested")
