"""The numpy adapter and the shared local-training machinery (batches, FedProx, SCAFFOLD)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import (
    Array,
    ConfigurationError,
    DataError,
    ParameterMismatch,
    ParameterSet,
    TaskError,
)
from biofed.data import Dataset
from biofed.tasks import (
    SCAFFOLD_CLIENT_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    GradientModel,
    NumpyTask,
    Task,
    TrainContext,
)
from biofed.tasks._local import sample_batches


class LeastSquares:
    """0.5 · mean((X coef + offset − y)²), with two parameters of different shapes."""

    target_keys = ("y",)

    def __init__(self, p: int) -> None:
        self.p = p

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        return ParameterSet(
            {
                "coef": rng.normal(size=(self.p,)).astype(np.float32),
                "offset": np.zeros((1, 1), np.float32),
            }
        )

    def predict(self, params: Mapping[str, Array], X: Array) -> Array:
        return np.asarray(X @ params["coef"] + params["offset"][0, 0])

    def loss_and_grad(
        self, params: Mapping[str, Array], X: Array, targets: Mapping[str, Array]
    ) -> tuple[float, dict[str, Array]]:
        r = self.predict(params, X) - targets["y"]
        n = X.shape[0]
        return 0.5 * float(r @ r) / n, {"coef": r @ X / n, "offset": np.full((1, 1), r.sum() / n)}

    def metrics(self, params: Mapping[str, Array], data: Dataset) -> dict[str, float]:
        r = self.predict(params, data.features.astype(np.float64)) - data.target("y")
        return {"mse": float(np.mean(r * r))}


def _regression_data(n: int = 37, p: int = 4, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)).astype(np.float32)
    y = X @ rng.normal(size=p) + 0.5 + 0.1 * rng.normal(size=n)
    return Dataset(
        name="reg", features=X, feature_names=tuple(f"x{i}" for i in range(p)), targets={"y": y}
    )


def _reference_train(
    model: GradientModel,
    params: ParameterSet,
    data: Dataset,
    config: dict[str, float | int | str],
    seed: int,
    *,
    c: ParameterSet | None = None,
    c_i: ParameterSet | None = None,
) -> dict[str, Array]:
    """Plain per-parameter loops, written from the papers, for comparison."""
    steps, bs = int(config["local_steps"]), int(config["batch_size"])
    lr, mu = float(config["learning_rate"]), float(config.get("proximal_mu", 0.0))
    momentum = float(config.get("momentum", 0.0))
    clip = float(config.get("max_grad_norm", 0.0))
    batches = sample_batches(len(data), bs, steps, np.random.default_rng(seed))
    x = {k: v.astype(np.float64) for k, v in params.items()}
    w = {k: v.copy() for k, v in x.items()}
    buf = {k: np.zeros_like(v) for k, v in w.items()}
    X = data.features.astype(np.float64)
    for rows in batches:
        _, grads = model.loss_and_grad(
            w, X[rows], {k: data.target(k)[rows] for k in model.target_keys}
        )
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        if clip and norm > clip:
            grads = {k: g * (clip / norm) for k, g in grads.items()}
        for k in w:
            g = grads[k] + mu * (w[k] - x[k])
            if c is not None and c_i is not None:
                g = g - c_i[k] + c[k]
            buf[k] = momentum * buf[k] + g
            w[k] = w[k] - lr * buf[k]
    return w


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 12), st.integers(1, 25), st.integers(0, 2**32))
def test_batches_reshuffle_each_pass_and_drop_the_partial_batch(
    n: int, batch_size: int, steps: int, seed: int
) -> None:
    batches = sample_batches(n, batch_size, steps, np.random.default_rng(seed))
    size = min(batch_size, n)
    assert batches.shape == (steps, size)
    assert batches.dtype == np.int64
    per_pass = n // size
    for start in range(0, steps, per_pass):
        rows = batches[start : start + per_pass].ravel()
        assert len(np.unique(rows)) == rows.size  # no row twice within a pass
        assert rows.min() >= 0
        assert rows.max() < n
    again = sample_batches(n, batch_size, steps, np.random.default_rng(seed))
    np.testing.assert_array_equal(batches, again)


def test_batches_cover_the_data_and_differ_between_passes() -> None:
    batches = sample_batches(10, 3, 6, np.random.default_rng(0))
    first, second = batches[:3].ravel(), batches[3:].ravel()
    assert not np.array_equal(first, second)
    small = sample_batches(3, 8, 4, np.random.default_rng(0))
    assert all(sorted(row) == [0, 1, 2] for row in small.tolist())
    with pytest.raises(DataError, match="empty"):
        sample_batches(0, 8, 4, np.random.default_rng(0))


def test_numpy_task_is_a_task_and_converges() -> None:
    model = LeastSquares(4)
    assert isinstance(model, GradientModel)
    task = NumpyTask(model, name="ls", primary_metric="mse")
    assert isinstance(task, Task)
    data = _regression_data()
    params = task.init_parameters(np.random.default_rng(0))
    config = {"local_steps": 400, "batch_size": 8, "learning_rate": 0.05}
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(1)))
    assert result.parameters.spec == params.spec
    assert result.num_examples == len(data)
    assert task.evaluate(result.parameters, data, TrainContext()).metrics["mse"] < 0.03


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"momentum": 0.9},
        {"proximal_mu": 0.5},
        {"proximal_mu": 2.0, "momentum": 0.5},
        {"max_grad_norm": 0.3},
        {"max_grad_norm": 0.3, "proximal_mu": 0.5},
    ],
)
def test_sgd_momentum_and_fedprox_match_the_reference(extra: dict[str, float]) -> None:
    model = LeastSquares(4)
    task = NumpyTask(model, name="ls", primary_metric="mse")
    data = _regression_data()
    params = model.init_parameters(np.random.default_rng(2))
    config: dict[str, float | int | str] = {
        "local_steps": 25,
        "batch_size": 5,
        "learning_rate": 0.05,
        **extra,
    }
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(3)))
    expected = _reference_train(model, params, data, config, 3)
    for name in params:
        np.testing.assert_allclose(result.parameters[name], expected[name], rtol=1e-5, atol=1e-6)


def test_fedprox_pulls_towards_the_global_model() -> None:
    model = LeastSquares(4)
    task = NumpyTask(model, name="ls", primary_metric="mse")
    data = _regression_data()
    params = model.init_parameters(np.random.default_rng(2))

    def distance(mu: float) -> float:
        config = {"local_steps": 50, "batch_size": 8, "learning_rate": 0.05, "proximal_mu": mu}
        out = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(0)))
        return float(np.linalg.norm(out.parameters["coef"] - params["coef"]))

    assert distance(10.0) < distance(1.0) < distance(0.0)


def test_scaffold_client_update() -> None:
    model = LeastSquares(4)
    task = NumpyTask(model, name="ls", primary_metric="mse")
    data = _regression_data()
    params = model.init_parameters(np.random.default_rng(2))
    rng = np.random.default_rng(5)
    c = params.map(lambda a: rng.normal(size=a.shape).astype(np.float32))
    config: dict[str, float | int | str] = {
        "local_steps": 20,
        "batch_size": 6,
        "learning_rate": 0.03,
    }
    state: dict[str, ParameterSet] = {}
    K, lr = 20, 0.03
    c_i = params.map(np.zeros_like)
    for round_seed in (7, 8):  # the second round starts from the stored c_i
        ctx = TrainContext(
            config=config,
            rng=np.random.default_rng(round_seed),
            extras={SCAFFOLD_SERVER_CONTROL: c},
            state=state,
        )
        result = task.train(params, data, ctx)
        expected = _reference_train(model, params, data, config, round_seed, c=c, c_i=c_i)
        for name in params:
            np.testing.assert_allclose(
                result.parameters[name], expected[name], rtol=1e-5, atol=1e-6
            )
        new_c_i = {k: c_i[k] - c[k] + (params[k] - result.parameters[k]) / (K * lr) for k in params}
        delta = result.extras[SCAFFOLD_CONTROL_DELTA]
        stored = state[SCAFFOLD_CLIENT_CONTROL]
        for name in params:
            np.testing.assert_allclose(stored[name], new_c_i[name], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(delta[name], stored[name] - c_i[name], rtol=1e-5, atol=1e-5)
        assert delta.spec == params.spec
        c_i = stored


def test_scaffold_needs_plain_sgd_and_matching_controls() -> None:
    model = LeastSquares(4)
    task = NumpyTask(model, name="ls", primary_metric="mse")
    data = _regression_data()
    params = model.init_parameters(np.random.default_rng(2))
    c = params.map(np.zeros_like)
    for config in ({"optimizer": "adam"}, {"momentum": 0.9}):
        ctx = TrainContext(config=config, extras={SCAFFOLD_SERVER_CONTROL: c})
        with pytest.raises(ConfigurationError, match="SCAFFOLD"):
            task.train(params, data, ctx)
    bad = ParameterSet({"coef": np.zeros(3, np.float32), "offset": np.zeros((1, 1), np.float32)})
    with pytest.raises(ParameterMismatch, match="SCAFFOLD server control"):
        task.train(params, data, TrainContext(extras={SCAFFOLD_SERVER_CONTROL: bad}))
    ctx = TrainContext(extras={SCAFFOLD_SERVER_CONTROL: c}, state={SCAFFOLD_CLIENT_CONTROL: bad})
    with pytest.raises(ParameterMismatch, match="client control"):
        task.train(params, data, ctx)


def test_invalid_config_and_empty_data() -> None:
    task = NumpyTask(LeastSquares(4), name="ls", primary_metric="mse")
    data = _regression_data()
    params = task.init_parameters(np.random.default_rng(0))
    with pytest.raises(ConfigurationError, match="learning_rate"):
        task.train(params, data, TrainContext(config={"learning_rate": -1.0}))
    with pytest.raises(DataError, match="empty"):
        task.train(params, data.subset([]), TrainContext())


def test_nan_loss_is_a_task_error() -> None:
    class Broken(LeastSquares):
        def loss_and_grad(
            self, params: Mapping[str, Array], X: Array, targets: Mapping[str, Array]
        ) -> tuple[float, dict[str, Array]]:
            _, grads = super().loss_and_grad(params, X, targets)
            return float("nan"), grads

    task = NumpyTask(Broken(4), name="ls", primary_metric="mse")
    params = task.init_parameters(np.random.default_rng(0))
    with pytest.raises(TaskError, match="lower the learning_rate"):
        task.train(params, _regression_data(), TrainContext())


def test_parameters_are_not_modified_in_place() -> None:
    task = NumpyTask(LeastSquares(4), name="ls", primary_metric="mse")
    params = task.init_parameters(np.random.default_rng(0))
    before = params.copy()
    task.train(params, _regression_data(), TrainContext(config={"local_steps": 5}))
    for name, value in before.items():
        np.testing.assert_array_equal(params[name], value)
