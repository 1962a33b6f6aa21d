"""Survival curves and exact regression through real site nodes and the coordinator's loop
(biofed.simulation.analyze) on Fed-TCGA-BRCA, against lifelines and statsmodels on the
pooled training data; secure mode gives the plain result."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from lifelines import CoxPHFitter, KaplanMeierFitter

from biofed.analytics import DisclosureRules, Query
from biofed.coordinator import PASS_EVENT, RunEvent
from biofed.core import Reply
from biofed.datasets import load_tcga_brca
from biofed.simulation import analyze

# the default rules refuse TCGA's 39-covariate Cox fit by design (40 rows for 39 columns at
# the smallest site; one-hot columns with 1-9 ones at every site): relaxed for that fit only
LOOSE = DisclosureRules(min_cell=1, records_per_parameter=1)
TIGHT = {"precision": 1e-12, "r_precision": 1e-15}  # lifelines run to its optimum


@pytest.fixture(scope="module")
def fed() -> Any:
    return load_tcga_brca()


@pytest.fixture(scope="module")
def pooled(fed: Any) -> pd.DataFrame:
    train = fed.pooled("train")
    df = pd.DataFrame(train.features, columns=list(train.feature_names))
    df["time"] = train.targets["time"]
    df["event"] = train.targets["event"]
    return df


class Passes:
    def __init__(self) -> None:
        self.passes = 0

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_event(self, event: RunEvent) -> None:
        self.passes += event.kind == PASS_EVENT


def test_km_through_the_sites_equals_lifelines_at_every_reported_time(
    fed: Any, pooled: pd.DataFrame
) -> None:
    result = analyze(fed, Query("km", {"time": "time", "event": "event"}, split="train"))
    curve = result.curves[0]  # type: ignore[attr-defined]
    kmf = KaplanMeierFitter().fit(pooled["time"], pooled["event"])
    expected = kmf.survival_function_.iloc[:, 0].loc[curve.times].to_numpy()
    assert len(curve.times) > 100
    np.testing.assert_allclose(curve.estimate, expected, rtol=0, atol=1e-10)
    ci = kmf.confidence_interval_.loc[curve.times].to_numpy()
    np.testing.assert_allclose(curve.lower, ci[:, 0], rtol=0, atol=1e-10)


@pytest.mark.slow
def test_cox_through_the_sites_equals_lifelines_and_secure_equals_plain(
    fed: Any, pooled: pd.DataFrame
) -> None:
    names = [c for c in pooled.columns if c not in ("time", "event")]
    options = {"time": "time", "event": "event", "covariates": names, "penalizer": 0.1}
    counted = Passes()
    plain = analyze(
        fed,
        Query("cox", options, split="train"),
        rules=LOOSE,
        node_rules=LOOSE,
        listener=counted,
    )
    ref = CoxPHFitter(penalizer=0.1).fit(pooled, "time", "event", fit_options=TIGHT)
    coef = np.asarray(plain.coef)  # type: ignore[attr-defined]
    se = np.asarray(plain.se)  # type: ignore[attr-defined]
    assert np.max(np.abs(coef - ref.params_.values) / np.abs(ref.params_.values)) < 1e-6
    assert np.max(np.abs(se - ref.standard_errors_.values) / ref.standard_errors_.values) < 1e-6
    assert plain.iterations <= 10  # type: ignore[attr-defined]
    assert counted.passes == 1 + plain.iterations  # type: ignore[attr-defined]
    # secure mode sums on an agreed grid of event times: the same model as plain on it
    grid = {**options, "grid": {"step": 30, "stop": 9000}}
    on_grid = analyze(fed, Query("cox", grid, split="train"), rules=LOOSE, node_rules=LOOSE)
    secure = analyze(
        fed, Query("cox", grid, split="train"), rules=LOOSE, node_rules=LOOSE, secure=True
    )
    # (the sums are on a 1e-6 grid: a coefficient of 0.013 moves by 2e-8)
    np.testing.assert_allclose(secure.coef, on_grid.coef, rtol=1e-5)  # type: ignore[attr-defined]
    np.testing.assert_allclose(secure.se, on_grid.se, rtol=1e-5)  # type: ignore[attr-defined]


def test_logistic_glm_through_the_sites_equals_statsmodels_plain_and_secure(fed: Any) -> None:
    # centres 4 and 5 hold fewer than 10 deaths: their sites refuse a logistic model
    sites = {name: fed.sites[name] for name in ("center-0", "center-1", "center-2", "center-3")}
    covariates = ["age_at_index", "race_white"]
    options = {"outcome": "event", "covariates": covariates, "family": "binomial"}
    query = Query("glm", options, split="train")
    plain = analyze(sites, query)
    secure = analyze(sites, query, secure=True)
    train = [s.train for s in sites.values()]
    columns = [list(train[0].feature_names).index(c) for c in covariates]
    X = sm.add_constant(np.concatenate([t.features[:, columns] for t in train]).astype(float))
    y = np.concatenate([t.targets["event"] for t in train])
    ref = sm.GLM(y, X, family=sm.families.Binomial()).fit(tol=1e-12)
    # secure sums sit on a 1e-6 grid: a coefficient of 0.15 moves by 2e-7
    for out, tol in ((plain, 1e-6), (secure, 1e-5)):
        np.testing.assert_allclose(out.coef, ref.params, rtol=tol)  # type: ignore[attr-defined]
        np.testing.assert_allclose(out.se, ref.bse, rtol=tol)  # type: ignore[attr-defined]
