"""Federated Cox regression equals the pooled fit: lifelines' CoxPHFitter (Efron) and
statsmodels' PHReg (Breslow) on the pooled rows, on Fed-TCGA-BRCA and on generated data
with a known truth; plain and secure (the coordinator sees only sums); and its guards."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from statsmodels.duration.hazard_regression import PHReg

import biofed.analytics as ba
from biofed.analytics._cox import MAX_TIMES, grid_points
from biofed.core import ConfigurationError, DataError, PolicyViolation, ProtocolError
from biofed.datasets import load_tcga_brca

TIGHT = {"precision": 1e-12, "r_precision": 1e-15}  # lifelines run to its optimum
# the default rules refuse TCGA's 39-covariate fit by design (smallest site: 40 rows for 39
# columns; one-hot columns with 1-9 ones at every site): relaxed for it
LOOSE = ba.DisclosureRules(min_cell=1, records_per_parameter=1)


def fit(
    query: ba.Query,
    tables: Mapping[str, ba.QueryTable],
    rules: ba.DisclosureRules,
    *,
    secure: bool = False,
    seen: list[Any] | None = None,
    quantum: float = 0.0,
) -> ba.RegressionResult:
    """The coordinator's loop, with each site answering through the JSON request."""
    analysis = ba.start(query, rules, secure=secure)
    while not analysis.done:
        request = ba.Request.from_json(analysis.request().to_json())
        replies = {site: ba.answer(request, t, rules) for site, t in tables.items()}
        checked = {
            site: ba.check_answer(request, dict(a.arrays), a.records) for site, a in replies.items()
        }
        if secure:
            vectors = [ba.secure_vector(request, a) for a in checked.values()]
            if quantum:  # SecAgg+ rounds each site's values to its quantisation step
                vectors = [np.round(v / quantum) * quantum for v in vectors]
            total = np.sum(vectors, axis=0)
            if seen is not None:
                seen.append(total)
            analysis = analysis.add_total(ba.total_from_vector(request, total), sorted(checked))
        else:
            if seen is not None:
                seen.append(checked)
            analysis = analysis.add(checked)
    result = ba.result_from_json(analysis.result().to_json())
    assert isinstance(result, ba.RegressionResult)
    return result


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


# -- Fed-TCGA-BRCA ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tcga() -> tuple[dict[str, ba.QueryTable], pd.DataFrame, list[str]]:
    ds = load_tcga_brca()
    tables = {name: ba.QueryTable.from_site_data(s) for name, s in ds.sites.items()}
    pooled = ds.pooled("train")
    names = list(pooled.feature_names)
    df = pd.DataFrame(pooled.features, columns=names)
    df["time"] = pooled.targets["time"]
    df["event"] = pooled.targets["event"]
    df["site"] = np.concatenate([np.full(len(s.train), i) for i, s in enumerate(ds.sites.values())])
    return tables, df, names


def cox_query(names: Sequence[str], **options: Any) -> ba.Query:
    return ba.Query(
        kind="cox",
        options={"time": "time", "event": "event", "covariates": list(names), **options},
        split="train",
    )


def test_tcga_equals_lifelines_pooled(tcga: Any) -> None:
    tables, df, names = tcga
    seen: list[Any] = []
    result = fit(cox_query(names, penalizer=0.1), tables, LOOSE, seen=seen)
    ref = CoxPHFitter(penalizer=0.1).fit(
        df.drop(columns="site"), "time", "event", fit_options=TIGHT
    )
    assert result.converged
    assert result.iterations <= 10
    assert rel(result.coef, ref.params_.values) < 1e-6
    assert rel(result.se, ref.standard_errors_.values) < 1e-6
    # lifelines' log-likelihood includes its ridge penalty; ours does not
    penalty = 0.5 * 0.1 * len(df) * float(np.sum((ref.params_.values * ref._norm_std.values) ** 2))
    assert result.loglik == pytest.approx(ref.log_likelihood_ + penalty, rel=1e-9)
    assert (result.records, result.events, result.sites) == (866, 119, 6)
    assert result.model == "efron"
    assert result.names == tuple(names)
    # pass 1 collected each site's event times (plain mode), then one sum per Newton pass
    assert len(seen) == 1 + result.iterations
    assert set(next(iter(seen[0].values())).arrays) == {"times", "sum_x", "sum_x2", "events"}
    # lifelines' default stops at a Newton decrement < 1e-7: within its own tolerance of us
    default = CoxPHFitter(penalizer=0.1).fit(df.drop(columns="site"), "time", "event")
    assert np.allclose(result.coef, default.params_.values, rtol=1e-3, atol=1e-5)
    headers, rows = result.table()
    assert "exp(coef) [hazard ratio]" in headers
    assert len(rows) == len(names)


@pytest.mark.slow
def test_tcga_secure_grid_and_strata_equal_lifelines(tcga: Any) -> None:
    tables, df, names = tcga
    pooled = df.drop(columns="site")
    # an agreed grid of 30 days: times count at the first grid point at or after them
    seen: list[Any] = []
    q = cox_query(names, penalizer=0.1, grid={"step": 30, "stop": 9000})
    result = fit(q, tables, LOOSE, secure=True, seen=seen)
    binned = pooled.assign(time=np.ceil(pooled["time"] / 30) * 30)
    ref = CoxPHFitter(penalizer=0.1).fit(binned, "time", "event", fit_options=TIGHT)
    assert result.converged
    assert result.iterations <= 10
    assert rel(result.coef, ref.params_.values) < 1e-6
    assert rel(result.se, ref.standard_errors_.values) < 1e-6
    # the coordinator only ever held one summed vector per pass
    assert all(isinstance(v, np.ndarray) and v.ndim == 1 for v in seen)
    assert len(seen) == 1 + result.iterations
    # sums rounded to 1e-6 (a secure aggregation's quantisation): Newton stops at the
    # rounding noise's floor, coefficients within 1e-5 (here 7e-7) of the pooled fit
    rounded = fit(q, tables, LOOSE, secure=True, quantum=1e-6)
    assert rounded.converged
    assert rounded.iterations <= 10
    assert rel(rounded.coef, ref.params_.values) < 1e-5
    assert rel(rounded.se, ref.standard_errors_.values) < 1e-6
    # stratified by site: each site's own partial likelihood, no times leave it
    q = cox_query(names, penalizer=0.1, strata="site")
    result = fit(q, tables, LOOSE, secure=True)
    ref = CoxPHFitter(penalizer=0.1, strata=["site"]).fit(df, "time", "event", fit_options=TIGHT)
    assert result.model == "efron+strata"
    assert result.iterations <= 10
    assert rel(result.coef, ref.params_.values) < 1e-6
    assert rel(result.se, ref.standard_errors_.values) < 1e-6


# -- generated data with a known truth ---------------------------------------------------------
TRUTH = np.array([0.7, -0.5, 0.4, 0.9])  # age/10, marker, stage=II, stage=III


@pytest.fixture(scope="module")
def generated() -> tuple[dict[str, ba.QueryTable], pd.DataFrame]:
    rng = np.random.default_rng(14)
    tables: dict[str, ba.QueryTable] = {}
    frames = []
    offset = 0
    for s, n in enumerate((500, 400, 350, 250)):
        age = rng.normal(6.0 + 0.3 * s, 1.0, n)  # sites differ in case mix
        marker = rng.binomial(1, 0.3 + 0.1 * s, n).astype(float)
        stage = rng.choice(["I", "II", "III"], n, p=[0.4, 0.35, 0.25])
        x = np.column_stack([age, marker, stage == "II", stage == "III"]).astype(float)
        hazard = 0.02 * np.exp((x - [6.0, 0, 0, 0]) @ TRUTH)
        t_event = rng.exponential(1 / hazard)
        t_censor = rng.exponential(60.0, n)
        time = np.ceil(np.minimum(t_event, t_censor))  # whole days: many ties
        event = (t_event <= t_censor).astype(float)
        columns = {"age": age, "marker": marker, "stage": stage.astype(object)}
        tables[f"site{s}"] = ba.QueryTable(
            name=f"gen{s}",
            columns={**columns, "time": time, "event": event},
            kinds={"age": "numeric", "marker": "numeric", "stage": "categorical"}
            | {"time": "numeric", "event": "numeric"},
            ids=np.arange(offset, offset + n),
            is_test=np.zeros(n, dtype=bool),
        )
        offset += n
        frames.append(
            pd.DataFrame(x, columns=["age", "marker", "stage=II", "stage=III"]).assign(
                time=time, event=event, site=s
            )
        )
    return tables, pd.concat(frames, ignore_index=True)


def gen_query(**options: Any) -> ba.Query:
    base = {
        "time": "time",
        "event": "event",
        "covariates": ["age", "marker", "stage"],
        "levels": {"stage": ["I", "II", "III"]},
    }
    return ba.Query(kind="cox", options=base | options)


def test_generated_efron_equals_lifelines_near_truth(generated: Any) -> None:
    tables, df = generated
    assert df["time"].nunique() < df["event"].sum()  # ties
    result = fit(gen_query(), tables, ba.DisclosureRules())
    ref = CoxPHFitter().fit(df.drop(columns="site"), "time", "event", fit_options=TIGHT)
    assert result.names == ("age", "marker", "stage=II", "stage=III")
    assert rel(result.coef, ref.params_.values) < 1e-6
    assert rel(result.se, ref.standard_errors_.values) < 1e-6
    assert result.loglik == pytest.approx(ref.log_likelihood_, rel=1e-9)
    assert np.all(np.abs(result.coef - TRUTH) < 4 * result.se)
    assert result.iterations <= 10
    assert result.penalizer == 0.0
    # the ties matter: Breslow's estimate is measurably different
    breslow = fit(gen_query(ties="breslow"), tables, ba.DisclosureRules())
    assert rel(breslow.coef, result.coef) > 1e-3
    # z, p and the interval are the Wald ones lifelines reports
    assert np.allclose(result.p, ref.summary["p"].values, rtol=1e-5, atol=1e-300)
    assert np.allclose(result.lower, ref.confidence_intervals_.iloc[:, 0].values, rtol=1e-6)


def test_generated_breslow_equals_statsmodels(generated: Any) -> None:
    tables, df = generated
    result = fit(gen_query(ties="breslow"), tables, ba.DisclosureRules())
    x = df[["age", "marker", "stage=II", "stage=III"]].to_numpy()
    ref = PHReg(df["time"].to_numpy(), x, status=df["event"].to_numpy(), ties="breslow").fit()
    assert result.model == "breslow"
    assert rel(result.coef, ref.params) < 1e-6
    assert rel(result.se, ref.bse) < 1e-6
    assert result.loglik == pytest.approx(ref.llf, rel=1e-9)
    assert np.all(np.abs(result.coef - TRUTH) < 4 * result.se)
    # stratified by site, secure: statsmodels' strata
    query = gen_query(ties="breslow", strata="site")
    result = fit(query, tables, ba.DisclosureRules(), secure=True)
    ref = PHReg(
        df["time"].to_numpy(),
        x,
        status=df["event"].to_numpy(),
        strata=df["site"].to_numpy(),
        ties="breslow",
    ).fit()
    assert result.model == "breslow+strata"
    assert rel(result.coef, ref.params) < 1e-6
    assert rel(result.se, ref.bse) < 1e-6


# -- guards ------------------------------------------------------------------------------------
def test_guards_sites_records_levels(generated: Any) -> None:
    tables, _ = generated
    two = {k: tables[k] for k in ("site0", "site1")}
    with pytest.raises(PolicyViolation, match="min_sites"):
        fit(gen_query(), two, ba.DisclosureRules())
    # a site with fewer than records_per_parameter × p records refuses (350 < 100 × 4)
    with pytest.raises(PolicyViolation, match="records_per_parameter"):
        fit(gen_query(), tables, ba.DisclosureRules(records_per_parameter=100))
    # a categorical level held by 1 … min_cell−1 records at a site is refused
    site = tables["site3"]
    stage = np.array(site.columns["stage"], dtype=object)
    stage[np.flatnonzero(stage == "III")[5:]] = "II"  # five stage-III patients left
    few = ba.QueryTable(
        name=site.name,
        columns=dict(site.columns) | {"stage": stage},
        kinds=site.kinds,
        ids=site.ids,
        is_test=site.is_test,
    )
    with pytest.raises(PolicyViolation, match="min_cell"):
        fit(gen_query(), tables | {"site3": few}, ba.DisclosureRules())


def test_secure_needs_grid_or_strata_and_dp_is_refused(tcga: Any) -> None:
    _, _, names = tcga
    with pytest.raises(ConfigurationError, match="grid"):
        ba.start(cox_query(names, penalizer=0.1), LOOSE, secure=True)
    with pytest.raises(ConfigurationError, match="DP"):
        ba.Query(
            kind="cox",
            options={"time": "time", "event": "event", "covariates": names},
            dp=ba.DPOptions(mechanism="laplace", epsilon=1.0),
        )
    # the answer size is bounded: 60 columns (1,830 products) × 5,001 daily grid points
    with pytest.raises(ConfigurationError, match="coarser grid"):
        cox_query([f"x{i}" for i in range(60)], grid={"step": 1, "stop": 5000})
    cox_query(names, grid={"step": 1, "stop": 5000})  # 39 columns fit
    with pytest.raises(ConfigurationError, match="at most"):
        grid_points({"step": 1, "stop": MAX_TIMES + 5})


def test_bad_options_are_refused() -> None:
    base = {"time": "time", "event": "event", "covariates": ["x"]}
    for bad in (
        {"ties": "exact"},
        {"penalizer": -1},
        {"strata": "age"},
        {"grid": [3, 2, 1]},
        {"covariates": []},
        {"covariates": ["x", "x"]},
        {"levels": {"y": ["a", "b"]}},
        {"max_iter": 0},
        {"colour": 1},
    ):
        with pytest.raises(ConfigurationError):
            ba.Query(kind="cox", options=base | bad)


def test_tcga_fit_is_refused_under_the_default_rules_by_design(tcga: Any) -> None:
    tables, _, names = tcga
    with pytest.raises(PolicyViolation, match="records_per_parameter"):
        fit(cox_query(names, penalizer=0.1), tables, ba.DisclosureRules())
    # enough records per parameter, still a one-hot column with a value held by 1..9
    rules = ba.DisclosureRules(records_per_parameter=1)
    with pytest.raises(PolicyViolation, match="binary"):
        fit(cox_query(names, penalizer=0.1), tables, rules)


def test_collinear_without_penalty_is_refused_clearly(tcga: Any) -> None:
    tables, _, names = tcga
    with pytest.raises(DataError, match="penalizer"):
        fit(cox_query(names), tables, LOOSE)


def test_hostile_answers_and_requests(generated: Any) -> None:
    tables, _ = generated
    rules = ba.DisclosureRules()
    analysis = ba.start(gen_query(), rules)
    request = analysis.request()
    assert request.step == "times"
    assert request.layout is None
    good = ba.answer(request, tables["site0"], rules)
    arrays = dict(good.arrays)
    with pytest.raises(ProtocolError):  # unsorted times
        ba.check_answer(request, arrays | {"times": arrays["times"][::-1]}, good.records)
    with pytest.raises(ProtocolError):  # more event times than events
        ba.check_answer(request, arrays | {"events": np.array([1.0])}, good.records)
    with pytest.raises(ProtocolError):  # an extra array
        ba.check_answer(request, arrays | {"x": np.zeros(1)}, good.records)
    answers = {k: ba.answer(request, t, rules) for k, t in tables.items()}
    analysis = analysis.add(answers)
    newton = analysis.request()
    assert newton.step == "newton"
    assert newton.layout is not None
    # a coordinator's state that is not a Newton step
    state = dict(newton.state) | {"beta": [0.0]}
    forged = ba.Request.from_json(json.dumps(newton.to_dict() | {"state": state}))
    with pytest.raises(ProtocolError, match="beta"):
        ba.answer(forged, tables["site0"], rules)
    # a site dropping out mid-fit: exact Newton needs the same sites every pass
    three = {k: ba.answer(newton, tables[k], rules) for k in ("site0", "site1", "site2")}
    with pytest.raises(ProtocolError, match="same sites"):
        analysis.add(three)


def test_step_halving_reaches_the_optimum() -> None:
    """Heavy-tailed covariates, small sites: a full Newton step overshoots, is halved
    (the next β lies halfway back), and the fit still ends at statsmodels' optimum."""
    rules = ba.DisclosureRules(min_cell=1, records_per_parameter=1)
    rng = np.random.default_rng(4)
    tables, frames = {}, []
    for s in range(3):
        n = 15
        x1 = rng.standard_t(1, n) * 3
        x2 = rng.binomial(1, 0.2, n).astype(float)
        eta = np.clip(3 * x1 + 5 * x2, -50, 50)
        t, c = rng.exponential(1 / np.exp(eta)), rng.exponential(1.0, n)
        time, event = np.round(np.minimum(t, c), 1), (t <= c).astype(float)
        cols = {"x1": x1, "x2": x2, "time": time, "event": event}
        tables[f"s{s}"] = ba.QueryTable(
            name=f"h{s}",
            columns=cols,
            kinds=dict.fromkeys(cols, "numeric"),
            ids=np.arange(n) + 100 * s,
            is_test=np.zeros(n, dtype=bool),
        )
        frames.append(pd.DataFrame(cols))
    query = ba.Query(
        kind="cox", options={"time": "time", "event": "event", "covariates": ["x1", "x2"]}
    )
    analysis = ba.start(query, rules)
    betas = []
    while not analysis.done:
        request = analysis.request()
        if request.step == "newton":
            betas.append(np.asarray(request.state["beta"]))
        analysis = analysis.add({k: ba.answer(request, t, rules) for k, t in tables.items()})
    result = analysis.result()
    assert isinstance(result, ba.RegressionResult)
    assert result.converged
    halved = [
        k for k in range(2, len(betas)) if np.allclose(betas[k], (betas[k - 1] + betas[k - 2]) / 2)
    ]
    assert halved
    df = pd.concat(frames)
    ref = PHReg(df["time"], df[["x1", "x2"]], status=df["event"], ties="efron").fit()
    assert rel(result.coef, np.asarray(ref.params)) < 1e-6
    assert rel(result.se, np.asarray(ref.bse)) < 1e-6


def test_forged_event_counts_are_refused(generated: Any) -> None:
    tables, _ = generated
    rules = ba.DisclosureRules()
    analysis = ba.start(gen_query(grid={"step": 5, "stop": 400}), rules, secure=True)
    while analysis.request().step != "newton":
        request = analysis.request()
        total = np.sum(
            [ba.secure_vector(request, ba.answer(request, t, rules)) for t in tables.values()],
            axis=0,
        )
        analysis = analysis.add_total(ba.total_from_vector(request, total), sorted(tables))
    request = analysis.request()
    good = ba.answer(request, tables["site0"], rules)
    forged = dict(good.arrays) | {"d": good.arrays["d"] + 1e9}
    with pytest.raises(ProtocolError, match="event counts"):
        ba.check_answer(request, forged, good.records)
    # in secure mode the coordinator checks the total against pass 1's event count
    vectors = [ba.secure_vector(request, ba.answer(request, t, rules)) for t in tables.values()]
    total = ba.total_from_vector(request, np.sum(vectors, axis=0))
    arrays = dict(total.arrays) | {"d": total.arrays["d"] * 2}
    with pytest.raises(ProtocolError, match="event counts"):
        analysis.add_total(ba.Answer(arrays=arrays, records=total.records), sorted(tables))
