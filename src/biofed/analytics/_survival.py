"""Federated survival curves and the log-rank test: ``km``, ``nelson_aalen``, ``logrank``.

Kaplan–Meier (with lifelines' exponential-Greenwood interval), Nelson–Aalen (with
lifelines' default tie handling) and the log-rank test (lifelines' ``logrank_test`` /
``multivariate_logrank_test``) are functions of the numbers at risk, events and
censorings at each distinct time, per group; those are sums over sites, so the pooled
estimate is computed exactly from the sites' counts. The estimators are written here
(a few lines of numpy each) because lifelines is a pandas-heavy fitting library that is a
development dependency only; its formulas are matched exactly and tested against it.

Protocol
--------
* **No grid, plain mode** — two passes. Pass 1 (``"times"``, not summable): each site
  sends, per group, its distinct event/censoring times where its own number at risk is at
  least ``min_at_risk`` (no counts). The coordinator takes the union as the time grid.
  Pass 2 (``"counts"``, summable, layout fixed by the grid): per group and grid time, the
  site's events and censorings, its cohort size per group and its tail totals.
* **With a grid** (``"grid": {"step": s, "stop": t}`` → 0, s, 2s, … ≤ t, or an explicit
  increasing list): one ``"counts"`` pass. Each time is binned to the first grid point
  ≥ it; times beyond the last point fall in an overflow bin that is never reported. Secure
  mode requires a grid: a union of the sites' own times is not a sum.

Log-rank: computed from the same counts over every grid time (and, in plain mode, the
sites' tail blocks as one last tied time — then the statistic is not exactly the pooled
one and the result says ``exact = False``; with a grid in secure mode, or where no site
coarsens, it equals lifelines' statistic).

Security notes
--------------
Threat: a researcher (or the coordinator) reading one patient's event or censoring time
off a survival curve's tail, where only a few patients remain at risk — the last steps of
a published curve are individual patients. Standard: the "minimum number at risk" rule of
statistical disclosure control for survival tables (Hundepool et al., *Statistical
Disclosure Control*, Wiley 2012, §4; the vantage6 and DataSHIELD Kaplan–Meier guards), as
:class:`DisclosureRules.min_at_risk`:

* a step is released only at times where at least ``min_at_risk`` patients are at risk;
  the tail where fewer are at risk is coarsened into one block: its number at risk at the
  start, its total events and censorings, and no times;
* **plain mode**: every site applies the rule to its own counts (the stricter of its own
  and the request's ``min_at_risk``): its pass-1 times and pass-2 counts cover only the
  times where its own at-risk ≥ ``min_at_risk``; the rest goes into its tail totals. The
  combined curve is reported only at times where every site's data is complete, so no
  released step has fewer than ``min_at_risk`` at risk at any site;
* **secure mode**: the sites' counts are summed unseen, so the coordinator applies the
  rule to the consortium totals (steps where the total at risk ≥ ``min_at_risk``); sites
  send their full counts on the agreed grid, and the request's rules must cover theirs.
  Decided: no per-site "complete" indicator — the rule is on totals, as for every other
  secure statistic, and the log-rank statistic needs every grid time's totals anyway.
  Residual: the coordinator process holds the consortium totals at every grid time,
  tail included (binned to the agreed grid, never released in a result); a consortium
  that does not trust the coordinator with those picks a coarse grid, or plain mode
  (where every site coarsens its own counts before anything leaves).
* An event (or censoring) count of 1 at a time where at least ``min_at_risk`` patients are
  at risk **is released**, as on every published Kaplan–Meier curve: the cell says that one
  of ≥ k patients had the event then, not which one (``min_cell`` does not apply to steps).

DP: not supported (``dp_supported = False``): a survival curve is a long chain of counts
whose product has no useful bounded sensitivity, and noisy at-risk counts break the
estimator's monotonicity; the at-risk rule is the control.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, ProtocolError

#: Most grid points (explicit, from a step, or the union of the sites' times).
MAX_GRID = 10_000
#: Most group levels.
MAX_LEVELS = 20
_KINDS = ("km", "nelson_aalen", "logrank")


# -- options ---------------------------------------------------------------------------------
def _grid_points(grid: object) -> list[float]:
    if isinstance(grid, Mapping):
        if set(grid) != {"step", "stop"}:
            raise ConfigurationError("grid must be a table of step and stop, or a list of times")
        step, stop = grid["step"], grid["stop"]
        for name, v in (("step", step), ("stop", stop)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigurationError(f"grid {name} must be a number")
        if step <= 0 or stop <= 0:
            raise ConfigurationError("grid step and stop must be > 0")
        count = math.floor(stop / step + 1e-9)
        if count + 1 > MAX_GRID:
            raise ConfigurationError(
                f"grid step {step} up to {stop} gives more than {MAX_GRID} points"
            )
        return [float(step) * i for i in range(count + 1)]
    if isinstance(grid, list | tuple):
        if not grid or len(grid) > MAX_GRID:
            raise ConfigurationError(f"a grid list holds 1 to {MAX_GRID} times")
        pts = []
        for v in grid:
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ConfigurationError("grid times must be finite numbers")
            pts.append(float(v))
        if pts[0] < 0 or any(b <= a for a, b in itertools.pairwise(pts)):
            raise ConfigurationError("grid times must be >= 0 and strictly increasing")
        return pts
    raise ConfigurationError("grid must be a table of step and stop, or a list of times")


def _check_options(kind: str, options: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"time", "event", "group", "levels", "grid"} | (
        {"alpha"} if kind != "logrank" else set()
    )
    unknown = sorted(str(k)[:40] for k in options if k not in allowed)
    if unknown:
        raise ConfigurationError(
            f"{kind}: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    out: dict[str, Any] = {
        "time": check_name(options.get("time"), f"{kind} time"),
        "event": check_name(options.get("event"), f"{kind} event"),
    }
    group = options.get("group")
    levels = options.get("levels")
    if group is None:
        if kind == "logrank":
            raise ConfigurationError("logrank needs a group column and its levels")
        if levels is not None:
            raise ConfigurationError(f"{kind}: levels need a group column")
    else:
        out["group"] = check_name(group, f"{kind} group")
        least = 2 if kind == "logrank" else 1
        if not isinstance(levels, list) or not least <= len(levels) <= MAX_LEVELS:
            raise ConfigurationError(
                f"{kind}: levels must list {least} to {MAX_LEVELS} values of the group column"
            )
        if any(isinstance(v, list | dict) for v in levels):
            raise ConfigurationError(f"{kind}: levels must be strings or numbers")
        if len({_level_key(v) for v in levels}) != len(levels):
            raise ConfigurationError(f"{kind}: levels must be distinct")
        out["levels"] = list(levels)
    if kind != "logrank":
        alpha = options.get("alpha", 0.05)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
            raise ConfigurationError(f"{kind}: alpha must be a number in (0, 1)")
        out["alpha"] = float(alpha)
    grid = options.get("grid")
    if grid is not None:
        _grid_points(grid)
        out["grid"] = grid
    return out


def _level_key(v: object) -> tuple[str, str]:
    if isinstance(v, bool):
        return ("n", repr(float(v)))
    if isinstance(v, int | float):
        return ("n", repr(float(v)))
    return ("s", str(v))


def _columns(options: Mapping[str, Any]) -> list[str]:
    cols = [options["time"], options["event"]]
    if options.get("group") is not None:
        cols.append(options["group"])
    return cols


def _level_names(options: Mapping[str, Any]) -> list[str]:
    levels = options.get("levels")
    return ["all"] if levels is None else [str(v) for v in levels]


# -- site side -------------------------------------------------------------------------------
def _site_rows(
    options: Mapping[str, Any], table: QueryTable, cohort: Array
) -> tuple[Array, Array, Array, int]:
    """(times, events 0/1, group index) of the complete cohort rows, and their count."""
    tname, ename = options["time"], options["event"]
    for name in (tname, ename):
        if table.kinds[name] != "numeric":
            raise DataError(f"survival column {name!r} must be numeric")
    time = np.asarray(table.column(tname), np.float64)
    event = np.asarray(table.column(ename), np.float64)
    keep = cohort & ~np.isnan(time) & ~np.isnan(event)
    group = np.zeros(len(table), dtype=np.int64)
    if options.get("group") is not None:
        gname = options["group"]
        col = table.column(gname)
        group[:] = -1
        numeric = table.kinds[gname] == "numeric"
        for i, level in enumerate(options["levels"]):
            if numeric:
                if isinstance(level, str):
                    continue
                hit = np.asarray(col, np.float64) == float(level)
            else:
                hit = np.asarray([v is not None and v == str(level) for v in col], dtype=bool)
            group[hit & (group < 0)] = i
        keep &= group >= 0
    t, e, g = time[keep], event[keep], group[keep]
    if (t < 0).any():
        raise DataError(f"survival column {tname!r} holds negative times")
    if not np.isin(e, (0.0, 1.0)).all():
        raise DataError(f"survival column {ename!r} must be 0 (censored) or 1 (event)")
    return t, e, g, int(keep.sum())


def _own_times(times: Array, k: int) -> Array:
    """Distinct times at which at least ``k`` of ``times`` are at risk (time ≥ t)."""
    uniq, counts = np.unique(times, return_counts=True)
    if len(uniq) == 0:
        return np.zeros(0)
    at_risk = len(times) - np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.asarray(uniq[at_risk >= k], np.float64)


def _request_grid(request: Request) -> Array:
    if request.query.options.get("grid") is not None:
        return np.asarray(_grid_points(request.query.options["grid"]), np.float64)
    grid = request.state.get("grid")
    if not isinstance(grid, list) or not grid:
        raise ProtocolError(f"{request.query.kind}: a counts request without a grid")
    points = np.asarray(_grid_points(grid), np.float64)
    return points


def _answer(
    request: Request,
    table: QueryTable,
    cohort: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    options = request.query.options
    t, e, g, records = _site_rows(options, table, cohort)
    levels = len(_level_names(options))
    k = rules.min_at_risk
    if request.step == "times":
        return Answer(
            arrays={f"times_{i}": _own_times(t[g == i], k) for i in range(levels)},
            records=records,
        )
    if request.step != "counts":
        raise ProtocolError(f"{request.query.kind}: unknown step {request.step[:20]!r}")
    grid = _request_grid(request)
    width = len(grid) + 1  # the last column: times beyond the grid
    index = np.searchsorted(grid, t, side="left")
    events = np.zeros((levels, width))
    censored = np.zeros((levels, width))
    size = np.zeros(levels)
    tail_events = np.zeros(levels)
    tail_censored = np.zeros(levels)
    for i in range(levels):
        mine = g == i
        d = np.bincount(index[mine & (e == 1)], minlength=width).astype(np.float64)
        c = np.bincount(index[mine & (e == 0)], minlength=width).astype(np.float64)
        size[i] = mine.sum()
        if not request.secure:
            # plain mode: this site's own at-risk rule; beyond it, only tail totals
            at_risk = size[i] - np.concatenate([[0.0], np.cumsum(d + c)[:-1]])
            full = at_risk >= k
            full[-1] = False  # the overflow bin has no time
            tail_events[i], tail_censored[i] = d[~full].sum(), c[~full].sum()
            d[~full] = 0.0
            c[~full] = 0.0
        events[i], censored[i] = d, c
    return Answer(
        arrays={
            "events": events,
            "censored": censored,
            "size": size,
            "tail_events": tail_events,
            "tail_censored": tail_censored,
        },
        records=records,
    )


def _counts_layout(levels: int, grid_len: int) -> dict[str, tuple[int, ...]]:
    return {
        "events": (levels, grid_len + 1),
        "censored": (levels, grid_len + 1),
        "size": (levels,),
        "tail_events": (levels,),
        "tail_censored": (levels,),
    }


def _check(request: Request, out: Answer) -> None:
    levels = len(_level_names(request.query.options))
    if request.step == "times":
        if set(out.arrays) != {f"times_{i}" for i in range(levels)}:
            raise ProtocolError("a times answer must carry times_0 … one per group level")
        for name, arr in out.arrays.items():
            if arr.ndim != 1 or len(arr) > MAX_GRID:
                raise ProtocolError(f"{name} must be a list of at most {MAX_GRID} times")
            if len(arr) and (arr[0] < 0 or (np.diff(arr) <= 0).any()):
                raise ProtocolError(f"{name} must be increasing times >= 0")
        return
    _check_counts(out)


def _check_counts(out: Answer) -> None:
    for name, arr in out.arrays.items():
        if (arr < 0).any() or (arr != np.round(arr)).any():
            raise ProtocolError(f"answer array {name!r} must hold counts (integers >= 0)")
    used = (
        out.arrays["events"].sum(axis=1)
        + out.arrays["censored"].sum(axis=1)
        + out.arrays["tail_events"]
        + out.arrays["tail_censored"]
    )
    if (used != out.arrays["size"]).any() or out.arrays["size"].sum() != out.records:
        raise ProtocolError("the answer's counts do not add up to its cohort size")


# -- estimators (lifelines' formulas) ----------------------------------------------------------
def _z(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def kaplan_meier(at_risk: Array, events: Array, alpha: float) -> tuple[Array, Array, Array]:
    """Survival, lower and upper at each time: lifelines' product-limit estimate and its
    exponential-Greenwood (log(−log)) interval, ``KaplanMeierFitter.confidence_interval_``."""
    n = np.asarray(at_risk, np.float64)
    d = np.asarray(events, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        survival = np.exp(np.cumsum(np.log(n - d) - np.log(n)))
        var = d / (n * (n - d))
        var[np.isinf(var)] = 0.0
        cum = np.cumsum(var)
        v = np.log(survival)
        z = _z(alpha)
        lower = np.exp(-np.exp(np.log(-v) - z * np.sqrt(cum) / v))
        upper = np.exp(-np.exp(np.log(-v) + z * np.sqrt(cum) / v))
    return survival, np.nan_to_num(lower, nan=1.0), np.nan_to_num(upper, nan=1.0)


def nelson_aalen(at_risk: Array, events: Array, alpha: float) -> tuple[Array, Array, Array]:
    """Cumulative hazard, lower and upper: lifelines' ``NelsonAalenFitter`` default
    (``nelson_aalen_smoothing=True``: d tied events at n at risk add Σᵢ 1/(n−i), i < d,
    with variance Σᵢ 1/(n−i)²) and its log-transformed interval."""
    n = np.asarray(at_risk, np.int64)
    d = np.asarray(events, np.int64)
    inc = np.zeros(len(n))
    var = np.zeros(len(n))
    for j in range(len(n)):
        if d[j] > 0:
            steps = n[j] - np.arange(d[j], dtype=np.float64)
            inc[j] = float(np.sum(1.0 / steps))
            var[j] = float(np.sum(1.0 / steps**2))
    hazard = np.cumsum(inc)
    cum = np.cumsum(var)
    z = _z(alpha)
    denom = np.where(hazard == 0, 1.0, hazard)
    return (
        hazard,
        hazard * np.exp(-z * np.sqrt(cum) / denom),
        hazard * np.exp(z * np.sqrt(cum) / denom),
    )


def logrank(events: Array, at_risk: Array) -> tuple[float, int, float, Array, Array]:
    """Log-rank statistic, df, p, observed and expected per group, from ``(groups, times)``
    events and numbers at risk (lifelines' ``multivariate_logrank_test``)."""
    from scipy.stats import chi2

    d_gj = np.asarray(events, np.float64)
    n_gj = np.asarray(at_risk, np.float64)
    d = d_gj.sum(axis=0)
    n = n_gj.sum(axis=0)
    live = n > 0
    d_gj, n_gj, d, n = d_gj[:, live], n_gj[:, live], d[live], n[live]
    expected = (n_gj * (d / n)).sum(axis=1)
    observed = d_gj.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (n - d) / (n - 1)
    ratio[~np.isfinite(ratio)] = 1.0
    factor = ratio * d / n**2
    groups = d_gj.shape[0]
    cov = np.empty((groups, groups))
    for a in range(groups):
        for b in range(groups):
            if a == b:
                cov[a, b] = np.sum(factor * n_gj[a] * (n - n_gj[a]))
            else:
                cov[a, b] = -np.sum(factor * n_gj[a] * n_gj[b])
    z = (observed - expected)[:-1]
    stat = float(z @ np.linalg.pinv(cov[:-1, :-1]) @ z)
    df = groups - 1
    return stat, df, float(chi2.sf(stat, df)), observed, expected


# -- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SurvivalCurve:
    """One group's released curve.

    Attributes
    ----------
    level:
        The group level (``"all"`` without a group).
    times:
        Released times (each with an event or censoring, and at least ``min_at_risk`` at
        risk — at every site in plain mode, in total in secure mode).
    estimate, lower, upper:
        Survival (KM) or cumulative hazard (NA) at each time, and the ``1 − alpha``
        interval.
    at_risk, events, censored:
        Counts at each time.
    tail_after:
        The last released time (None: nothing released); later times are coarsened.
    tail_at_risk, tail_events, tail_censored:
        The coarsened tail block: at risk at its start, its events and censorings.
    records:
        Patients in the group.
    """

    level: str
    times: Array
    estimate: Array
    lower: Array
    upper: Array
    at_risk: Array
    events: Array
    censored: Array
    tail_after: float | None
    tail_at_risk: int
    tail_events: int
    tail_censored: int
    records: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "level": self.level,
            "times": self.times.tolist(),
            "estimate": self.estimate.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "at_risk": self.at_risk.tolist(),
            "events": self.events.tolist(),
            "censored": self.censored.tolist(),
            "tail": {
                "after": self.tail_after,
                "at_risk": self.tail_at_risk,
                "events": self.tail_events,
                "censored": self.tail_censored,
            },
            "records": self.records,
        }

    @property
    def survival(self) -> Array:
        """The estimate, read as survival probabilities (a Kaplan–Meier curve)."""
        return self.estimate

    @property
    def cumulative_hazard(self) -> Array:
        """The estimate, read as a cumulative hazard (a Nelson–Aalen curve)."""
        return self.estimate

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SurvivalCurve:
        """From :meth:`to_dict`'s form."""
        arrays = {
            k: np.asarray(data[k], np.float64)
            for k in ("times", "estimate", "lower", "upper", "at_risk", "events", "censored")
        }
        tail = data["tail"]
        return cls(
            level=str(data["level"]),
            tail_after=None if tail["after"] is None else float(tail["after"]),
            tail_at_risk=int(tail["at_risk"]),
            tail_events=int(tail["events"]),
            tail_censored=int(tail["censored"]),
            records=int(data["records"]),
            **arrays,
        )


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _time_fmt(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True, slots=True, kw_only=True)
class _CurvesResult(Result):
    kind: str
    curves: tuple[SurvivalCurve, ...]
    alpha: float
    records: int
    sites: int
    secure: bool
    min_at_risk: int

    def curve(self, level: object = "all") -> SurvivalCurve:
        """The curve of group ``level``."""
        for c in self.curves:
            if c.level == str(level):
                return c
        raise ConfigurationError(f"no group {str(level)[:40]!r} in this result")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "alpha": self.alpha,
            "records": self.records,
            "sites": self.sites,
            "secure": self.secure,
            "min_at_risk": self.min_at_risk,
            "curves": [c.to_dict() for c in self.curves],
        }

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return {
                "kind": str(data["kind"]),
                "alpha": float(data["alpha"]),
                "records": int(data["records"]),
                "sites": int(data["sites"]),
                "secure": bool(data["secure"]),
                "min_at_risk": int(data["min_at_risk"]),
                "curves": tuple(SurvivalCurve.from_dict(c) for c in data["curves"]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a survival result: {str(exc)[:80]}") from None

    def _probe_times(self) -> list[float]:
        last = max((c.tail_after for c in self.curves if c.tail_after is not None), default=None)
        if last is None or last <= 0:
            return []
        return [float(f"{last * q:.2g}") for q in (0.25, 0.5, 0.75)]


def _value_at(curve: SurvivalCurve, time: float, start: float) -> float | None:
    if curve.tail_after is None or time > curve.tail_after:
        return None
    i = int(np.searchsorted(curve.times, time, side="right")) - 1
    return start if i < 0 else float(curve.estimate[i])


@dataclass(frozen=True, slots=True, kw_only=True)
class KaplanMeierResult(_CurvesResult):
    """Federated Kaplan–Meier curves, one per group, with exponential-Greenwood intervals
    (``estimate`` is the survival probability); steps only where ``min_at_risk`` are at
    risk, the rest coarsened into each curve's tail block."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KaplanMeierResult:
        """From :meth:`to_dict`'s form."""
        return cls(**cls._parse(data))

    def median(self, curve: SurvivalCurve) -> float | None:
        """Median survival: the first released time with survival ≤ 0.5 (lifelines'
        definition); None when the curve stays above 0.5 in the released region."""
        hit = np.nonzero(curve.estimate <= 0.5)[0]
        return float(curve.times[hit[0]]) if len(hit) else None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Per group: patients, events, median survival, survival at a few times, and
        where the curve's tail was coarsened."""
        probes = self._probe_times()
        headers = ["group", "patients", "events", "median"]
        headers += [f"S({_time_fmt(t)})" for t in probes]
        headers += ["released to", "tail at risk"]
        rows = []
        for c in self.curves:
            events = int(c.events.sum()) + c.tail_events
            med = self.median(c)
            row = [c.level, str(c.records), str(events), "–" if med is None else _time_fmt(med)]
            row += [_fmt(_value_at(c, t, 1.0)) for t in probes]
            row += [
                "–" if c.tail_after is None else _time_fmt(c.tail_after),
                str(c.tail_at_risk),
            ]
            rows.append(row)
        return headers, rows


@dataclass(frozen=True, slots=True, kw_only=True)
class NelsonAalenResult(_CurvesResult):
    """Federated Nelson–Aalen cumulative hazards (``estimate``), one per group, with
    lifelines' log-transformed intervals; disclosure as :class:`KaplanMeierResult`."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NelsonAalenResult:
        """From :meth:`to_dict`'s form."""
        return cls(**cls._parse(data))

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Per group: patients, events, cumulative hazard at a few times, the tail."""
        probes = self._probe_times()
        headers = ["group", "patients", "events"]
        headers += [f"H({_time_fmt(t)})" for t in probes]
        headers += ["released to", "tail at risk"]
        rows = []
        for c in self.curves:
            events = int(c.events.sum()) + c.tail_events
            row = [c.level, str(c.records), str(events)]
            row += [_fmt(_value_at(c, t, 0.0)) for t in probes]
            row += [
                "–" if c.tail_after is None else _time_fmt(c.tail_after),
                str(c.tail_at_risk),
            ]
            rows.append(row)
        return headers, rows


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRankResult(Result):
    """The log-rank test between groups.

    Attributes
    ----------
    statistic, df, p:
        The chi-square statistic, its degrees of freedom (groups − 1) and p-value.
    levels, observed, expected:
        Per group: observed and expected events under equal hazards.
    exact:
        False when sites' coarsened tails (plain mode) or times beyond the grid entered as
        one last tied time — then the statistic approximates the pooled one.
    """

    kind: str
    statistic: float
    df: int
    p: float
    levels: tuple[str, ...]
    observed: Array
    expected: Array
    exact: bool
    records: int
    sites: int
    secure: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "statistic": self.statistic,
            "df": self.df,
            "p": self.p,
            "levels": list(self.levels),
            "observed": self.observed.tolist(),
            "expected": self.expected.tolist(),
            "exact": self.exact,
            "records": self.records,
            "sites": self.sites,
            "secure": self.secure,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LogRankResult:
        """From :meth:`to_dict`'s form."""
        try:
            return cls(
                kind=str(data["kind"]),
                statistic=float(data["statistic"]),
                df=int(data["df"]),
                p=float(data["p"]),
                levels=tuple(str(v) for v in data["levels"]),
                observed=np.asarray(data["observed"], np.float64),
                expected=np.asarray(data["expected"], np.float64),
                exact=bool(data["exact"]),
                records=int(data["records"]),
                sites=int(data["sites"]),
                secure=bool(data["secure"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a log-rank result: {str(exc)[:80]}") from None

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Observed and expected events per group, then the test."""
        headers = ["group", "observed", "expected", "O/E"]
        rows = [
            [lv, f"{o:g}", f"{e:.2f}", _fmt(o / e if e > 0 else None, 2)]
            for lv, o, e in zip(self.levels, self.observed, self.expected, strict=True)
        ]
        note = "" if self.exact else " (approx.: coarsened tails)"
        rows.append(
            ["log-rank", f"χ² = {self.statistic:.4g}", f"df = {self.df}", f"p = {self.p:.4g}{note}"]
        )
        return headers, rows


# -- coordinator side ------------------------------------------------------------------------
class _SurvivalAnalysis(Analysis):
    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        options = query.options
        self.levels = _level_names(options)
        self._result: Result | None = None
        self._grid: list[float] | None = None
        if options.get("grid") is not None:
            self._grid = _grid_points(options["grid"])
        elif secure:
            raise ConfigurationError(
                f"secure {query.kind} needs an agreed time grid (a union of the sites' own "
                "times is not a sum): give grid = {step = …, stop = …} or a list of times"
            )

    @property
    def done(self) -> bool:
        return self._result is not None

    def request(self) -> Request:
        if self._result is not None:
            raise ProtocolError(f"{self.query.kind}: the analysis is done")
        if self._grid is None:
            return Request(query=self.query, pass_no=1, step="times", rules=self.rules)
        explicit = self.query.options.get("grid") is not None
        return Request(
            query=self.query,
            pass_no=1 if explicit else 2,
            step="counts",
            state={} if explicit else {"grid": self._grid},
            rules=self.rules,
            secure=self.secure,
            layout=_counts_layout(len(self.levels), len(self._grid)),
        )

    def add(self, answers: Mapping[str, Answer]) -> Analysis:
        request = self.request()
        if not answers:
            raise ProtocolError(f"{self.query.kind}: no site answered")
        for out in answers.values():
            _check(request, out)
        if request.step == "times":
            union: set[float] = set()
            for out in answers.values():
                for arr in out.arrays.values():
                    union.update(float(v) for v in arr)
            if len(union) > MAX_GRID:
                raise ConfigurationError(
                    f"{self.query.kind}: the sites hold more than {MAX_GRID} distinct times; "
                    "give a grid"
                )
            self._grid = sorted(union)
            return self
        if request.layout is None:  # pragma: no cover - the counts step always has one
            raise ProtocolError("counts request without a layout")
        complete = np.ones((len(self.levels), len(self._grid or []) + 1), dtype=bool)
        for out in answers.values():
            complete &= _site_complete(out)
        total = _sum(answers.values(), request.layout)
        self._finish(total, len(answers), complete)
        return self

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        if not self.secure:
            raise ProtocolError(
                f"plain {self.query.kind} combines each site's answer (add), not a total"
            )
        request = self.request()
        if request.layout is None:  # pragma: no cover
            raise ProtocolError("counts request without a layout")
        _check_counts(total)
        complete = np.ones((len(self.levels), len(self._grid or []) + 1), dtype=bool)
        self._finish(total, len(sites), complete)
        return self

    def _finish(self, total: Answer, sites: int, complete: Array) -> None:
        grid = np.asarray(self._grid, np.float64)
        d_all = total.arrays["events"]
        c_all = total.arrays["censored"]
        size = total.arrays["size"]
        n_all = size[:, None] - np.concatenate(
            [np.zeros((len(size), 1)), np.cumsum(d_all + c_all, axis=1)[:, :-1]], axis=1
        )
        if self.query.kind == "logrank":
            tails = total.arrays["tail_events"] + total.arrays["tail_censored"]
            exact = bool(tails.sum() == 0 and (d_all[:, -1] + c_all[:, -1]).sum() == 0)
            d = np.concatenate([d_all, total.arrays["tail_events"][:, None]], axis=1)
            n = np.concatenate(
                [n_all, (n_all[:, -1] - d_all[:, -1] - c_all[:, -1])[:, None]], axis=1
            )
            stat, df, p, observed, expected = logrank(d, n)
            self._result = LogRankResult(
                kind="logrank",
                statistic=stat,
                df=df,
                p=p,
                levels=tuple(self.levels),
                observed=observed,
                expected=expected,
                exact=exact,
                records=total.records,
                sites=sites,
                secure=self.secure,
            )
            return
        k = self.rules.min_at_risk
        alpha = float(self.query.options["alpha"])
        curves = []
        for i, level in enumerate(self.levels):
            released = complete[i] & (n_all[i] >= k)
            released[-1] = False
            released = np.logical_and.accumulate(released)
            shown = released & (d_all[i] + c_all[i] > 0)
            n, d, c = n_all[i][shown], d_all[i][shown], c_all[i][shown]
            if self.query.kind == "km":
                est, lo, hi = kaplan_meier(n, d, alpha)
            else:
                est, lo, hi = nelson_aalen(n, d, alpha)
            events_total = d_all[i].sum() + total.arrays["tail_events"][i]
            censored_total = c_all[i].sum() + total.arrays["tail_censored"][i]
            curves.append(
                SurvivalCurve(
                    level=level,
                    times=grid[shown[:-1]],
                    estimate=est,
                    lower=lo,
                    upper=hi,
                    at_risk=n,
                    events=d,
                    censored=c,
                    tail_after=float(grid[shown[:-1]][-1]) if shown.any() else None,
                    tail_at_risk=round(size[i] - d.sum() - c.sum()),
                    tail_events=round(events_total - d.sum()),
                    tail_censored=round(censored_total - c.sum()),
                    records=round(size[i]),
                )
            )
        cls = KaplanMeierResult if self.query.kind == "km" else NelsonAalenResult
        self._result = cls(
            kind=self.query.kind,
            curves=tuple(curves),
            alpha=alpha,
            records=total.records,
            sites=sites,
            secure=self.secure,
            min_at_risk=k,
        )

    def result(self) -> Result:
        if self._result is None:
            raise ProtocolError(f"{self.query.kind}: the analysis is not done")
        return self._result


def _site_complete(out: Answer) -> Array:
    """Where a site's (plain-mode) counts are complete: it still has exactly reported
    patients at or after the time, or it coarsened nothing."""
    d, c = out.arrays["events"], out.arrays["censored"]
    tail = out.arrays["tail_events"] + out.arrays["tail_censored"]
    exits = d + c
    before = np.concatenate([np.zeros((d.shape[0], 1)), np.cumsum(exits, axis=1)[:, :-1]], axis=1)
    exact_left = (out.arrays["size"] - tail)[:, None] - before
    return np.asarray((exact_left > 0) | (tail == 0)[:, None], dtype=bool)


def _sum(answers: Any, layout: Mapping[str, tuple[int, ...]]) -> Answer:
    arrays = {name: np.zeros(shape) for name, shape in layout.items()}
    records = 0
    for out in answers:
        for name in layout:
            arrays[name] += out.arrays[name]
        records += out.records
    return Answer(arrays=arrays, records=records)


def _register(kind: str, result_cls: Any) -> None:
    register(
        KindSpec(
            name=kind,
            check_options=lambda options: _check_options(kind, options),
            columns=_columns,
            start=lambda query, rules, secure: _SurvivalAnalysis(query, rules, secure=secure),
            answer=_answer,
            result_from_dict=result_cls.from_dict,
            check=_check,
            dp_supported=False,
            secure_supported=True,
        )
    )


_register("km", KaplanMeierResult)
_register("nelson_aalen", NelsonAalenResult)
_register("logrank", LogRankResult)
