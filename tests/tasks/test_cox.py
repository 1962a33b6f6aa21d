"""The linear Cox model: FLamby's loss, its gradient, its metrics and its task."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index as lifelines_cindex

from biofed.core import ConfigurationError, DataError, ParameterMismatch, ParameterSet, TaskError
from biofed.data import Dataset
from biofed.tasks import CoxPH, CoxPHTask, TrainContext
from biofed.tasks._cox import cox_loss_and_score_grad


def _flamby_loss(score: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """FLamby's BaselineLoss for Fed-TCGA-BRCA, transcribed loop for loop."""
    order = sorted(range(len(score)), key=lambda i: -time[i])
    s, e = score[order], event[order]
    loss = np.zeros(len(s))
    for i in range(1, len(s)):
        aux = s[: i + 1] - s[i]
        m = aux.max()
        loss[i] = m + np.log(np.exp(aux - m).sum())
    return float((loss * e).mean())


def _survival_data(n: int, p: int, seed: int, *, ties: bool = True) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)).astype(np.float32)
    beta = rng.normal(size=p) / np.sqrt(p)
    time = rng.exponential(np.exp(-X @ beta))
    if ties:
        time = np.round(time, 1)
    event = (rng.random(n) < 0.7).astype(np.int64)
    return Dataset(
        name="surv",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(p)),
        targets={"event": event, "time": time},
    )


@pytest.mark.parametrize("seed", range(6))
def test_loss_matches_flamby_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    score = rng.normal(size=n) * 3
    time = rng.integers(0, 4, n).astype(float)  # many ties: stable order matters
    event = rng.integers(0, 2, n).astype(float)
    loss, _ = cox_loss_and_score_grad(score, time, event)
    assert loss == pytest.approx(_flamby_loss(score, time, event), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_score_gradient_matches_finite_differences(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 9
    score = rng.normal(size=n)
    time = rng.integers(0, 5, n).astype(float)
    event = rng.integers(0, 2, n).astype(float)
    _, grad = cox_loss_and_score_grad(score, time, event)
    eps = 1e-6
    numeric = np.array(
        [
            (
                cox_loss_and_score_grad(score + eps * np.eye(n)[k], time, event)[0]
                - cox_loss_and_score_grad(score - eps * np.eye(n)[k], time, event)[0]
            )
            / (2 * eps)
            for k in range(n)
        ]
    )
    np.testing.assert_allclose(grad, numeric, atol=1e-8)


def test_parameter_gradient_matches_finite_differences() -> None:
    data = _survival_data(30, 5, 0)
    model = CoxPH(5)
    rng = np.random.default_rng(1)
    params = {"weight": rng.normal(size=(1, 5)), "bias": rng.normal(size=1)}
    X = data.features.astype(np.float64)
    targets = {k: data.target(k).astype(np.float64) for k in ("event", "time")}
    _, grads = model.loss_and_grad(params, X, targets)
    assert grads["bias"].shape == (1,)
    assert grads["bias"][0] == 0.0
    eps = 1e-6
    for j in range(5):
        plus = {"weight": params["weight"].copy(), "bias": params["bias"]}
        minus = {"weight": params["weight"].copy(), "bias": params["bias"]}
        plus["weight"][0, j] += eps
        minus["weight"][0, j] -= eps
        numeric = (
            model.loss_and_grad(plus, X, targets)[0] - model.loss_and_grad(minus, X, targets)[0]
        ) / (2 * eps)
        assert grads["weight"][0, j] == pytest.approx(numeric, abs=1e-7)


def test_loss_and_gradient_are_stable_for_huge_scores() -> None:
    rng = np.random.default_rng(3)
    score = rng.normal(size=8)
    time = rng.exponential(size=8)
    event = np.ones(8)
    loss, grad = cox_loss_and_score_grad(score, time, event)
    for shift in (800.0, -800.0):
        shifted_loss, shifted_grad = cox_loss_and_score_grad(score + shift, time, event)
        assert shifted_loss == pytest.approx(loss, abs=1e-9)
        np.testing.assert_allclose(shifted_grad, grad, atol=1e-12)
    big = np.array([0.0, 900.0, -900.0, 5.0])
    loss, grad = cox_loss_and_score_grad(big, np.array([4.0, 3.0, 2.0, 1.0]), np.ones(4))
    assert np.isfinite(loss)
    assert np.isfinite(grad).all()
    assert loss == pytest.approx(_flamby_loss(big, np.array([4.0, 3.0, 2.0, 1.0]), np.ones(4)))


def test_batch_without_events_has_zero_loss_and_gradient() -> None:
    loss, grad = cox_loss_and_score_grad(np.arange(5.0), np.arange(5.0), np.zeros(5))
    assert loss == 0.0
    assert not grad.any()


def test_full_batch_loss_is_lifelines_partial_likelihood_without_ties() -> None:
    data = _survival_data(200, 3, 4, ties=False)
    df = pd.DataFrame(data.features.astype(np.float64), columns=list(data.feature_names))
    df["T"], df["E"] = data.target("time"), data.target("event")
    cph = CoxPHFitter().fit(df, "T", "E")
    params = {"weight": cph.params_.to_numpy()[None, :], "bias": np.zeros(1)}
    metrics = CoxPH(3).metrics(params, data)
    assert -len(data) * metrics["cox_loss"] == pytest.approx(cph.log_likelihood_, rel=1e-6)
    assert metrics["c_index"] == pytest.approx(cph.concordance_index_, abs=1e-9)


def test_metrics_follow_flamby_convention() -> None:
    data = _survival_data(80, 4, 5)
    rng = np.random.default_rng(0)
    params = {"weight": rng.normal(size=(1, 4)), "bias": np.zeros(1)}
    model = CoxPH(4)
    risk = model.predict(params, data.features.astype(np.float64))
    metrics = model.metrics(params, data)
    expected = lifelines_cindex(data.target("time"), -risk, data.target("event"))
    assert metrics["c_index"] == pytest.approx(expected, abs=1e-12)
    assert metrics["cox_loss"] == pytest.approx(
        _flamby_loss(risk, data.target("time"), data.target("event"))
    )


def test_init_options() -> None:
    zeros = CoxPH(6).init_parameters(np.random.default_rng(0))
    assert list(zeros) == ["weight", "bias"]
    assert zeros["weight"].shape == (1, 6)
    assert zeros["bias"].shape == (1,)
    assert zeros["weight"].dtype == np.float32
    assert not zeros["weight"].any()
    uniform = CoxPH(6, init="uniform").init_parameters(np.random.default_rng(0))
    assert uniform["weight"].dtype == np.float32
    assert np.abs(uniform["weight"]).max() <= 1 / np.sqrt(6)
    assert uniform["weight"].any()
    assert uniform == CoxPH(6, init="uniform").init_parameters(np.random.default_rng(0))
    with pytest.raises(ConfigurationError, match="init"):
        CoxPH(6, init="normal")
    with pytest.raises(ConfigurationError, match="num_features"):
        CoxPH(0)


def test_task_trains_and_improves_the_c_index() -> None:
    data = _survival_data(300, 8, 6)
    task = CoxPHTask(8)
    assert (task.name, task.primary_metric) == ("cox_ph", "c_index")
    params = task.init_parameters(np.random.default_rng(0))
    before = task.evaluate(params, data, TrainContext()).metrics
    config = {"local_steps": 200, "batch_size": 16, "learning_rate": 0.05}
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(1)))
    assert result.num_examples == 300
    assert result.parameters.spec == params.spec
    assert np.isfinite(result.metrics["train_loss"])
    assert not result.extras
    after = task.evaluate(result.parameters, data, TrainContext())
    assert after.num_examples == 300
    assert before["c_index"] == 0.5
    assert after.metrics["c_index"] > 0.65
    assert after.metrics["cox_loss"] < before["cox_loss"]
    again = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(1)))
    assert again.parameters == result.parameters


def test_task_rejects_mismatched_parameters_and_missing_targets() -> None:
    data = _survival_data(20, 3, 7)
    task = CoxPHTask(3)
    wrong = ParameterSet({"weight": np.zeros((1, 4), np.float32), "bias": np.zeros(1, np.float32)})
    with pytest.raises(ParameterMismatch, match="weight"):
        task.train(wrong, data, TrainContext())
    with pytest.raises(ParameterMismatch):
        task.evaluate(wrong, data, TrainContext())
    unlabeled = Dataset(name="x", features=data.features, feature_names=data.feature_names)
    params = task.init_parameters(np.random.default_rng(0))
    with pytest.raises(DataError, match=r"time|event"):
        task.train(params, unlabeled, TrainContext())


def test_divergence_is_a_task_error() -> None:
    data = _survival_data(50, 3, 8)
    big = Dataset(
        name="big",
        features=data.features * 1e4,
        feature_names=data.feature_names,
        targets=data.targets,
    )
    task = CoxPHTask(3)
    params = task.init_parameters(np.random.default_rng(0))
    ctx = TrainContext(config={"learning_rate": 1e36, "local_steps": 5})
    with pytest.raises(TaskError, match="lower the learning_rate"):
        task.train(params, big, ctx)
