"""RegressionResult: inference from coefficients and covariance, its table, its JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from biofed.analytics import RegressionResult
from biofed.core import ConfigurationError


def _result(
    model: str, *, coef: list[float] | None = None, alpha: float = 0.05
) -> RegressionResult:
    values = np.asarray(coef if coef is not None else [0.5, -1.2, 0.0])
    cov = np.diag([0.04, 0.09, 0.01])
    cov[0, 1] = cov[1, 0] = 0.01
    names = ["(intercept)", "age", "stage=II"]
    return RegressionResult.build(
        kind="cox" if model in ("breslow", "efron", "efron+strata") else "glm",
        model=model,
        names=names,
        coef=values,
        covariance=cov,
        alpha=alpha,
        loglik=-123.4,
        iterations=5,
        converged=True,
        records=400,
        events=None,
        sites=4,
        deviance=None if model in ("breslow", "efron", "efron+strata") else 246.8,
    )


def test_build_fills_wald_inference_as_scipy() -> None:
    res = _result("binomial", alpha=0.1)
    se = np.sqrt([0.04, 0.09, 0.01])
    np.testing.assert_allclose(res.se, se, rtol=1e-15)
    np.testing.assert_allclose(res.z, res.coef / se, rtol=1e-15)
    np.testing.assert_allclose(res.p, 2 * stats.norm.sf(np.abs(res.coef / se)), rtol=1e-12)
    q = stats.norm.ppf(0.95)
    np.testing.assert_allclose(res.lower, res.coef - q * se, rtol=1e-12)
    np.testing.assert_allclose(res.upper, res.coef + q * se, rtol=1e-12)


@pytest.mark.parametrize(
    ("model", "ratio"),
    [
        ("binomial", "odds ratio"),
        ("poisson", "rate ratio"),
        ("efron", "hazard ratio"),
        ("breslow", "hazard ratio"),
        ("efron+strata", "hazard ratio"),
        ("gaussian", None),
    ],
)
def test_ratio_names_what_exp_coef_means(model: str, ratio: str | None) -> None:
    assert _result(model).ratio == ratio


def test_table_of_a_logistic_model_shows_odds_ratios_but_not_for_the_intercept() -> None:
    headers, rows = _result("binomial").table()
    assert headers == [
        "parameter",
        "coef",
        "exp(coef) [odds ratio]",
        "se",
        "z",
        "p",
        "lower 95%",
        "upper 95%",
        "exp(lower 95%)",
        "exp(upper 95%)",
    ]
    assert [r[0] for r in rows] == ["(intercept)", "age", "stage=II"]
    assert all(len(r) == len(headers) for r in rows)
    assert all(isinstance(c, str) for r in rows for c in r)
    intercept, age, stage = rows
    assert intercept[2] == intercept[8] == intercept[9] == ""
    assert float(age[1]) == pytest.approx(-1.2)
    assert float(age[2]) == pytest.approx(math.exp(-1.2), rel=1e-3)
    assert float(age[3]) == pytest.approx(0.3)
    assert float(age[4]) == pytest.approx(-4.0)
    assert float(age[8]) == pytest.approx(math.exp(-1.2 - 1.959964 * 0.3), rel=1e-3)
    assert stage[1] == "0"
    assert stage[2] == "1"
    assert stage[5] == "1"


def test_table_of_a_gaussian_model_has_no_ratio_columns() -> None:
    headers, rows = _result("gaussian", alpha=0.1).table()
    assert headers == ["parameter", "coef", "se", "z", "p", "lower 90%", "upper 90%"]
    assert all(len(r) == 7 for r in rows)


def test_table_survives_extreme_estimates() -> None:
    """A separated logistic fit can carry a huge coefficient: exp overflows to 'inf' and a
    vanishing p-value prints as a floor, not as an error."""
    _, rows = _result("binomial", coef=[0.0, 800.0, -900.0]).table()
    assert rows[1][2] == "inf"
    assert rows[1][5] == "<1e-16"
    assert rows[2][2] == "0"


def test_json_round_trip_keeps_every_figure() -> None:
    res = _result("poisson")
    back = RegressionResult.from_dict(json.loads(res.to_json()))
    assert isinstance(back, RegressionResult)
    assert back.table() == res.table()
    np.testing.assert_array_equal(back.covariance, res.covariance)
    assert back.to_dict() == res.to_dict()
    assert back.deviance == 246.8
    assert back.events is None


def test_from_dict_refuses_a_broken_result() -> None:
    data = _result("poisson").to_dict()
    del data["coef"]
    with pytest.raises(ConfigurationError, match="not a regression result"):
        RegressionResult.from_dict(data)
