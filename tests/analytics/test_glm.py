"""Federated GLM (kind ``glm``): equal to statsmodels' GLM on the pooled data, and guarded.

Each test drives the real site side (:func:`biofed.analytics.answer` on a
:class:`QueryTable`) and the real coordinator side (:func:`start`, ``add``/``add_total``)
in a small loop, with the request and every reply crossing as they do on the wire
(``Request.from_json``, :func:`check_answer`), plain or summed as secure aggregation sums
them (:func:`secure_vector`, :func:`total_from_vector`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import statsmodels.api as sm

from biofed.analytics import (
    GLM_FAMILIES,
    Answer,
    DisclosureRules,
    DPOptions,
    Filter,
    GLMAnalysis,
    Query,
    QueryTable,
    RegressionResult,
    Request,
    answer,
    check_answer,
    result_from_json,
    secure_vector,
    start,
    total_from_vector,
)
from biofed.core import ConfigurationError, DataError, PolicyViolation, ProtocolError
from biofed.data import extract
from biofed.datasets import gi_bleed_study, load_tcga_brca, write_eunomia_sites

TOL = 1e-6
LEVELS = ["a", "b", "c"]


# -- the driver ------------------------------------------------------------------------------
def fit(
    tables: Mapping[str, QueryTable],
    query: Query,
    *,
    rules: DisclosureRules | None = None,
    site_rules: DisclosureRules | None = None,
    secure: bool = False,
) -> tuple[RegressionResult, int]:
    """Run ``query`` to the end; the result and the number of passes."""
    analysis = start(query, rules, secure=secure)
    passes = 0
    while not analysis.done:
        req = Request.from_json(analysis.request().to_json())
        replies = {name: answer(req, t, site_rules) for name, t in tables.items()}
        checked = {n: check_answer(req, dict(a.arrays), a.records) for n, a in replies.items()}
        if secure:
            summed = np.sum([secure_vector(req, a) for a in checked.values()], axis=0)
            analysis = analysis.add_total(total_from_vector(req, summed), sorted(checked))
        else:
            analysis = analysis.add(checked)
        passes += 1
    result = analysis.result()
    assert isinstance(result, RegressionResult)
    return result, passes


def rel(a: Any, b: Any) -> float:
    """Largest relative difference of ``a`` from reference ``b`` (absolute near zero)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def compare(res: RegressionResult, ref: Any) -> dict[str, float]:
    """Relative differences from a statsmodels GLMResults; asserts each ≤ TOL."""
    ci = ref.conf_int(alpha=res.alpha)
    diffs = {
        "coef": rel(res.coef, ref.params),
        "se": rel(res.se, ref.bse),
        "z": rel(res.z, ref.tvalues),
        "p": rel(res.p, ref.pvalues),
        "ci": max(rel(res.lower, ci[:, 0]), rel(res.upper, ci[:, 1])),
        "loglik": rel(res.loglik, ref.llf),
        "deviance": rel(res.deviance, ref.deviance),
        "scale": rel(res.scale, ref.scale),
    }
    assert max(diffs.values()) <= TOL, diffs
    assert res.iterations == ref.fit_history["iteration"]
    assert res.converged
    return diffs


def table(name: str, columns: Mapping[str, Any], n_test: int = 0) -> QueryTable:
    n = len(next(iter(columns.values())))
    kinds = {
        k: "categorical" if np.asarray(v).dtype == object else "numeric" for k, v in columns.items()
    }
    return QueryTable(
        name=name,
        columns=dict(columns),
        kinds=kinds,
        ids=np.arange(n),
        is_test=np.arange(n) >= n - n_test,
    )


TRUTH = {
    "binomial": np.array([-0.5, 0.8, -0.4, 0.6, -0.7]),
    "poisson": np.array([0.3, 0.25, -0.3, 0.4, -0.2]),
    "gaussian": np.array([1.0, 2.0, -1.5, 0.5, -0.8]),
}


def generated(
    family: str, sizes: tuple[int, ...] = (900, 700, 1200, 600), seed: int = 7
) -> dict[str, QueryTable]:
    """Sites drawn from one model with known coefficients (intercept, x1, x2, grp=b, grp=c),
    Poisson with a known exposure."""
    rng = np.random.default_rng(seed)
    beta = TRUTH[family]
    out = {}
    for i, n in enumerate(sizes):
        x1 = rng.normal(0.2 * i, 1.0, n)
        x2 = rng.uniform(-1, 2, n)
        grp = rng.choice(LEVELS, n, p=[0.5, 0.3, 0.2])
        X = np.column_stack([np.ones(n), x1, x2, grp == "b", grp == "c"]).astype(float)
        eta = X @ beta
        cols: dict[str, Any] = {"x1": x1, "x2": x2, "grp": grp.astype(object)}
        if family == "binomial":
            cols["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta))).astype(float)
        elif family == "poisson":
            exposure = rng.uniform(0.5, 3.0, n)
            cols["exposure"] = exposure
            cols["y"] = rng.poisson(exposure * np.exp(eta)).astype(float)
        else:
            cols["y"] = eta + rng.normal(0, 1.3, n)
        out[f"site-{i}"] = table(f"site-{i}", cols)
    return out


def pooled(tables: Mapping[str, QueryTable], names: list[str]) -> dict[str, Any]:
    return {k: np.concatenate([np.asarray(t.column(k)) for t in tables.values()]) for k in names}


def glm_query(family: str, **extra: Any) -> Query:
    options: dict[str, Any] = {
        "outcome": "y",
        "covariates": ["x1", "x2", "grp"],
        "levels": {"grp": LEVELS},
        "family": family,
    }
    if family == "poisson":
        options["exposure"] = "exposure"
    options.update(extra)
    return Query(kind="glm", options=options)


def statsmodels_fit(tables: Mapping[str, QueryTable], family: str) -> Any:
    cols = ["y", "x1", "x2", "grp"] + (["exposure"] if family == "poisson" else [])
    data = pooled(tables, cols)
    X = np.column_stack(
        [np.ones(len(data["y"])), data["x1"], data["x2"], data["grp"] == "b", data["grp"] == "c"]
    ).astype(float)
    fam = {
        "binomial": sm.families.Binomial(),
        "poisson": sm.families.Poisson(),
        "gaussian": sm.families.Gaussian(),
    }[family]
    kwargs = {"exposure": data["exposure"]} if family == "poisson" else {}
    return sm.GLM(data["y"], X, family=fam, **kwargs).fit()


# -- generated data with a known truth -------------------------------------------------------
@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_generated_data_equals_pooled_statsmodels_and_finds_the_truth(family: str) -> None:
    tables = generated(family)
    res, passes = fit(tables, glm_query(family))
    ref = statsmodels_fit(tables, family)
    compare(res, ref)
    assert res.names == ("(intercept)", "x1", "x2", "grp=b", "grp=c")
    assert res.records == 3400
    assert res.sites == 4
    assert res.model == family
    # One pass at the start (and, for Poisson, one for the pooled mean) plus one per solve.
    assert passes == res.iterations + 1 + (family == "poisson")
    # The truth lies within four standard errors of every estimate.
    assert np.all(np.abs(res.coef - TRUTH[family]) < 4 * res.se), (res.coef, TRUTH[family])
    if family == "gaussian":
        assert res.scale == pytest.approx(1.3**2, rel=0.1)
    else:
        assert res.scale == 1.0
    if family == "binomial":
        assert res.events == int(pooled(tables, ["y"])["y"].sum())


@pytest.mark.parametrize("family", ["binomial", "poisson", "gaussian"])
def test_secure_sum_gives_the_plain_result(family: str) -> None:
    """Summing the sites' secure vectors (what SecAgg+ unmasks) gives the same fit."""
    tables = generated(family, seed=11)
    plain, _ = fit(tables, glm_query(family))
    secure, _ = fit(tables, glm_query(family), secure=True)
    np.testing.assert_allclose(secure.coef, plain.coef, rtol=1e-12)
    np.testing.assert_allclose(secure.se, plain.se, rtol=1e-12)
    assert secure.iterations == plain.iterations
    assert secure.records == plain.records
    compare(secure, statsmodels_fit(tables, family))


def test_offset_column_equals_exposure() -> None:
    tables = generated("poisson", seed=3)
    with_offset = {
        name: table(name, {**dict(t.columns), "log_exposure": np.log(t.column("exposure"))})
        for name, t in tables.items()
    }
    a, _ = fit(tables, glm_query("poisson"))
    query = glm_query("poisson", offset="log_exposure")
    options = dict(query.options)
    del options["exposure"]
    query = Query(kind="glm", options=options)
    b, _ = fit(with_offset, query)
    np.testing.assert_allclose(b.coef, a.coef, rtol=1e-12)


def test_without_intercept_and_alpha() -> None:
    tables = generated("gaussian", seed=5)
    res, _ = fit(
        tables,
        glm_query("gaussian", intercept=False, covariates=["x1", "x2"], levels={}, alpha=0.1),
    )
    data = pooled(tables, ["y", "x1", "x2"])
    ref = sm.GLM(data["y"], np.column_stack([data["x1"], data["x2"]])).fit()
    compare(res, ref)
    assert res.names == ("x1", "x2")


def test_result_round_trips_through_json() -> None:
    res, _ = fit(generated("binomial"), glm_query("binomial"))
    back = result_from_json(res.to_json())
    assert isinstance(back, RegressionResult)
    assert back.to_dict() == res.to_dict()
    headers, rows = res.table()
    assert "exp(coef) [odds ratio]" in headers
    assert len(rows) == 5


# -- the bundled Fed-TCGA-BRCA ---------------------------------------------------------------
TCGA_COVS = ["age_at_index", "treatment_or_therapy_yes", "morphology_8520/3"]
SMALL = ("center-4", "center-5")


def tcga_tables() -> dict[str, QueryTable]:
    return {name: QueryTable.from_site_data(site) for name, site in load_tcga_brca().sites.items()}


def tcga_pooled(
    tables: Mapping[str, QueryTable], cols: list[str], keep: Any = None
) -> dict[str, Any]:
    out: dict[str, list[Any]] = {c: [] for c in cols}
    for t in tables.values():
        rows = ~t.is_test
        if keep is not None:
            rows &= keep(t)
        for c in cols:
            out[c].append(np.asarray(t.column(c))[rows])
    return {c: np.concatenate(v) for c, v in out.items()}


def test_tcga_logistic_regression_of_event_equals_pooled_statsmodels() -> None:
    """Under the default rules the two sites with fewer than 10 events refuse; the fit on
    the other four (age, treated, lobular carcinoma) equals statsmodels on their pooled
    training rows. A rare one-hot covariate (prior malignancy, under 10 at two sites) is
    refused there."""
    tables = tcga_tables()
    options: dict[str, Any] = {"outcome": "event", "covariates": TCGA_COVS, "family": "binomial"}
    query = Query(kind="glm", options=options, split="train")
    req = start(query).request()
    for small in SMALL:
        with pytest.raises(PolicyViolation, match="events or non-events"):
            answer(req, tables[small])
    rare = Query(
        kind="glm",
        options={**options, "covariates": [*TCGA_COVS, "prior_malignancy_yes"]},
        split="train",
    )
    for site in ("center-2", "center-3"):
        with pytest.raises(PolicyViolation, match="'prior_malignancy_yes' is binary"):
            answer(start(rare).request(), tables[site])
    big = {k: v for k, v in tables.items() if k not in SMALL}
    res, _ = fit(big, query)
    data = tcga_pooled(big, ["event", *TCGA_COVS])
    X = sm.add_constant(np.column_stack([data[c] for c in TCGA_COVS]))
    ref = sm.GLM(data["event"], X, family=sm.families.Binomial()).fit()
    compare(res, ref)
    assert res.records == len(data["event"])
    assert res.sites == 4


def test_tcga_poisson_of_event_with_log_time_offset_equals_pooled_statsmodels() -> None:
    """Event rate per day: Poisson with exposure ``time`` (rows with a positive follow-up
    time), secure, equal to statsmodels with ``exposure``. The 0/1 outcome is binary, so
    the sites with fewer than 10 events refuse here too."""
    tables = tcga_tables()
    covs = ["age_at_index", "treatment_or_therapy_yes"]
    query = Query(
        kind="glm",
        options={"outcome": "event", "covariates": covs, "family": "poisson", "exposure": "time"},
        where=(Filter("time", ">", 0),),
        split="train",
    )
    for small in SMALL:
        with pytest.raises(PolicyViolation, match="'event' is binary"):
            answer(start(query, secure=True).request(), tables[small])
    tables = {k: v for k, v in tables.items() if k not in SMALL}
    res, _ = fit(tables, query, secure=True)
    data = tcga_pooled(tables, ["event", "time", *covs], keep=lambda t: t.column("time") > 0)
    X = sm.add_constant(np.column_stack([data[c] for c in covs]))
    ref = sm.GLM(data["event"], X, family=sm.families.Poisson(), exposure=data["time"]).fit()
    compare(res, ref)
    assert res.sites == 4
    assert res.ratio == "rate ratio"


@pytest.mark.slow  # writes four OMOP CDM files: 2 s idle, 10 s on a loaded machine
def test_omop_logistic_regression_with_a_categorical_covariate_equals_pooled_statsmodels(
    tmp_path: Any,
) -> None:
    """The Eunomia GI-bleed study at four sites (OMOP CDMs, extracted by biofed): bleeding
    on age, sex (a categorical covariate, female the reference) and three conditions."""
    sites = write_eunomia_sites(tmp_path, 4, seed=0)
    spec = gi_bleed_study()
    tables = {s: QueryTable.from_extracted(extract(spec, str(p), name=s)) for s, p in sites.items()}
    covs = ["age", "sex", "peptic_ulcer", "ulcerative_colitis", "acetaminophen"]
    options: dict[str, Any] = {
        "outcome": "label",
        "covariates": covs,
        "levels": {"sex": ["female", "male"]},
        "family": "binomial",
    }
    res, _ = fit(tables, Query(kind="glm", options=options))
    data = pooled(tables, ["label", *covs])
    x = np.column_stack([data[c] if c != "sex" else data[c] == "male" for c in covs])
    ref = sm.GLM(
        data["label"], sm.add_constant(x.astype(float)), family=sm.families.Binomial()
    ).fit()
    compare(res, ref)
    assert res.names[2] == "sex=male"
    # A level no site holds is no disclosure, but it leaves the design singular.
    options["levels"] = {"sex": ["female", "male", "other"]}
    with pytest.raises(DataError, match=r"singular.*sex=other"):
        fit(tables, Query(kind="glm", options=options))


# -- guards ----------------------------------------------------------------------------------
def test_too_few_sites_are_refused_by_the_coordinator() -> None:
    tables = generated("gaussian")
    two = {k: tables[k] for k in ("site-0", "site-1")}
    with pytest.raises(PolicyViolation, match="at least 3 sites"):
        fit(two, glm_query("gaussian"))
    with pytest.raises(PolicyViolation, match="at least 3 sites"):
        fit(two, glm_query("gaussian"), secure=True)
    fit(two, glm_query("gaussian"), rules=DisclosureRules(min_sites=2))


def test_a_site_with_too_few_records_per_parameter_refuses() -> None:
    tables = generated("gaussian", sizes=(900, 700, 49))
    with pytest.raises(PolicyViolation, match="at least 10 complete records per parameter"):
        fit(tables, glm_query("gaussian"))
    # Its own stricter rule wins over a looser request.
    tables = generated("gaussian", sizes=(900, 700, 120))
    with pytest.raises(PolicyViolation, match="at least 30 complete records"):
        fit(tables, glm_query("gaussian"), site_rules=DisclosureRules(records_per_parameter=30))


def test_a_rare_level_is_refused_and_an_absent_one_is_not() -> None:
    tables = generated("gaussian", sizes=(900, 700, 600))
    t = tables["site-2"]
    grp = np.asarray(t.column("grp")).copy()
    c_rows = np.flatnonzero(grp == "c")
    grp[c_rows[3:]] = "a"  # three records keep level c
    tables["site-2"] = table("site-2", {**dict(t.columns), "grp": grp})
    with pytest.raises(PolicyViolation, match="level of glm covariate 'grp'"):
        fit(tables, glm_query("gaussian"))
    grp[c_rows[:3]] = "a"  # none does
    tables["site-2"] = table("site-2", {**dict(t.columns), "grp": grp})
    res, _ = fit(tables, glm_query("gaussian"))
    assert res.records == 2200


def test_a_rare_binary_outcome_is_refused() -> None:
    tables = generated("binomial", sizes=(900, 700, 600))
    t = tables["site-2"]
    y = np.zeros(len(t))
    y[:9] = 1.0  # nine events
    tables["site-2"] = table("site-2", {**dict(t.columns), "y": y})
    with pytest.raises(PolicyViolation, match="fewer than 10 events or non-events"):
        fit(tables, glm_query("binomial"))
    tables["site-2"] = table("site-2", {**dict(t.columns), "y": 1 - y})  # nine non-events
    with pytest.raises(PolicyViolation, match="fewer than 10 events or non-events"):
        fit(tables, glm_query("binomial"))


def test_a_non_binary_outcome_and_bad_exposure_are_data_errors() -> None:
    tables = generated("binomial", sizes=(900, 700, 600))
    t = tables["site-0"]
    tables["site-0"] = table("site-0", {**dict(t.columns), "y": np.full(len(t), 2.0)})
    with pytest.raises(DataError, match="must be 0 or 1"):
        fit(tables, glm_query("binomial"))
    tables = generated("poisson", sizes=(900, 700, 600))
    t = tables["site-1"]
    tables["site-1"] = table("site-1", {**dict(t.columns), "exposure": np.zeros(len(t))})
    with pytest.raises(DataError, match="exposure 'exposure' must be > 0"):
        fit(tables, glm_query("poisson"))


def test_a_singular_design_names_the_collinear_covariates() -> None:
    tables = {
        name: table(name, {**dict(t.columns), "x3": 2 * np.asarray(t.column("x1"))})
        for name, t in generated("gaussian").items()
    }
    with pytest.raises(DataError, match=r"singular.*x1"):
        fit(tables, glm_query("gaussian", covariates=["x1", "x2", "x3"], levels={}))


def test_the_kind_is_registered_for_secure_runs_and_not_for_dp() -> None:
    assert GLM_FAMILIES == ("binomial", "poisson", "gaussian")
    for family in GLM_FAMILIES:
        analysis = start(glm_query(family), secure=True)
        assert isinstance(analysis, GLMAnalysis)
        assert analysis.request().secure


def test_dp_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigurationError, match="no DP answers"):
        Query(
            kind="glm",
            options={"outcome": "y", "covariates": ["x1"], "family": "gaussian"},
            dp=DPOptions(mechanism="laplace", epsilon=1.0),
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"outcome": "y", "family": "probit"}, "family must be one of"),
        ({"outcome": "y", "family": "gaussian", "covariates": ["x", "x"]}, "must not repeat"),
        ({"outcome": "y", "family": "gaussian", "covariates": ["y"]}, "must differ"),
        ({"outcome": "y", "family": "gaussian", "levels": {"g": ["a", "b"]}}, "not a covariate"),
        (
            {"outcome": "y", "family": "gaussian", "covariates": ["g"], "levels": {"g": ["a"]}},
            "2 or more",
        ),
        ({"outcome": "y", "family": "gaussian", "exposure": "t"}, "family poisson"),
        ({"outcome": "y", "family": "gaussian", "max_iter": 1000}, "max_iter"),
        ({"outcome": "y", "family": "gaussian", "tol": 0}, "tol"),
        ({"outcome": "y", "family": "gaussian", "intercept": False}, "an intercept or"),
        ({"outcome": "y", "family": "gaussian", "link": "log"}, "unknown option"),
    ],
)
def test_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Query(kind="glm", options=options)


# -- hostile answers and requests ------------------------------------------------------------
def _first_answer(family: str = "gaussian") -> tuple[Request, Answer]:
    tables = generated(family)
    req = start(glm_query(family)).request()
    return req, answer(req, tables["site-0"])


def test_check_answer_refuses_non_finite_and_misshapen_replies() -> None:
    req, out = _first_answer()
    arrays = {k: np.array(v) for k, v in out.arrays.items()}
    bad = dict(arrays, xwz=np.full(5, np.nan))
    with pytest.raises(ProtocolError, match="NaN or infinite"):
        check_answer(req, bad, out.records)
    with pytest.raises(ProtocolError, match="shape"):
        check_answer(req, dict(arrays, xwx=np.zeros((4, 4))), out.records)
    with pytest.raises(ProtocolError, match="layout"):
        check_answer(req, {"xwx": arrays["xwx"], "xwz": arrays["xwz"]}, out.records)
    skew = arrays["xwx"].copy()
    skew[0, 1] += 1.0
    with pytest.raises(ProtocolError, match="not symmetric"):
        check_answer(req, dict(arrays, xwx=skew), out.records)
    neg = arrays["stats"].copy()
    neg[0] = -1.0
    with pytest.raises(ProtocolError, match="negative"):
        check_answer(req, dict(arrays, stats=neg), out.records)


def test_check_answer_refuses_absurd_record_counts() -> None:
    req, out = _first_answer()
    arrays = dict(out.arrays)
    check_answer(req, arrays, out.records)
    for records in (out.records + 1, 10**12, 20):
        with pytest.raises(ProtocolError, match="record"):
            check_answer(req, arrays, records)
    req_b, out_b = _first_answer("binomial")
    with pytest.raises(ProtocolError, match="record count does not match"):
        check_answer(req_b, dict(out_b.arrays), out_b.records // 10)


def test_a_site_whose_records_change_between_passes_is_refused() -> None:
    tables = generated("binomial", sizes=(900, 700, 600))
    analysis = start(glm_query("binomial"))
    req = analysis.request()
    analysis = analysis.add({n: answer(req, t) for n, t in tables.items()})
    req = analysis.request()
    replies = {n: answer(req, t) for n, t in tables.items()}
    replies["site-1"] = Answer(
        arrays=replies["site-1"].arrays, records=replies["site-1"].records + 5
    )
    with pytest.raises(ProtocolError, match="site 'site-1' answered on"):
        analysis.add(replies)


def test_secure_totals_with_a_changed_site_set_or_record_count_are_refused() -> None:
    tables = generated("gaussian", sizes=(900, 700, 600, 500))
    analysis = start(glm_query("gaussian"), secure=True)
    req = analysis.request()
    vec = np.sum([secure_vector(req, answer(req, t)) for t in tables.values()], axis=0)
    analysis = analysis.add_total(total_from_vector(req, vec), sorted(tables))
    req = analysis.request()
    vec = np.sum([secure_vector(req, answer(req, t)) for t in tables.values()], axis=0)
    with pytest.raises(ProtocolError, match="sites answering the glm changed"):
        analysis.add_total(total_from_vector(req, vec), ["site-0", "site-1", "site-9", "site-3"])
    vec[-1] += 3
    with pytest.raises(ProtocolError, match="records changed"):
        analysis.add_total(total_from_vector(req, vec), sorted(tables))


def test_a_site_refuses_a_malformed_coordinator_state() -> None:
    tables = generated("gaussian")
    query = glm_query("gaussian")
    bad = Request(
        query=query,
        pass_no=2,
        step="irls",
        state={"beta": [0.0, 1.0]},
        layout={"xwx": (5, 5), "xwz": (5,), "stats": (4,)},
    )
    with pytest.raises(ProtocolError, match="must list 5 numbers"):
        answer(bad, tables["site-0"])
    odd = Request(
        query=query, pass_no=2, step="probe", layout={"xwx": (5, 5), "xwz": (5,), "stats": (4,)}
    )
    with pytest.raises(ProtocolError, match="no step"):
        answer(odd, tables["site-0"])
    looser = Request(
        query=query,
        pass_no=1,
        step="start",
        rules=DisclosureRules(records_per_parameter=1),
        secure=True,
        layout={"xwx": (5, 5), "xwz": (5,), "stats": (4,)},
    )
    with pytest.raises(PolicyViolation, match="looser"):
        answer(looser, tables["site-0"])


GLM_LAYOUT = {"xwx": (5, 5), "xwz": (5,), "stats": (4,)}


def test_a_site_refuses_a_step_whose_weights_single_out_a_few_records() -> None:
    """A coordinator's β that puts the logistic weights on the few records near x1 = 0.5
    (η = 1000·(x1 − 0.5)) would make X'WX their covariates: refused. The honest step at
    the same pass is answered."""
    tables = generated("binomial")
    query = glm_query("binomial")
    probe = Request(
        query=query,
        pass_no=2,
        step="irls",
        state={"beta": [-500.0, 1000.0, 0.0, 0.0, 0.0]},
        layout=GLM_LAYOUT,
    )
    with pytest.raises(PolicyViolation, match="fewer than 10 records in effect"):
        answer(probe, tables["site-0"])
    honest = Request(
        query=query, pass_no=2, step="irls", state={"beta": [-0.5, 0.8, 0, 0, 0]}, layout=GLM_LAYOUT
    )
    assert answer(honest, tables["site-0"]).records == 900


def test_a_site_refuses_passes_beyond_max_iter() -> None:
    tables = generated("gaussian")
    query = glm_query("gaussian", max_iter=5)
    state = {"beta": [0.0] * 5}
    answer(
        Request(query=query, pass_no=7, step="irls", state=state, layout=GLM_LAYOUT),
        tables["site-0"],
    )
    late = Request(query=query, pass_no=8, step="irls", state=state, layout=GLM_LAYOUT)
    with pytest.raises(PolicyViolation, match="past the query's max_iter"):
        answer(late, tables["site-0"])


def test_max_iter_stops_an_unconverged_fit() -> None:
    tables = generated("poisson")
    res, passes = fit(tables, glm_query("poisson", max_iter=2))
    assert res.iterations == 2
    assert not res.converged
    assert passes == 4
    data = pooled(tables, ["y", "x1", "x2", "grp", "exposure"])
    x = np.column_stack([data["x1"], data["x2"], data["grp"] == "b", data["grp"] == "c"])
    ref = sm.GLM(
        data["y"],
        sm.add_constant(x.astype(float)),
        family=sm.families.Poisson(),
        exposure=data["exposure"],
    ).fit(maxiter=2)
    np.testing.assert_allclose(res.coef, ref.params, rtol=1e-10)
    np.testing.assert_allclose(res.se, ref.bse, rtol=1e-10)


def test_check_answer_refuses_a_mean_pass_below_the_records_rule() -> None:
    tables = generated("poisson")
    req = start(glm_query("poisson")).request()
    assert req.step == "mean"
    out = answer(req, tables["site-0"])
    check_answer(req, dict(out.arrays), out.records)
    with pytest.raises(ProtocolError, match="fewer records per parameter"):
        check_answer(req, dict(out.arrays), 49)
    with pytest.raises(ProtocolError, match="negative outcome sum"):
        check_answer(req, {"sum_y": np.array([-1.0])}, out.records)
