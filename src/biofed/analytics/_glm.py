"""Exact federated generalised linear models: IRLS on sums across sites (kind ``glm``).

Logistic (binomial, logit link), Poisson (log link, with an optional offset or exposure)
and Gaussian (identity link) regression, fitted by iteratively reweighted least squares
exactly as statsmodels' ``GLM(...).fit()`` fits them on pooled data. Every IRLS pass is a
sum: at the current coefficients β each site returns ``X'WX`` (p × p), ``X'Wz`` (p), its
deviance, log-likelihood and Pearson χ² pieces and its record count; the coordinator adds
them, solves ``β ← (ΣX'WX)⁻¹ ΣX'Wz`` and sends the next β. The pooled IRLS step is the same
sum, so the federated path is the pooled path to rounding: the same start (statsmodels'
``starting_mu``: ``(y + ½)/2`` for binomial, ``(y + ȳ)/2`` for Poisson, which takes one
first pass for the pooled ȳ; the Gaussian's first step does not depend on it), the same
stopping rule (statsmodels' criterion ``D_k / φ_{k−1}``, the deviance over the previous
step's scale, converged when two in a row differ by at most ``tol``: ``atol = 1e-8``,
``rtol = 0``; at most ``max_iter`` solves), the same covariance (``scale · (X'WX)⁻¹``
with the weights of the last solve) and the Gaussian scale (Pearson χ² / (n − p)).
Categorical covariates enter through :func:`design_matrix` with the agreed ``levels``
(the first the reference).

Why our own code: statsmodels (the test reference) fits one table; no well-kept library
splits an IRLS pass into site sums and a coordinator step. numpy does the algebra.

Every pass is a sum, so the kind runs under secure aggregation (``secure_supported``). It
has no DP answers (``dp_supported`` False): ``X'WX`` and ``X'Wz`` have no bounded
sensitivity without clipping the design and the outcome, and noise in them would break
the point of the kind, equality with the pooled fit; a DP regression (objective or
gradient perturbation) is a different estimator.

Security notes
--------------
Threat: reconstructing records from a small site's sums. ``X'WX`` and ``X'Wz`` of a site
with p ≥ n records come close to determining its design and outcomes (p(p+3)/2 sums of
n(p+1) unknowns; X'X's intercept row alone is the column totals); a binary outcome with
a few events makes ``X'Wz`` near-individual; a level of a categorical covariate held by a
few patients singles them out; and a coordinator that sends arbitrary β for many passes
collects ``X'W(β)X`` at points of its choice. The guards follow the peers' disclosure
settings — DataSHIELD's ``nfilter.glm`` (parameters at most a share of a site's records),
``nfilter.tab``/``nfilter.levels`` (no small level), its refusal of a ``glm`` whose
outcome is near-constant at a study, and vantage6 v6-glm's minimum organisations: each
site refuses when its complete-case records are fewer than ``records_per_parameter`` × p,
when an agreed level has 1 to ``min_cell − 1`` of them, when a binary column of the
design (a one-hot covariate) or a binary outcome has a value in fewer than ``min_cell``
(binomial: fewer than ``min_cell`` events or non-events, none included), when a requested
β puts the weights on fewer than ``max(min_cell, 2p)`` records in effect
(:func:`_check_spread`), and past ``max_iter`` (≤ 100) passes; the coordinator refuses a
combined answer that rests on fewer than ``min_sites`` sites, or on a set of sites or a
record count that changes between passes, and a reply no honest site could give
(:func:`_check`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from biofed.analytics._design import complete_rows, design_matrix, design_names, rare_binary
from biofed.analytics._protocol import (
    Analysis,
    Answer,
    KindSpec,
    NoiseSource,
    Request,
    register,
)
from biofed.analytics._query import Query, check_name
from biofed.analytics._regression import RegressionResult
from biofed.analytics._rules import DisclosureRules
from biofed.analytics._table import QueryTable
from biofed.core import (
    Array,
    ConfigurationError,
    DataError,
    PolicyViolation,
    ProtocolError,
)

#: GLM families (each with its canonical link: logit, log, identity).
GLM_FAMILIES = ("binomial", "poisson", "gaussian")
#: Most parameters a GLM may have (X'WX of 500² values per site and pass).
MAX_PARAMETERS = 500
#: More records than any site holds: a claim beyond this is not an answer.
MAX_RECORDS = 10**9
_INTERCEPT = "(intercept)"
_EPS = float(np.finfo(float).eps)
_OPTION_KEYS = {
    "outcome",
    "covariates",
    "levels",
    "family",
    "intercept",
    "offset",
    "exposure",
    "alpha",
    "max_iter",
    "tol",
}


# -- options ---------------------------------------------------------------------------------
def _check_options(options: Mapping[str, Any]) -> Mapping[str, Any]:
    unknown = sorted(str(k)[:40] for k in options if k not in _OPTION_KEYS)
    if unknown:
        raise ConfigurationError(
            f"glm: unknown option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(_OPTION_KEYS))}"
        )
    outcome = check_name(options.get("outcome"), "glm outcome")
    covariates = options.get("covariates", [])
    if not isinstance(covariates, list):
        raise ConfigurationError("glm covariates must be a list of column names")
    covs = [check_name(c, "a glm covariate") for c in covariates]
    if len(set(covs)) != len(covs):
        raise ConfigurationError("glm covariates must not repeat")
    family = options.get("family")
    if family not in GLM_FAMILIES:
        raise ConfigurationError(f"glm family must be one of {', '.join(GLM_FAMILIES)}")
    intercept = options.get("intercept", True)
    if not isinstance(intercept, bool):
        raise ConfigurationError("glm intercept must be true or false")
    offset = options.get("offset")
    if offset is not None:
        offset = check_name(offset, "glm offset")
    exposure = options.get("exposure")
    if exposure is not None:
        exposure = check_name(exposure, "glm exposure")
        if family != "poisson":
            raise ConfigurationError("glm exposure needs the log link: family poisson")
    used = [outcome, *covs] + [c for c in (offset, exposure) if c is not None]
    if len(set(used)) != len(used):
        raise ConfigurationError("glm outcome, covariates, offset and exposure must differ")
    levels = options.get("levels", {})
    if not isinstance(levels, Mapping):
        raise ConfigurationError("glm levels must be a table: covariate → list of levels")
    agreed: dict[str, list[str]] = {}
    for cov, values in levels.items():
        if cov not in covs:
            raise ConfigurationError(f"glm levels name {cov[:60]!r}, which is not a covariate")
        if (
            not isinstance(values, list)
            or len(values) < 2
            or not all(isinstance(v, str) and v for v in values)
            or len(set(values)) != len(values)
        ):
            raise ConfigurationError(
                f"glm levels of {cov[:60]!r} must be 2 or more distinct strings, "
                "the reference first"
            )
        agreed[cov] = list(values)
    alpha = options.get("alpha", 0.05)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigurationError("glm alpha must be a number in (0, 1)")
    max_iter = options.get("max_iter", 100)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or not 1 <= max_iter <= 100:
        raise ConfigurationError("glm max_iter must be an integer in [1, 100]")
    tol = options.get("tol", 1e-8)
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
        raise ConfigurationError("glm tol must be a number in (0, 1)")
    out: dict[str, Any] = {
        "outcome": outcome,
        "covariates": covs,
        "levels": agreed,
        "family": family,
        "intercept": intercept,
        "alpha": float(alpha),
        "max_iter": max_iter,
        "tol": float(tol),
    }
    # JSON values here may not be null: an absent offset or exposure is an absent key.
    out.update({k: v for k, v in (("offset", offset), ("exposure", exposure)) if v is not None})
    p = len(_names(out))
    if p == 0:
        raise ConfigurationError("glm needs an intercept or at least one covariate")
    if p > MAX_PARAMETERS:
        raise ConfigurationError(f"glm has {p} parameters; at most {MAX_PARAMETERS}")
    return out


def _columns(options: Mapping[str, Any]) -> list[str]:
    cols = [options["outcome"], *options["covariates"]]
    return cols + [options[k] for k in ("offset", "exposure") if options.get(k) is not None]


def _names(options: Mapping[str, Any]) -> list[str]:
    names = design_names(options["covariates"], options["levels"])
    return ([_INTERCEPT] if options["intercept"] else []) + names


def _layout(step: str, p: int) -> dict[str, tuple[int, ...]]:
    if step == "mean":
        return {"sum_y": (1,)}
    return {"xwx": (p, p), "xwz": (p,), "stats": (4,)}


# -- the families (statsmodels' conventions: clipping, start, deviance, log-likelihood) ------
def _fitted(family: str, eta: Array) -> Array:
    if family == "binomial":
        return np.asarray(special.expit(eta))
    if family == "poisson":
        with np.errstate(over="ignore"):
            return np.exp(eta)
    return eta


def _link(family: str, mu: Array) -> Array:
    if family == "binomial":
        p = np.clip(mu, _EPS, 1 - _EPS)
        return np.asarray(np.log(p / (1 - p)))
    if family == "poisson":
        return np.asarray(np.log(np.clip(mu, _EPS, None)))
    return mu


def _weights_and_response(family: str, y: Array, mu: Array, eta: Array) -> tuple[Array, Array]:
    """IRLS weights ``1 / (g'(μ)² V(μ))`` and working response ``η + g'(μ)(y − μ)`` (η
    without the offset)."""
    if family == "binomial":
        p = np.clip(mu, _EPS, 1 - _EPS)
        deriv = 1 / (p * (1 - p))
        w = 1 / (deriv**2 * p * (1 - p))
    elif family == "poisson":
        m = np.clip(mu, _EPS, None)
        deriv = 1 / m
        w = m
    else:
        deriv = np.ones_like(mu)
        w = np.ones_like(mu)
    return w, eta + deriv * (y - mu)


def _site_stats(family: str, y: Array, mu: Array) -> Array:
    """[deviance, log-likelihood (scale 1; Gaussian: 0, the coordinator has it from the
    deviance), Pearson χ², Σy] of one site's rows at ``mu``."""
    if family == "binomial":
        mu_c = np.clip(mu, _EPS, 1 - _EPS)
        dev = 2 * np.sum(
            y * np.log(np.clip(y / mu_c, _EPS, None))
            + (1 - y) * np.log(np.clip((1 - y) / (1 - mu_c), _EPS, None))
        )
        loglik = np.sum(y * np.log(mu_c / (1 - mu_c)) + np.log(1 - mu_c))
        pearson = np.sum((y - mu) ** 2 / (mu_c * (1 - mu_c)))
    elif family == "poisson":
        mu_c = np.clip(mu, _EPS, None)
        ratio = np.where(y > 0, y / mu_c, 1.0)
        dev = 2 * np.sum(y * np.log(ratio) - (y - mu))
        loglik = np.sum(y * np.log(mu_c) - mu - special.gammaln(y + 1))
        pearson = np.sum((y - mu) ** 2 / mu_c)
    else:
        dev = np.sum((y - mu) ** 2)
        loglik = 0.0
        pearson = dev
    return np.asarray([dev, loglik, pearson, np.sum(y)], dtype=np.float64)


# -- the site --------------------------------------------------------------------------------
def _site_rows(
    table: QueryTable, cohort: Array, options: Mapping[str, Any], rules: DisclosureRules
) -> tuple[Array, Array, Array]:
    """This site's design, outcome and offset on its complete cases, guards applied."""
    family = options["family"]
    rows = complete_rows(table, cohort, _columns(options))
    n = int(np.count_nonzero(rows))
    p = len(_names(options))
    if n < rules.records_per_parameter * p:
        raise PolicyViolation(
            f"disclosure: glm with {p} parameters needs at least "
            f"{rules.records_per_parameter} complete records per parameter at each site "
            f"({rules.records_per_parameter * p}); this site has fewer"
        )
    for cov, agreed in options["levels"].items():
        if table.kinds.get(cov) != "categorical":
            raise DataError(f"glm covariate {cov!r} is numeric but was given levels")
        values = table.column(cov)[rows]
        for level in agreed:
            count = sum(1 for v in values if str(v) == level)
            if 0 < count < rules.min_cell:
                raise PolicyViolation(
                    f"disclosure: a level of glm covariate {cov!r} has fewer than "
                    f"{rules.min_cell} records at this site"
                )
    if table.kinds.get(options["outcome"]) != "numeric":
        raise DataError(f"glm outcome {options['outcome']!r} must be a numeric column")
    y = np.asarray(table.column(options["outcome"])[rows], dtype=np.float64)
    if family == "binomial":
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"glm binomial outcome {options['outcome']!r} must be 0 or 1")
        events = int(np.count_nonzero(y))
        if min(events, n - events) < rules.min_cell:
            raise PolicyViolation(
                f"disclosure: glm binomial outcome {options['outcome']!r} has fewer than "
                f"{rules.min_cell} events or non-events at this site"
            )
    elif rare_binary(y, rules.min_cell):
        raise PolicyViolation(
            f"disclosure: glm outcome {options['outcome']!r} is binary and one of its values "
            f"is held by fewer than {rules.min_cell} records at this site"
        )
    x = design_matrix(table, rows, options["covariates"], options["levels"])
    for j, name in enumerate(design_names(options["covariates"], options["levels"])):
        if rare_binary(x[:, j], rules.min_cell):
            raise PolicyViolation(
                f"disclosure: glm design column {name[:60]!r} is binary and one of its "
                f"values is held by fewer than {rules.min_cell} records at this site"
            )
    if options["intercept"]:
        x = np.column_stack([np.ones(n), x])
    if family == "poisson" and (y < 0).any():
        raise DataError(f"glm poisson outcome {options['outcome']!r} must be >= 0")
    offset = np.zeros(n)
    if options.get("offset") is not None:
        offset = offset + np.asarray(table.column(options["offset"])[rows], dtype=np.float64)
    if options.get("exposure") is not None:
        exposure = np.asarray(table.column(options["exposure"])[rows], dtype=np.float64)
        if (exposure <= 0).any():
            raise DataError(f"glm exposure {options['exposure']!r} must be > 0")
        offset = offset + np.log(exposure)
    return x, y, offset


def _check_spread(w: Array, least: int) -> None:
    """Refuse weights that rest on fewer than ``least`` records in effect.

    Security notes
    --------------
    Threat: a coordinator that sends a β of its choosing (not the IRLS step) so that the
    weights vanish on all but a few records: ``X'WX`` and ``X'Wz`` would then be those
    records' covariates and outcomes. Kish's effective sample size ``(Σw)² / Σw²`` (Kish,
    *Survey Sampling*, 1965) must reach ``least``: the minimum cell count, and twice the
    parameters (well short of p ≥ n, where the sums would determine the records). Not
    the records-per-parameter threshold: honest weights vary (Poisson weights grow with
    the exposure; at TCGA-BRCA's smallest site 39 records weigh as 27).
    """
    total = float(np.sum(w))
    squares = float(np.sum(w * w))
    if not total > 0 or total * total < least * squares:
        raise PolicyViolation(
            "disclosure: the requested glm step puts its weight on fewer than "
            f"{least} records in effect at this site"
        )


def _state_number(state: Mapping[str, Any], key: str) -> float:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"glm request state {key!r} must be a finite number")
    return float(value)


def _answer(
    request: Request,
    table: QueryTable,
    cohort: Array,
    rules: DisclosureRules,
    noise: NoiseSource | None,
) -> Answer:
    del noise  # no DP answers (see the module notes)
    options = request.query.options
    family = options["family"]
    if request.pass_no > options["max_iter"] + 2:  # the mean pass, the start, the solves
        raise PolicyViolation(
            f"disclosure: glm pass {request.pass_no} is past the query's max_iter "
            f"({options['max_iter']}) and its start"
        )
    x, y, offset = _site_rows(table, cohort, options, rules)
    n, p = x.shape
    if request.step == "mean":
        return Answer(arrays={"sum_y": np.asarray([np.sum(y)])}, records=n)
    if request.step == "start":
        if family == "poisson":
            ybar = _state_number(request.state, "ybar")
            if ybar <= 0:
                raise ProtocolError("glm request state 'ybar' must be > 0")
            mu = (y + ybar) / 2
        elif family == "binomial":
            mu = (y + 0.5) / 2
        else:
            mu = y.copy()  # the identity link's first step does not depend on the start
        eta = _link(family, mu) - offset
    elif request.step == "irls":
        beta = request.state.get("beta")
        if not isinstance(beta, list) or len(beta) != p:
            raise ProtocolError(f"glm request state 'beta' must list {p} numbers")
        coef = np.asarray([_state_number({"beta": b}, "beta") for b in beta])
        eta = x @ coef
        mu = _fitted(family, eta + offset)
    else:
        raise ProtocolError(f"glm has no step {request.step[:40]!r}")
    w, z = _weights_and_response(family, y, mu, eta)
    _check_spread(w, max(rules.min_cell, 2 * p))
    xwx = (x * w[:, None]).T @ x
    xwx = (xwx + xwx.T) / 2  # exactly symmetric (the products round in either order)
    xwz = x.T @ (w * z)
    stats = _site_stats(family, y, mu)
    if not (np.isfinite(xwx).all() and np.isfinite(xwz).all() and np.isfinite(stats).all()):
        raise DataError("glm: the fit diverged at this site (non-finite sums); check the model")
    return Answer(arrays={"xwx": xwx, "xwz": xwz, "stats": stats}, records=n)


def _check(request: Request, out: Answer) -> None:
    """Refuse an answer no honest site could give (beyond the layout check)."""
    options = request.query.options
    p = len(_names(options))
    if out.records > MAX_RECORDS:
        raise ProtocolError(f"glm answer claims more than {MAX_RECORDS} records")
    if out.records < request.rules.records_per_parameter * p:
        raise ProtocolError("glm answer rests on fewer records per parameter than the rules allow")
    if request.step == "mean":
        if options["family"] == "poisson" and out.arrays["sum_y"][0] < 0:
            raise ProtocolError("glm answer has a negative outcome sum")
        return
    xwx = out.arrays["xwx"]
    stats = out.arrays["stats"]
    if not np.allclose(xwx, xwx.T, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(xwx)))):
        raise ProtocolError("glm answer's X'WX is not symmetric")
    if (np.diag(xwx) < 0).any() or stats[0] < 0 or stats[2] < 0:
        raise ProtocolError("glm answer has a negative weight sum, deviance or Pearson χ²")
    if options["family"] == "binomial" and stats[1] > 0:
        raise ProtocolError("glm answer has a positive binomial log-likelihood")
    if options["intercept"]:
        # The intercept's weight sum bounds the records: W = 1 (Gaussian), W ≤ 1/4 (logit).
        if options["family"] == "gaussian" and not math.isclose(
            xwx[0, 0], out.records, rel_tol=1e-9
        ):
            raise ProtocolError("glm answer's record count does not match its sums")
        if options["family"] == "binomial" and xwx[0, 0] > out.records / 4 * (1 + 1e-9):
            raise ProtocolError("glm answer's record count does not match its sums")


# -- the coordinator -------------------------------------------------------------------------
class GLMAnalysis(Analysis):
    """The coordinator's IRLS loop over the sites' summed ``X'WX`` and ``X'Wz``."""

    def __init__(self, query: Query, rules: DisclosureRules, *, secure: bool) -> None:
        super().__init__(query, rules, secure=secure)
        self._opts = query.options
        self._family: str = self._opts["family"]
        self._names = _names(self._opts)
        self._p = len(self._names)
        self._pass = 1
        self._step = "mean" if self._family == "poisson" else "start"
        self._state: dict[str, Any] = {}
        self._sites: tuple[str, ...] | None = None
        self._records: int | None = None
        self._site_records: dict[str, int] = {}
        self._beta: Array | None = None
        self._last_xwx: Array | None = None
        self._criterion = math.inf
        self._scale: float | None = None if self._family == "gaussian" else 1.0
        self._iterations = 0
        self._result: RegressionResult | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def request(self) -> Request:
        if self._result is not None:
            raise ProtocolError("the glm fit is done; there is no next request")
        return Request(
            query=self.query,
            pass_no=self._pass,
            step=self._step,
            state=self._state,
            rules=self.rules,
            secure=self.secure,
            layout=_layout(self._step, self._p),
        )

    def add(self, answers: Mapping[str, Answer]) -> Analysis:
        for site, out in answers.items():
            known = self._site_records.setdefault(site, out.records)
            if known != out.records:
                raise ProtocolError(
                    f"site {site[:60]!r} answered on {out.records} records, earlier on {known}"
                )
        return super().add(answers)

    def add_total(self, total: Answer, sites: Sequence[str]) -> Analysis:
        if self._result is not None:
            raise ProtocolError("the glm fit is done; no more answers")
        names = tuple(sorted(sites))
        if len(names) < self.rules.min_sites:
            raise PolicyViolation(
                f"disclosure: a glm must rest on at least {self.rules.min_sites} sites; "
                f"{len(names)} answered"
            )
        if self._sites is not None and names != self._sites:
            raise ProtocolError("the sites answering the glm changed between passes")
        self._sites = names
        if self._records is not None and total.records != self._records:
            raise ProtocolError(
                f"the glm's records changed between passes ({self._records} → {total.records})"
            )
        if not (
            self.rules.records_per_parameter * self._p * len(names)
            <= total.records
            <= MAX_RECORDS * len(names)
        ):
            raise ProtocolError("the glm's record count is not what its sites can hold")
        self._records = total.records
        self._pass += 1
        if self._step == "mean":
            ybar = float(total.arrays["sum_y"][0]) / total.records
            if not ybar > 0:
                raise DataError("glm poisson outcome is zero everywhere; nothing to fit")
            self._step, self._state = "start", {"ybar": ybar}
            return self
        xwx, xwz, stats = (total.arrays[k] for k in ("xwx", "xwz", "stats"))
        # statsmodels' criterion: the deviance over the scale of the step before (1 but
        # for the Gaussian); converged when two in a row differ by at most tol. The
        # Gaussian start here (μ = y) is not statsmodels' (its first step does not depend
        # on it), so its first two criteria are unknown: infinite, which never converges,
        # as statsmodels' do not on any data (they settle at n − p from the third step).
        criterion = math.inf if self._scale is None else float(stats[0]) / self._scale
        if self._family == "gaussian":
            self._scale = None if self._step == "start" else self._gaussian_scale(stats)
        if self._step == "irls":
            self._iterations += 1
            converged = abs(criterion - self._criterion) <= self._opts["tol"]
            if converged or self._iterations >= self._opts["max_iter"]:
                self._finish(stats, converged=converged)
                return self
        self._criterion = criterion
        self._beta = self._solve(xwx, xwz)
        self._last_xwx = xwx
        self._step, self._state = "irls", {"beta": self._beta.tolist()}
        return self

    def _solve(self, xwx: Array, xwz: Array) -> Array:
        eig, vec = np.linalg.eigh(xwx)
        top = float(np.max(np.abs(eig))) if eig.size else 0.0
        if not top > 0 or eig[0] <= top * 1e-13:
            loading = np.abs(vec[:, 0])
            involved = [self._names[i] for i in np.argsort(-loading)[:4] if loading[i] > 0.1]
            raise DataError(
                "glm design is singular (collinear covariates or a level no site holds): "
                + ", ".join(n[:40] for n in involved)
            )
        return np.asarray(np.linalg.solve(xwx, xwz))

    def _gaussian_scale(self, stats: Array) -> float:
        assert self._records is not None
        if self._records <= self._p:
            raise DataError("glm gaussian needs more records than parameters")
        return float(stats[2]) / (self._records - self._p)

    def _finish(self, stats: Array, *, converged: bool) -> None:
        assert self._beta is not None
        assert self._last_xwx is not None
        assert self._records is not None
        n = self._records
        deviance, loglik, _, sum_y = (float(v) for v in stats)
        scale = 1.0
        if self._family == "gaussian":
            scale = self._gaussian_scale(stats)
            mle_scale = deviance / n  # statsmodels' llf uses the ML scale, SSR / n
            loglik = -n / 2 * (1 + math.log(2 * math.pi * mle_scale))
        assert self._sites is not None
        self._result = RegressionResult.build(
            kind="glm",
            model=self._family,
            names=self._names,
            coef=self._beta,
            covariance=scale * np.linalg.inv(self._last_xwx),
            alpha=self._opts["alpha"],
            loglik=loglik,
            iterations=self._iterations,
            converged=converged,
            records=n,
            events=round(sum_y) if self._family == "binomial" else None,
            sites=len(self._sites),
            scale=scale,
            deviance=deviance,
        )

    def result(self) -> RegressionResult:
        if self._result is None:
            raise ProtocolError("the glm fit is not done yet")
        return self._result


def _start(query: Query, rules: DisclosureRules, secure: bool) -> Analysis:
    return GLMAnalysis(query, rules, secure=secure)


SPEC = register(
    KindSpec(
        name="glm",
        check_options=_check_options,
        columns=_columns,
        start=_start,
        answer=_answer,
        result_from_dict=RegressionResult.from_dict,
        check=_check,
        dp_supported=False,
        secure_supported=True,
    )
)
