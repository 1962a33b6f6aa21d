"""Federated survival curves and the log-rank test: ``km``, ``nelson_aalen``, ``logrank``.

Kaplan–Meier (with lifelines' exponential-Greenwood interval), Nelson–Aalen (with
lifelines' default tie handling) and the log-rank test (lifelines' ``logrank_test`` /
``multivariate_logrank_test``) are functions of the numbers at risk, events and
censorings at each distinct time, per group; those are sums over sites, so the pooled
estimate is computed exactly from the sites' counts (the estimators and result classes
are in :mod:`._survival_results`; this module holds the options, the site side and the
coordinator's analysis).

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
* **small groups, plain mode**: a site withholds a group of fewer than ``min_cell``
  patients (none included) whole — no times, no size, no tail totals (a tail total of a
  group of 8 is itself a small cell) — and flags it ``withheld``; the combined curve then
  rests on the other sites, and says so (``SurvivalCurve.withheld_sites``; a log-rank
  site with any withheld group withholds all of them, ``LogRankResult.withheld_sites``).
  It is never shown as the pooled curve. The combined result refuses a group whose
  released total is 0..``min_cell``−1 (0 included: in secure mode, where the rule is on
  totals, a zero must not read differently from 1..k−1; in plain mode, a group every
  site withheld). A site whose whole cohort is below ``min_cell`` withholds every group,
  in secure mode too (the flags are summed).
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
from biofed.analytics._survival_results import (
    KaplanMeierResult,
    LogRankResult,
    NelsonAalenResult,
    SurvivalCurve,
    kaplan_meier,
    logrank,
    nelson_aalen,
)
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, PolicyViolation, ProtocolError

#: Most grid points (explicit, from a step, or the union of the sites' times).
MAX_GRID = 10_000
#: Most group levels.
MAX_LEVELS = 20
#: The survival kinds this module registers.
SURVIVAL_KINDS = ("km", "nelson_aalen", "logrank")


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


def _check_group_sizes(sizes: Array, withheld: Array, min_cell: int) -> None:
    """Refuse a result with a group (or an ungrouped cohort) of 1 to ``min_cell - 1``
    patients: its size, events and censorings would be released as counts ``count``
    withholds (a group of one patient tells whether that patient had the event). A group
    of none is refused alike (a zero must not read differently from 1..k−1), and so is a
    group every site withheld (``withheld`` counts the sites that did)."""
    if np.any(sizes < min_cell):
        where = " at the sites that released it" if np.any(withheld > 0) else ""
        raise PolicyViolation(
            f"disclosure: a group of the combined cohort holds fewer than min_cell "
            f"({min_cell}) patients{where}; widen the cohort or merge group levels"
        )


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
    withheld = np.zeros(levels)
    if not request.secure:
        # plain mode: a group of 0..min_cell-1 patients here is withheld whole (its size
        # and tail totals are small cells too); log-rank then withholds every group (a
        # test over some of a site's groups would mix sites into one comparison)
        sizes = np.bincount(g, minlength=levels)[:levels]
        withheld = (sizes < rules.min_cell).astype(np.float64)
        if request.query.kind == "logrank" and withheld.any():
            withheld[:] = 1.0
        kept = withheld[g] == 0
        t, e, g = t[kept], e[kept], g[kept]
        records = int(kept.sum())
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
            "withheld": withheld,
        },
        records=records,
    )


def _withheld(request: Request) -> Answer:
    """The fully suppressed answer (a cohort of fewer than ``min_cell`` at this site): no
    times, or every group withheld — the same whatever the rows hold."""
    levels = len(_level_names(request.query.options))
    if request.step == "times":
        return Answer(arrays={f"times_{i}": np.zeros(0) for i in range(levels)}, records=0)
    if request.layout is None:
        raise ProtocolError(f"{request.query.kind}: a counts request without a layout")
    arrays = {name: np.zeros(shape) for name, shape in request.layout.items()}
    arrays["withheld"] = np.ones(levels)
    return Answer(arrays=arrays, records=0)


def _counts_layout(levels: int, grid_len: int) -> dict[str, tuple[int, ...]]:
    return {
        "events": (levels, grid_len + 1),
        "censored": (levels, grid_len + 1),
        "size": (levels,),
        "tail_events": (levels,),
        "tail_censored": (levels,),
        "withheld": (levels,),
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
    flags = out.arrays["withheld"]
    if (flags > 1).any():
        raise ProtocolError("a site's withheld flags must be 0 or 1")
    if (out.arrays["size"][flags > 0] != 0).any():
        raise ProtocolError("a site's withheld group must carry no counts")


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
            # no site released a time (every group withheld or under min_at_risk): one
            # point at 0 still lets the counts pass say so (its totals go to the tails)
            self._grid = sorted(union) or [0.0]
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
        withheld = total.arrays["withheld"]
        _check_group_sizes(size, withheld, self.rules.min_cell)
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
            withheld_sites = round(float(withheld.max())) if len(withheld) else 0
            exact = exact and withheld_sites == 0
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
                withheld_sites=withheld_sites,
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
                    withheld_sites=round(float(withheld[i])),
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
            withheld=_withheld,
        )
    )


for _kind, _cls in zip(
    SURVIVAL_KINDS, (KaplanMeierResult, NelsonAalenResult, LogRankResult), strict=True
):
    _register(_kind, _cls)
