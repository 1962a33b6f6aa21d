"""Kind ``cox``: exact federated Cox proportional hazards by Newton–Raphson on sums.

The fit equals lifelines' ``CoxPHFitter`` on the pooled data (Efron's ties, its default)
and statsmodels' ``PHReg`` with Breslow's: the coordinator assembles the pooled log
partial likelihood, gradient and Hessian from the sites' sums and takes the Newton steps.

Passes
------
1. ``times`` (plain mode, no grid, unstratified): each site's distinct event times, its
   record and event counts and the sums of its covariates and their squares — not a sum;
   the coordinator takes the union of the times. With a ``grid`` option (times counted at
   the first grid point at or after them) or ``strata = "site"``, pass 1 is ``moments``
   instead, a sum (the covariate sums and event counts).
2. ``newton`` (every later pass, a sum whose layout the grid and ``p`` fix): at the
   coordinator's ``β``, on covariates standardised with the pooled means and standard
   deviations, per agreed time the risk-set sums of ``exp(xβ)``, ``x·exp(xβ)``,
   ``xxᵀ·exp(xβ)`` (upper triangle), the event count and (Efron) the same sums over the
   tied events, plus the sum of ``x`` over events (:mod:`._cox_sums`). Stratified by site,
   each site's own partial likelihood is independent of the others', so it sends just its
   log-likelihood, gradient and Hessian — no times leave the site. Standardised
   covariates keep every value near the records' count, which is what secure mode's
   ``clip_range`` and ``quantisation_step`` must cover.

lifelines' conventions, reproduced: covariates are standardised with the pooled mean and
sample standard deviation (at the sites) and the estimates mapped back; the ridge
penalty is ``0.5 · penalizer · n · ‖β‖²`` on the standardised scale (0.5 · penalizer ·
‖β‖² on the mean log partial likelihood); the covariance is the inverse of the *penalised*
observed information, mapped back. The log-likelihood we report excludes the penalty
(lifelines' ``log_likelihood_`` includes it). Newton starts at 0 and takes full steps,
halving one that lowers the penalised log-likelihood (Therneau's ``coxph``); it stops when
the Newton step on the standardised scale is shorter than ``tol`` (default 1e-9, tighter
than lifelines' 1e-7 so that the estimate is its optimum to ~1e-9), or, where the sums
carry rounding noise (secure mode's quantisation), when a step below 1e-5 stops
shrinking quadratically.

Security notes
--------------
Threat: learning single patients from the sums. Guards as the peers (vantage6 v6-coxph,
DataSHIELD ``ds.glm``'s ``nfilter.glm``): the combined answer must rest on at least
``min_sites`` sites (the same sites every pass); a site refuses when it holds fewer than
``records_per_parameter`` records per parameter, a categorical covariate level held by 1
to ``min_cell − 1`` of its records, or a binary design column (a 0/1 indicator) with a
value held by 1 to ``min_cell − 1`` of them (as glm: X'X's row of such a column sums those
few patients' covariates). Fed-TCGA-BRCA's one-hot covariates hold 1 to 9 ones at every
site, so its 39-covariate fit runs only under rules relaxed for it, by design. In plain
mode without a grid each site's event times go to the coordinator and, as the agreed
times, to the other sites. Known limit of the per-time protocol (as of WebDISCO, Lu et al.
2015, and v6-coxph): the risk-set sums at two neighbouring agreed times differ by the rows
that left the risk set between them, so where one patient leaves, ``s1`` differences carry
that patient's covariates — per site in plain mode, pooled in secure mode. A coarse
``grid`` (each interval holding many departures) or ``strata = "site"`` (only the site's
gradient and Hessian leave, secure mode hiding them) is the remedy where that matters. DP
is not supported: Newton's sums have no bounded sensitivity without clipping that would
bias the fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from biofed.analytics._cox_sums import packed, partial_likelihood, risk_index, risk_sums
from biofed.analytics._design import complete_rows, design_matrix, design_names, rare_binary
from biofed.analytics._protocol import (
    MAX_ANSWER_VALUES,
    Analysis,
    Answer,
    KindSpec,
    NoiseSource,
    Request,
    Result,
    register,
)
from biofed.analytics._query import Query, check_name
from biofed.analytics._regression import RegressionResult
from biofed.analytics._rules import DisclosureRules
from biofed.analytics._table import QueryTable
from biofed.core import Array, ConfigurationError, DataError, PolicyViolation, ProtocolError

#: Most agreed event times (grid points) a fit may use.
MAX_TIMES = 10_000
#: Most design columns.
MAX_PARAMETERS = 200
_TIES = ("efron", "breslow")
_HALVINGS = 20
#: A Newton step this short that stops shrinking quadratically (or lowers the
#: log-likelihood) has met the sums' rounding noise (secure mode's quantisation): stop.
_NOISE_FLOOR = 1e-5


# -- options ---------------------------------------------------------------------------------
def _number(value: object, what: str, lo: float, hi: float, *, closed: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"cox {what} must be a number")
    v = float(value)
    if not math.isfinite(v) or not (lo <= v <= hi if closed else lo < v < hi):
        raise ConfigurationError(f"cox {what} must lie in {'[' if closed else '('}{lo}, {hi}")
    return v


def grid_points(grid: object) -> Array:
    """The agreed time points of a ``grid`` option: ``{"step": s, "stop": t}`` gives
    ``0, s, 2s, …`` up to the first point at or past ``t``; a list is taken as it is
    (strictly increasing)."""
    if isinstance(grid, Mapping):
        if set(grid) != {"step", "stop"}:
            raise ConfigurationError("cox grid is {step, stop} or a list of times")
        step = _number(grid["step"], "grid step", 0.0, 1e12, closed=False)
        stop = _number(grid["stop"], "grid stop", 0.0, 1e12)
        count = math.ceil(stop / step - 1e-9) + 1
        if count > MAX_TIMES:
            raise ConfigurationError(f"cox grid has {count} points; at most {MAX_TIMES}")
        return np.arange(count, dtype=np.float64) * step
    if isinstance(grid, list | tuple):
        if not 0 < len(grid) <= MAX_TIMES:
            raise ConfigurationError(f"cox grid must list 1 to {MAX_TIMES} times")
        points = np.asarray([_number(v, "grid time", -1e12, 1e12) for v in grid])
        if np.any(np.diff(points) <= 0):
            raise ConfigurationError("cox grid times must be strictly increasing")
        return points
    raise ConfigurationError("cox grid is {step, stop} or a list of times")


def _check_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    known = {
        "time",
        "event",
        "covariates",
        "levels",
        "ties",
        "penalizer",
        "strata",
        "alpha",
        "max_iter",
        "tol",
        "grid",
    }
    unknown = sorted(str(k)[:40] for k in options if k not in known)
    if unknown:
        raise ConfigurationError(f"cox: unknown option(s) {', '.join(unknown)}")
    for key in ("time", "event", "covariates"):
        if key not in options:
            raise ConfigurationError(f"cox needs option {key!r}")
    time = check_name(options["time"], "cox time")
    event = check_name(options["event"], "cox event")
    covs = options["covariates"]
    if not isinstance(covs, list | tuple) or not covs:
        raise ConfigurationError("cox covariates must be a non-empty list of columns")
    covariates = [check_name(c, "a cox covariate") for c in covs]
    if len(set(covariates)) != len(covariates) or {time, event} & set(covariates):
        raise ConfigurationError("cox covariates must be distinct and not the time or event")
    levels_in = options.get("levels") or {}
    if not isinstance(levels_in, Mapping):
        raise ConfigurationError("cox levels must be a table of covariate → levels")
    levels: dict[str, list[str]] = {}
    for cov, lv in levels_in.items():
        if cov not in covariates:
            raise ConfigurationError(f"cox levels name {cov[:40]!r}, not a covariate")
        if not isinstance(lv, list | tuple) or len(lv) < 2:
            raise ConfigurationError(f"cox levels of {cov[:40]!r} must list at least 2 levels")
        texts = [str(v) for v in lv]
        if len(set(texts)) != len(texts):
            raise ConfigurationError(f"cox levels of {cov[:40]!r} must be distinct")
        levels[cov] = texts
    p = len(design_names(covariates, levels))
    if p > MAX_PARAMETERS:
        raise ConfigurationError(f"cox has {p} parameters; at most {MAX_PARAMETERS}")
    ties = options.get("ties", "efron")
    if ties not in _TIES:
        raise ConfigurationError("cox ties must be 'efron' or 'breslow'")
    strata = options.get("strata")
    if strata not in (None, "site"):
        raise ConfigurationError("cox strata must be absent (null) or 'site'")
    max_iter = options.get("max_iter", 20)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or not 1 <= max_iter <= 100:
        raise ConfigurationError("cox max_iter must be an integer in [1, 100]")
    grid = options.get("grid")
    if grid is not None:
        points = grid_points(grid)
        _check_size(len(points), p, ties=ties, strata=strata)
        grid = [float(v) for v in points] if isinstance(grid, list | tuple) else dict(grid)
    out: dict[str, Any] = {
        "time": time,
        "event": event,
        "covariates": covariates,
        "levels": levels,
        "ties": ties,
        "penalizer": _number(options.get("penalizer", 0.0), "penalizer", 0.0, 1e6),
        "alpha": _number(options.get("alpha", 0.05), "alpha", 0.0, 1.0, closed=False),
        "max_iter": max_iter,
        "tol": _number(options.get("tol", 1e-9), "tol", 0.0, 1.0, closed=False),
    }
    # absent rather than null: a query's options are plain JSON without nulls
    if strata is not None:
        out["strata"] = strata
    if grid is not None:
        out["grid"] = grid
    return out


def _columns(options: Mapping[str, Any]) -> list[str]:
    return [options["time"], options["event"], *options["covariates"]]


def _newton_layout(
    times: int, p: int, *, ties: str, strata: str | None
) -> dict[str, tuple[int, ...]]:
    if strata == "site":
        return {"ll": (1,), "grad": (p,), "hess": (p, p)}
    layout: dict[str, tuple[int, ...]] = {
        "s0": (times,),
        "s1": (times, p),
        "s2": (times, packed(p)),
        "d": (times,),
    }
    if ties == "efron":
        layout |= {"t0": (times,), "t1": (times, p), "t2": (times, packed(p))}
    return layout | {"xe": (p,)}


def _check_size(times: int, p: int, *, ties: str, strata: str | None) -> None:
    size = sum(int(np.prod(s)) for s in _newton_layout(times, p, ties=ties, strata=strata).values())
    if size + 1 > MAX_ANSWER_VALUES:
        raise ConfigurationError(
            f"cox: {times} event times and {p} parameters make {size} values per pass (at most "
            f"{MAX_ANSWER_VALUES - 1}); give a coarser grid or fewer covariates"
        )


# -- site side -------------------------------------------------------------------------------
def _site_rows(
    request: Request, table: QueryTable, cohort: Array, rules: DisclosureRules
) -> tuple[Array, Array, Array]:
    """This site's design matrix, times and events, after its guards."""
    opts = request.query.options
    covariates, levels = opts["covariates"], opts["levels"]
    rows = complete_rows(table, cohort, _columns(opts))
    n = int(np.count_nonzero(rows))
    p = len(design_names(covariates, levels))
    if n < rules.records_per_parameter * p:
        raise PolicyViolation(
            f"disclosure: this site holds fewer than records_per_parameter × parameters "
            f"({rules.records_per_parameter} × {p}) records for this model"
        )
    for cov in covariates:
        if table.kinds[cov] == "categorical":
            values = [str(v) for v in table.column(cov)[rows]]
            for level in levels.get(cov, []):
                count = values.count(level)
                if 0 < count < rules.min_cell:
                    raise PolicyViolation(
                        f"disclosure: a level of covariate {cov[:40]!r} is held by fewer than "
                        f"min_cell ({rules.min_cell}) records at this site"
                    )
    x = design_matrix(table, rows, covariates, levels)
    for j, name in enumerate(design_names(covariates, levels)):
        if rare_binary(x[:, j], rules.min_cell):
            raise PolicyViolation(
                f"disclosure: cox design column {name[:60]!r} is binary and one of its "
                f"values is held by fewer than min_cell ({rules.min_cell}) records at this site"
            )
    time = np.asarray(table.column(opts["time"])[rows], dtype=np.float64)
    event = np.asarray(table.column(opts["event"])[rows], dtype=np.float64)
    if np.any((event != 0) & (event != 1)):
        raise DataError(f"cox event column {opts['event'][:40]!r} must hold 0 or 1")
    if np.any(time < 0):
        raise DataError(f"cox time column {opts['time'][:40]!r} holds negative times")
    return x, time, event.astype(bool)


def _check_spread(eta: Array, least: int) -> None:
    """Refuse a β whose risk weights ``exp(xβ)`` rest on fewer than ``least`` records in
    effect (Kish's effective sample size ``(Σφ)² / Σφ²``, computed on ``φ / max φ``).

    Security notes
    --------------
    Threat: a coordinator that sends a β of its choosing rather than the Newton step, large
    along one covariate, so that one record carries all the risk weight: ``s1 / s0`` at
    the first agreed time is then that record's covariate vector. As glm's guard on its
    IRLS weights (Kish, *Survey Sampling*, 1965).
    """
    if eta.size == 0:
        return
    phi = np.exp(eta - float(np.max(eta)))
    total, squares = float(np.sum(phi)), float(np.sum(phi * phi))
    if total * total < least * squares:
        raise PolicyViolation(
            "disclosure: the requested cox step puts its risk weight on fewer than "
            f"{least} records in effect at this site"
        )


def _vector(state: Mapping[str, Any], key: str, size: int | None) -> Array:
    value = state.get(key)
    if not isinstance(value, list) or (size is not None and len(value) != size):
        raise ProtocolError(f"cox request state {key!r} is not a list of the right length")
    if size is None and not 0 < len(value) <= MAX_TIMES:
        raise ProtocolError(f"cox request state {key!r} must hold 1 to {MAX_TIMES} values")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ProtocolError(f"cox request state {key!r} must hold numbers")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ProtocolError(f"cox request state {key!r} must be finite")
    return arr


def _answer(
    request: Request,
    table: QueryTable,
    cohort: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    del noise  # no DP answers (see the module docstring)
    opts = request.query.options
    x, time, event = _site_rows(request, table, cohort, rules)
    n, p = x.shape
    if request.step == "times":
        if request.layout is not None or "grid" in opts or "strata" in opts:
            raise ProtocolError("cox: a times pass is only asked in plain mode without a grid")
        arrays = {
            "times": np.unique(time[event]),
            "sum_x": x.sum(axis=0),
            "sum_x2": (x * x).sum(axis=0),
            "events": np.array([float(event.sum())]),
        }
        return Answer(arrays=arrays, records=n)
    if request.step == "moments":
        arrays = {
            "sum_x": x.sum(axis=0),
            "sum_x2": (x * x).sum(axis=0),
            "events": np.array([float(event.sum())]),
        }
        return Answer(arrays=arrays, records=n)
    if request.step != "newton":
        raise ProtocolError(f"cox has no pass {request.step[:40]!r}")
    state = request.state
    beta = _vector(state, "beta", p)
    sd = _vector(state, "sd", p)
    if np.any(sd <= 0):
        raise ProtocolError("cox request state 'sd' must be positive")
    xc = (x - _vector(state, "mean", p)) / sd  # lifelines' standardised covariates
    efron = opts["ties"] == "efron"
    if opts.get("grid") is not None:
        grid, binned = grid_points(opts.get("grid")), True
    elif opts.get("strata") is None:
        grid, binned = _vector(state, "times", None), False
        if np.any(np.diff(grid) <= 0):
            raise ProtocolError("cox request state 'times' must be strictly increasing")
    else:  # stratified without a grid: this site's own event times
        grid, binned = np.unique(time[event]), False
    if opts.get("strata") is None:
        # the coordinator's times fix the size of what the site computes: bound it before
        # allocating (a forged request without a layout is not checked by the protocol)
        _check_size(len(grid), p, ties=opts["ties"], strata=None)
    _check_spread(xc @ beta, rules.min_cell)
    index = risk_index(time, event, grid, binned=binned)
    sums = risk_sums(xc, index, event, beta, len(grid), efron=efron)
    xe = xc[event].sum(axis=0)
    if opts.get("strata") == "site":
        ll, grad, hess = partial_likelihood(sums, xe, beta, efron=efron)
        arrays = {"ll": np.array([ll]), "grad": grad, "hess": hess}
    else:
        arrays = {**sums, "xe": xe}
    return Answer(arrays=arrays, records=n)


def _event_counts(d: Array, most: int) -> Array:
    """Per-time event counts: whole (to rounding), >= 0, at most ``most`` in all — a
    forged count would otherwise make the coordinator expand millions of tied events."""
    counts = np.rint(d)
    if np.any(np.abs(d - counts) > 0.01) or np.any(counts < 0) or counts.sum() > most:
        raise ProtocolError("a cox answer's event counts are not counts of its events")
    return counts


def _check(request: Request, out: Answer) -> None:
    """A times answer: sorted distinct finite times, no more than the site's events; a
    Newton answer: event counts that are counts."""
    if request.step == "newton" and "d" in out.arrays:
        _event_counts(out.arrays["d"], out.records)
    if request.step != "times":
        return
    p = len(design_names(request.query.options["covariates"], request.query.options["levels"]))
    if set(out.arrays) != {"times", "sum_x", "sum_x2", "events"}:
        raise ProtocolError("a cox times answer holds times, sum_x, sum_x2 and events")
    times, events = out.arrays["times"], out.arrays["events"]
    shapes = (out.arrays["sum_x"].shape, out.arrays["sum_x2"].shape, events.shape, times.ndim)
    if shapes != ((p,), (p,), (1,), 1):
        raise ProtocolError("a cox times answer has misshapen arrays")
    if len(times) > MAX_TIMES or np.any(np.diff(times) <= 0):
        raise ProtocolError("a cox times answer's times must be distinct, sorted and few")
    count = float(events[0])
    if count != round(count) or not len(times) <= count <= out.records:
        raise ProtocolError("a cox times answer's event count does not add up")


# -- coordinator side ------------------------------------------------------------------------
class CoxAnalysis(Analysis):
    """Newton–Raphson on the sites' summed risk-set sums (see the module docstring)."""

    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        opts = query.options
        self._opts = opts
        self._names = design_names(opts["covariates"], opts["levels"])
        self._p = len(self._names)
        self._efron = opts["ties"] == "efron"
        self._strata = opts.get("strata")
        self._grid = None if opts.get("grid") is None else grid_points(opts.get("grid"))
        if secure and self._grid is None and self._strata is None:
            raise ConfigurationError(
                "cox in secure mode needs a time grid (option grid) or strata = 'site': "
                "without them pass 1 sends each site's event times, which are not a sum"
            )
        self._step = "moments" if self._grid is not None or self._strata else "times"
        self._pass = 1
        self._sites: tuple[str, ...] | None = None
        self._records = 0
        self._events = 0
        self._mean = np.zeros(self._p)
        self._sd = np.ones(self._p)
        self._times: list[float] = []
        self._beta = np.zeros(self._p)  # standardised scale: where the next pass evaluates
        self._best: tuple[Array, float, float, Array, Array] | None = None  # β, ll_pen, ll, g, H
        self._direction = np.zeros(self._p)
        self._halving = 1.0
        self._iterations = 0
        self._converged = False
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def request(self) -> Request:
        if self._done:
            raise ConfigurationError("the cox analysis is done; take its result")
        if self._step == "times":
            return Request(self.query, self._pass, "times", rules=self.rules)
        if self._step == "moments":
            moments: dict[str, tuple[int, ...]] = {
                "sum_x": (self._p,),
                "sum_x2": (self._p,),
                "events": (1,),
            }
            return Request(
                self.query,
                self._pass,
                "moments",
                rules=self.rules,
                secure=self.secure,
                layout=moments,
            )
        state: dict[str, Any] = {
            "beta": [float(v) for v in self._beta],
            "mean": [float(v) for v in self._mean],
            "sd": [float(v) for v in self._sd],
        }
        count = 0
        if self._grid is not None:
            count = len(self._grid)
        elif self._strata is None:
            state["times"] = self._times
            count = len(self._times)
        layout = _newton_layout(count, self._p, ties=self._opts["ties"], strata=self._strata)
        return Request(
            self.query,
            self._pass,
            "newton",
            state=state,
            rules=self.rules,
            secure=self.secure,
            layout=layout,
        )

    def _check_sites(self, sites: Sequence[str], records: int) -> None:
        names = tuple(sorted(sites))
        if len(names) < self.rules.min_sites:
            raise PolicyViolation(
                f"disclosure: the combined answer rests on {len(names)} site(s); cox needs "
                f"at least min_sites = {self.rules.min_sites}"
            )
        if self._sites is None:
            self._sites, self._records = names, records
        elif names != self._sites or records != self._records:
            raise ProtocolError(
                "cox: the sites or their records changed between passes (exact Newton needs "
                "the same sites and rows every pass)"
            )

    def add(self, answers: Mapping[str, Answer]) -> Analysis:
        if self._step != "times":
            return super().add(answers)
        if self._done:
            raise ConfigurationError("the cox analysis is done; take its result")
        records = sum(a.records for a in answers.values())
        self._check_sites(list(answers), records)
        times = np.unique(np.concatenate([a.arrays["times"] for a in answers.values()]))
        if len(times) > MAX_TIMES:
            raise ConfigurationError(
                f"cox: {len(times)} event times (at most {MAX_TIMES}); give a grid"
            )
        _check_size(len(times), self._p, ties=self._opts["ties"], strata=self._strata)
        self._times = [float(v) for v in times]
        sums = {
            key: np.sum([a.arrays[key] for a in answers.values()], axis=0)
            for key in ("sum_x", "sum_x2", "events")
        }
        self._first(sums["sum_x"], sums["sum_x2"], float(sums["events"][0]))
        return self

    def _first(self, sum_x: Array, sum_x2: Array, events: float) -> None:
        """Pooled means and sample standard deviations (lifelines standardises with them),
        from the sums of x and x² (exact enough unless a covariate's mean is ~10⁶ of its
        spread; such a covariate is refused as not varying)."""
        n = self._records
        if n < 2 or events < 1:
            raise DataError("cox needs at least 2 records and 1 event over the sites")
        self._mean = np.asarray(sum_x, dtype=np.float64) / n
        second = np.asarray(sum_x2, dtype=np.float64)
        var = np.clip(second - n * self._mean**2, 0.0, None) / (n - 1)
        flat = np.flatnonzero(var <= 1e-12 * second / n)
        if len(flat):
            raise DataError(
                f"cox covariate {self._names[flat[0]][:60]!r} does not vary over the sites' "
                "records; leave it out"
            )
        self._sd = np.sqrt(var)
        self._events = round(events)
        self._step = "newton"
        self._pass += 1

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        if self._done:
            raise ConfigurationError("the cox analysis is done; take its result")
        self._check_sites(sites, total.records)
        if self._step == "moments":
            arrays = total.arrays
            self._first(arrays["sum_x"], arrays["sum_x2"], float(arrays["events"][0]))
            return self
        if self._step != "newton":
            raise ProtocolError("cox: the times pass is not a sum; use add()")
        arrays = dict(total.arrays)
        if "d" in arrays:
            arrays["d"] = _event_counts(arrays["d"], self._events)
            if arrays["d"].sum() != self._events:
                raise ProtocolError("cox: the Newton pass's event counts differ from pass 1's")
        if self._strata == "site":
            ll, g, h = float(arrays["ll"][0]), arrays["grad"], arrays["hess"]
        else:
            ll, g, h = partial_likelihood(arrays, arrays["xe"], self._beta, efron=self._efron)
        self._pass += 1
        self._iterations += 1
        # standardised scale and lifelines' ridge penalty
        n, pen = self._records, self._opts["penalizer"]
        g = g - pen * n * self._beta
        h = h - pen * n * np.eye(self._p)
        ll_pen = ll - 0.5 * pen * n * float(self._beta @ self._beta)
        self._newton(ll_pen, ll, g, h)
        return self

    def _newton(self, ll_pen: float, ll: float, g: Array, h: Array) -> None:
        best = self._best
        if best is not None and not ll_pen >= best[1] - 1e-12 * abs(best[1]):
            # the step lowered the penalised log-likelihood: halve it — unless it was so
            # short that only the sums' rounding noise can have lowered it
            if float(np.linalg.norm(self._direction)) < _NOISE_FLOOR:
                self._finish(converged=True)
                return
            self._halving /= 2
            if self._halving < 0.5**_HALVINGS or self._iterations >= self._opts["max_iter"]:
                self._finish(converged=False)
                return
            self._beta = best[0] + self._halving * self._direction
            return
        self._best = (self._beta.copy(), ll_pen, ll, g, h)
        try:
            chol = np.linalg.cholesky(-h)
        except np.linalg.LinAlgError:
            raise DataError(
                "cox: the information matrix is singular (collinear covariates, or a "
                "separating one); drop a covariate or set a penalizer > 0"
            ) from None
        delta = np.linalg.solve(chol.T, np.linalg.solve(chol, g))
        norm = float(np.linalg.norm(delta))
        last = float(np.linalg.norm(self._direction)) if best is not None else math.inf
        if norm < self._opts["tol"] or (norm < _NOISE_FLOOR and norm > last / 4):
            self._finish(converged=True)
            return
        if self._iterations >= self._opts["max_iter"]:
            self._finish(converged=False)
            return
        self._direction, self._halving = delta, 1.0
        self._beta = self._beta + delta

    def _finish(self, *, converged: bool) -> None:
        self._converged = converged
        self._done = True

    def result(self) -> Result:
        if not self._done or self._best is None:
            raise ConfigurationError("the cox analysis is not done")
        beta, _, ll, _, h = self._best
        sd = self._sd
        covariance = -np.linalg.inv(h) / np.outer(sd, sd)
        model = self._opts["ties"] + ("+strata" if self._strata else "")
        return RegressionResult.build(
            kind="cox",
            model=model,
            names=self._names,
            coef=beta / sd,
            covariance=(covariance + covariance.T) / 2,
            alpha=self._opts["alpha"],
            loglik=ll,
            iterations=self._iterations,
            converged=self._converged,
            records=self._records,
            events=self._events,
            sites=len(self._sites or ()),
            penalizer=self._opts["penalizer"],
        )


def _start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    return CoxAnalysis(query, rules, secure=secure)


def _result_from_dict(data: Mapping[str, Any]) -> Result:
    return RegressionResult.from_dict(data)


COX = register(
    KindSpec(
        name="cox",
        check_options=_check_options,
        columns=_columns,
        start=_start,
        answer=_answer,
        result_from_dict=_result_from_dict,
        check=_check,
        dp_supported=False,
        secure_supported=True,
    )
)
