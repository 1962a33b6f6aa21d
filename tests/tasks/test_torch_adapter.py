"""The PyTorch adapter: same batches and same maths as the numpy adapter."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pytest

from biofed.core import ParameterMismatch, ParameterSet, TaskError
from biofed.data import Dataset
from biofed.tasks import (
    SCAFFOLD_CLIENT_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    CoxPHTask,
    Task,
    TrainContext,
    concordance_index,
)

if TYPE_CHECKING:
    import torch

    from biofed.tasks import TorchTask
else:
    torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

P = 6


def torch_cox_loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FLamby's Cox loss, vectorised in torch."""
    order = torch.argsort(-targets["time"], stable=True)
    score = outputs.squeeze(1)[order]
    event = targets["event"][order].to(score.dtype)
    return (event * (torch.logcumsumexp(score, 0) - score)).mean()


def cox_metrics(module: torch.nn.Module, data: Dataset) -> dict[str, float]:
    risk = module(torch.from_numpy(np.array(data.features))).squeeze(1).numpy()
    return {"c_index": concordance_index(data.target("time"), -risk, data.target("event"))}


def _torch_task() -> TorchTask:
    from biofed.tasks import TorchTask

    return TorchTask(
        lambda: torch.nn.Linear(P, 1),
        torch_cox_loss,
        cox_metrics,
        name="torch_cox",
        primary_metric="c_index",
    )


def _data(seed: int = 0, n: int = 60) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P)).astype(np.float32)
    time = np.round(rng.exponential(np.exp(-X[:, 0])), 1)
    return Dataset(
        name="surv",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(P)),
        targets={"event": rng.integers(0, 2, n), "time": time},
    )


def _start(seed: int = 11) -> ParameterSet:
    return CoxPHTask(P, init="uniform").init_parameters(np.random.default_rng(seed))


def _assert_close(a: ParameterSet, b: ParameterSet) -> None:
    assert a.spec == b.spec
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"proximal_mu": 0.5},
        {"momentum": 0.9},
        {"optimizer": "adam", "learning_rate": 0.01},
        {"optimizer": "adam", "learning_rate": 0.01, "proximal_mu": 1.0},
        {"batch_size": 100},
        {"max_grad_norm": 0.5},
        {"max_grad_norm": 0.5, "proximal_mu": 0.1},
    ],
)
def test_torch_and_numpy_cox_agree(extra: dict[str, float | str]) -> None:
    data, params = _data(), _start()
    config = {"local_steps": 30, "batch_size": 8, "learning_rate": 0.05, **extra}
    numpy_result = CoxPHTask(P).train(
        params, data, TrainContext(config=config, rng=np.random.default_rng(4))
    )
    task = _torch_task()
    assert isinstance(task, Task)
    torch_result = task.train(
        params, data, TrainContext(config=config, rng=np.random.default_rng(4))
    )
    if extra.get("optimizer") == "adam":
        # The Cox bias's gradient is exactly 0 in numpy and float noise (~1e-8) in torch,
        # which Adam's normalisation blows up to steps of size lr: compare the weights only.
        np.testing.assert_allclose(
            torch_result.parameters["weight"],
            numpy_result.parameters["weight"],
            rtol=2e-4,
            atol=2e-5,
        )
    else:
        _assert_close(torch_result.parameters, numpy_result.parameters)
    assert torch_result.num_examples == numpy_result.num_examples == len(data)
    assert torch_result.metrics["train_loss"] == pytest.approx(
        numpy_result.metrics["train_loss"], rel=1e-4
    )


def test_torch_and_numpy_scaffold_agree_over_two_rounds() -> None:
    data, params = _data(1), _start()
    rng = np.random.default_rng(0)
    c = params.map(lambda a: (0.1 * rng.normal(size=a.shape)).astype(np.float32))
    config = {"local_steps": 20, "batch_size": 8, "learning_rate": 0.05, "proximal_mu": 0.1}
    numpy_state: dict[str, ParameterSet] = {}
    torch_state: dict[str, ParameterSet] = {}
    task = _torch_task()
    for seed in (1, 2):
        extras = {SCAFFOLD_SERVER_CONTROL: c}
        a = CoxPHTask(P).train(
            params,
            data,
            TrainContext(
                config=config, rng=np.random.default_rng(seed), extras=extras, state=numpy_state
            ),
        )
        b = task.train(
            params,
            data,
            TrainContext(
                config=config, rng=np.random.default_rng(seed), extras=extras, state=torch_state
            ),
        )
        _assert_close(b.parameters, a.parameters)
        _assert_close(b.extras[SCAFFOLD_CONTROL_DELTA], a.extras[SCAFFOLD_CONTROL_DELTA])
        _assert_close(torch_state[SCAFFOLD_CLIENT_CONTROL], numpy_state[SCAFFOLD_CLIENT_CONTROL])


def test_init_evaluate_and_parameter_checks() -> None:
    task = _torch_task()
    params = task.init_parameters(np.random.default_rng(0))
    assert list(params) == ["weight", "bias"]
    assert params["weight"].shape == (1, P)
    assert params["weight"].dtype == np.float32
    assert params == task.init_parameters(np.random.default_rng(0))
    assert params != task.init_parameters(np.random.default_rng(1))
    data = _data()
    result = task.evaluate(params, data, TrainContext())
    assert result.num_examples == len(data)
    numpy_metrics = CoxPHTask(P).evaluate(params, data, TrainContext()).metrics
    assert result.metrics["c_index"] == pytest.approx(numpy_metrics["c_index"], abs=1e-9)
    wrong = ParameterSet(
        {"weight": np.zeros((1, P + 1), np.float32), "bias": np.zeros(1, np.float32)}
    )
    with pytest.raises(ParameterMismatch, match="weight"):
        task.train(wrong, data, TrainContext())
    with pytest.raises(ParameterMismatch, match="names"):
        task.evaluate(ParameterSet({"weight": params["weight"]}), data, TrainContext())


def test_default_metrics_and_torch_rng_left_alone() -> None:
    from biofed.tasks import TorchTask

    task = TorchTask(lambda: torch.nn.Linear(P, 1), torch_cox_loss, name="t")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    params = task.init_parameters(np.random.default_rng(0))
    task.train(params, _data(), TrainContext(config={"local_steps": 3}))
    result = task.evaluate(params, _data(), TrainContext())
    assert set(result.metrics) == {"loss"}
    assert torch.equal(torch.rand(3), expected)


def test_divergence_is_a_task_error() -> None:
    from biofed.tasks import TorchTask

    def mse(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return ((outputs.squeeze(1) - targets["time"].float()) ** 2).mean()

    task = TorchTask(lambda: torch.nn.Linear(P, 1), mse, name="t")
    params = task.init_parameters(np.random.default_rng(0))
    ctx = TrainContext(config={"learning_rate": 1e6, "local_steps": 50})
    with pytest.raises(TaskError, match="lower the learning_rate"):
        task.train(params, _data(), ctx)
