"""Logistic regression: gradient, metrics and convergence to scikit-learn's solution."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression as SkLogisticRegression
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from biofed.core import ConfigurationError, ParameterSet
from biofed.data import Dataset
from biofed.tasks import LogisticRegression, LogisticRegressionTask, TrainContext


def _binary_data(n: int, p: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)).astype(np.float32)
    logits = X @ rng.normal(size=p) + 0.3
    label = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    return Dataset(
        name="bin",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(p)),
        targets={"label": label},
    )


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_gradient_matches_finite_differences(l2: float) -> None:
    data = _binary_data(40, 4, 0)
    model = LogisticRegression(4, l2=l2)
    rng = np.random.default_rng(1)
    params = {"weight": rng.normal(size=(1, 4)), "bias": rng.normal(size=1)}
    X = data.features.astype(np.float64)
    targets = {"label": data.target("label").astype(np.float64)}
    _, grads = model.loss_and_grad(params, X, targets)
    eps = 1e-6
    for name, index in [("weight", (0, j)) for j in range(4)] + [("bias", (0,))]:
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][index] += eps
        minus[name][index] -= eps
        numeric = (
            model.loss_and_grad(plus, X, targets)[0] - model.loss_and_grad(minus, X, targets)[0]
        ) / (2 * eps)
        assert grads[name][index] == pytest.approx(numeric, abs=1e-7)


def test_loss_is_stable_for_huge_logits() -> None:
    model = LogisticRegression(1)
    params = {"weight": np.array([[1e4]]), "bias": np.zeros(1)}
    X = np.array([[1.0], [-1.0]])
    loss, grads = model.loss_and_grad(params, X, {"label": np.array([0.0, 1.0])})
    assert loss == pytest.approx(1e4)
    assert np.isfinite(grads["weight"]).all()


@pytest.mark.parametrize(("l2", "C"), [(0.0, 1e8), (0.05, 1 / (0.05 * 200))])
def test_training_converges_to_sklearn(l2: float, C: float) -> None:
    data = _binary_data(200, 3, 2)
    task = LogisticRegressionTask(3, l2=l2)
    params = task.init_parameters(np.random.default_rng(0))
    config = {"local_steps": 3000, "batch_size": 200, "learning_rate": 1.0}
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(0)))
    sk = SkLogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(
        data.features.astype(np.float64), data.target("label")
    )
    np.testing.assert_allclose(result.parameters["weight"][0], sk.coef_[0], atol=1e-4)
    np.testing.assert_allclose(result.parameters["bias"], sk.intercept_, atol=1e-4)


def test_adam_also_converges() -> None:
    data = _binary_data(200, 3, 3)
    task = LogisticRegressionTask(3)
    params = task.init_parameters(np.random.default_rng(0))
    config: dict[str, float | int | str] = {
        "local_steps": 3000,
        "batch_size": 200,
        "learning_rate": 0.05,
        "optimizer": "adam",
    }
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(0)))
    sk = SkLogisticRegression(C=1e8, tol=1e-12, max_iter=10_000).fit(
        data.features.astype(np.float64), data.target("label")
    )
    np.testing.assert_allclose(result.parameters["weight"][0], sk.coef_[0], atol=1e-3)


def test_metrics_match_sklearn() -> None:
    data = _binary_data(150, 3, 4)
    task = LogisticRegressionTask(3)
    assert (task.name, task.primary_metric) == ("logistic_regression", "roc_auc")
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(1, 3)).astype(np.float32), np.array([0.2], np.float32)
    result = task.evaluate(ParameterSet({"weight": weight, "bias": bias}), data, TrainContext())
    X, y = data.features.astype(np.float64), data.target("label")
    z = X @ weight[0].astype(np.float64) + float(bias[0])
    prob = 1 / (1 + np.exp(-z))
    assert result.num_examples == 150
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(y, prob > 0.5))
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(y, z))
    assert result.metrics["log_loss"] == pytest.approx(log_loss(y, prob), rel=1e-6)


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigurationError, match="l2"):
        LogisticRegression(3, l2=-1.0)
    with pytest.raises(ConfigurationError, match="num_features"):
        LogisticRegressionTask(-2)


def test_primary_metric_can_be_accuracy() -> None:
    assert LogisticRegressionTask(3, metric="accuracy").primary_metric == "accuracy"
    with pytest.raises(ConfigurationError, match="roc_auc, accuracy"):
        LogisticRegressionTask(3, metric="c_index")
