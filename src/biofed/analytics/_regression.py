"""The result of an exact federated regression (GLM or Cox): a clinician's table.

Shared by :mod:`._glm` and :mod:`._cox`: both run Newton–Raphson on sums of the sites'
gradients and Hessians, and both end with coefficients, their standard errors (from the
inverse of the summed observed information), Wald z statistics, two-sided p-values, Wald
confidence intervals, the log-likelihood and the number of Newton iterations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.analytics._protocol import Result
from biofed.core import Array, ConfigurationError


def _normal_sf(z: Array) -> Array:
    """Two-sided p-values of standard-normal ``z`` (erfc, exact to double precision)."""
    return np.asarray([math.erfc(abs(float(v)) / math.sqrt(2.0)) for v in np.ravel(z)])


#: What ``exp(coef)`` means for each model (absent: no ratio, e.g. the Gaussian family).
_RATIOS = {
    "binomial": "odds ratio",
    "poisson": "rate ratio",
    "breslow": "hazard ratio",
    "efron": "hazard ratio",
}
_INTERCEPT = "(intercept)"


def _fmt(value: float) -> str:
    """A figure for a terminal table: 4 significant digits, no ``-0``."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.4g}"
    return "0" if text in ("-0", "0") else text


def _fmt_exp(value: float) -> str:
    """``exp(value)`` formatted (``inf`` past double precision's range, not an error)."""
    return _fmt(math.exp(value)) if value < 709.0 else "inf"


def _fmt_p(value: float) -> str:
    """A p-value: 3 significant digits, with a floor where double precision ends."""
    if value < 1e-16:
        return "<1e-16"
    return f"{value:.3g}"


def _normal_quantile(p: float) -> float:
    """Φ⁻¹(p) by bisection on erfc (no scipy in this layer's hot path needed)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True, slots=True, kw_only=True)
class RegressionResult(Result):
    """Coefficients of a federated GLM or Cox model, with their inference.

    Attributes
    ----------
    kind:
        ``"glm"`` or ``"cox"``.
    model:
        What was fitted: ``"binomial"``, ``"poisson"``, ``"gaussian"`` (GLM) or
        ``"breslow"`` / ``"efron"`` ties (Cox), plus ``"+strata"`` when stratified.
    names:
        Parameter names (``"(intercept)"`` first for a GLM with an intercept).
    coef, se, z, p, lower, upper:
        Per parameter: estimate, standard error, Wald z, two-sided p-value, and the
        ``1 − alpha`` Wald interval.
    covariance:
        ``(k, k)`` estimated covariance of the estimates.
    alpha:
        The intervals' level.
    loglik:
        Log-likelihood (Cox: log partial likelihood) at the estimate, penalty excluded.
    iterations:
        Newton iterations to convergence.
    converged:
        Whether the tolerance was met within the iteration cap.
    records:
        Records in the fit, over all sites.
    events:
        Events (Cox) or None.
    sites:
        How many sites' sums the fit rests on.
    penalizer:
        The ridge penalty (lifelines' scaling for Cox), 0 for none.
    scale:
        The Gaussian family's dispersion estimate, else 1.
    deviance:
        A GLM's deviance at the estimate (None for Cox).
    """

    kind: str
    model: str
    names: tuple[str, ...]
    coef: Array
    se: Array
    z: Array
    p: Array
    lower: Array
    upper: Array
    covariance: Array
    alpha: float
    loglik: float
    iterations: int
    converged: bool
    records: int
    events: int | None
    sites: int
    penalizer: float = 0.0
    scale: float = 1.0
    deviance: float | None = None

    @classmethod
    def build(
        cls,
        *,
        kind: str,
        model: str,
        names: Sequence[str],
        coef: Array,
        covariance: Array,
        alpha: float,
        loglik: float,
        iterations: int,
        converged: bool,
        records: int,
        events: int | None,
        sites: int,
        penalizer: float = 0.0,
        scale: float = 1.0,
        deviance: float | None = None,
    ) -> RegressionResult:
        """Fill in standard errors, z, p-values and intervals from ``coef`` and
        ``covariance``."""
        coef = np.asarray(coef, dtype=np.float64)
        cov = np.asarray(covariance, dtype=np.float64)
        se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(se > 0, coef / se, 0.0)
        q = _normal_quantile(1 - alpha / 2)
        return cls(
            kind=kind,
            model=model,
            names=tuple(names),
            coef=coef,
            se=se,
            z=z,
            p=_normal_sf(z),
            lower=coef - q * se,
            upper=coef + q * se,
            covariance=cov,
            alpha=float(alpha),
            loglik=float(loglik),
            iterations=int(iterations),
            converged=bool(converged),
            records=int(records),
            events=None if events is None else int(events),
            sites=int(sites),
            penalizer=float(penalizer),
            scale=float(scale),
            deviance=None if deviance is None else float(deviance),
        )

    @property
    def ratio(self) -> str | None:
        """What ``exp(coef)`` means — ``"odds ratio"`` (logistic), ``"rate ratio"``
        (Poisson), ``"hazard ratio"`` (Cox) — or None where it means nothing (Gaussian)."""
        return _RATIOS.get(self.model.split("+", 1)[0])

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and one formatted row per parameter: coefficient, ``exp(coef)`` (where
        it is an odds, rate or hazard ratio; blank for the intercept), standard error, z,
        p-value and the ``1 − alpha`` interval (on both scales where there is a ratio)."""
        level = f"{100 * (1 - self.alpha):g}%"
        headers = ["parameter", "coef"]
        if self.ratio is not None:
            headers.append(f"exp(coef) [{self.ratio}]")
        headers += ["se", "z", "p", f"lower {level}", f"upper {level}"]
        if self.ratio is not None:
            headers += [f"exp(lower {level})", f"exp(upper {level})"]
        rows: list[list[str]] = []
        for i, name in enumerate(self.names):
            ratio = self.ratio is not None and name != _INTERCEPT
            row = [name, _fmt(float(self.coef[i]))]
            if self.ratio is not None:
                row.append(_fmt_exp(float(self.coef[i])) if ratio else "")
            row += [
                _fmt(float(self.se[i])),
                _fmt(float(self.z[i])),
                _fmt_p(float(self.p[i])),
                _fmt(float(self.lower[i])),
                _fmt(float(self.upper[i])),
            ]
            if self.ratio is not None:
                row += [
                    _fmt_exp(float(self.lower[i])) if ratio else "",
                    _fmt_exp(float(self.upper[i])) if ratio else "",
                ]
            rows.append(row)
        return headers, rows

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "model": self.model,
            "names": list(self.names),
            "coef": self.coef.tolist(),
            "se": self.se.tolist(),
            "z": self.z.tolist(),
            "p": self.p.tolist(),
            "lower": self.lower.tolist(),
            "upper": self.upper.tolist(),
            "covariance": self.covariance.tolist(),
            "alpha": self.alpha,
            "loglik": self.loglik,
            "iterations": self.iterations,
            "converged": self.converged,
            "records": self.records,
            "events": self.events,
            "sites": self.sites,
            "penalizer": self.penalizer,
            "scale": self.scale,
            "deviance": self.deviance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegressionResult:
        """From :meth:`to_dict`'s form."""
        try:
            arrays = {
                k: np.asarray(data[k], dtype=np.float64)
                for k in ("coef", "se", "z", "p", "lower", "upper", "covariance")
            }
            return cls(
                kind=str(data["kind"]),
                model=str(data["model"]),
                names=tuple(str(n) for n in data["names"]),
                alpha=float(data["alpha"]),
                loglik=float(data["loglik"]),
                iterations=int(data["iterations"]),
                converged=bool(data["converged"]),
                records=int(data["records"]),
                events=None if data["events"] is None else int(data["events"]),
                sites=int(data["sites"]),
                penalizer=float(data.get("penalizer", 0.0)),
                scale=float(data.get("scale", 1.0)),
                deviance=None if data.get("deviance") is None else float(data["deviance"]),
                **arrays,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"not a regression result: {str(exc)[:80]}") from None
