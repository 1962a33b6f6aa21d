"""Survival estimators (lifelines' formulas) and the results of the survival kinds.

The pooled estimators are functions of the numbers at risk and of the events at each
released time, which :mod:`._survival` computes exactly from the sites' summed counts:
Kaplan–Meier with lifelines' exponential-Greenwood interval, Nelson–Aalen with lifelines'
default (smoothed) tie handling, and the (multivariate) log-rank test. Written here in a
few lines of numpy (scipy only for the normal and chi-square quantiles) because lifelines
is a pandas-heavy fitting library and a development dependency only; the tests compare
every number with it on pooled data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from biofed.analytics._protocol import Result
from biofed.core import Array, ConfigurationError

#: Tied events up to which Nelson–Aalen's increments are summed term by term.
_DIRECT_SUM = 10_000


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
        if d[j] > _DIRECT_SUM:
            # Σᵢ 1/(n−i) and Σᵢ 1/(n−i)², i < d, in closed form: a site's (possibly forged)
            # count of a billion tied events must not make the coordinator expand them
            lo, hi = float(n[j] - d[j] + 1), float(n[j] + 1)
            inc[j] = float(special.digamma(hi) - special.digamma(lo))
            var[j] = float(special.polygamma(1, lo) - special.polygamma(1, hi))
        elif d[j] > 0:
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
        Patients in the group (at the sites that released it).
    withheld_sites:
        Sites that withheld this group (they hold fewer than ``min_cell`` of its patients,
        none included): the curve rests on the other sites only, and is not the pooled
        curve when this is above 0.
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
    withheld_sites: int = 0

    @property
    def shown_level(self) -> str:
        """The level, marked where sites withheld the group (for a terminal table)."""
        if not self.withheld_sites:
            return self.level
        sites = "site" if self.withheld_sites == 1 else "sites"
        return f"{self.level} (withheld at {self.withheld_sites} {sites})"

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
            "withheld_sites": self.withheld_sites,
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
            withheld_sites=int(data.get("withheld_sites", 0)),
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
            row = [c.shown_level, str(c.records), str(events)]
            row.append("–" if med is None else _time_fmt(med))
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
            row = [c.shown_level, str(c.records), str(events)]
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
        one last tied time, or sites withheld their answer — then the statistic
        approximates the pooled one.
    withheld_sites:
        Sites that withheld their counts (a group of fewer than ``min_cell`` patients
        there, none included): the test rests on the other sites only.
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
    withheld_sites: int = 0

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
            "withheld_sites": self.withheld_sites,
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
                withheld_sites=int(data.get("withheld_sites", 0)),
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
        if self.withheld_sites:
            note = f" (approx.: withheld at {self.withheld_sites} site(s))"
        rows.append(
            ["log-rank", f"χ² = {self.statistic:.4g}", f"df = {self.df}", f"p = {self.p:.4g}{note}"]
        )
        return headers, rows
