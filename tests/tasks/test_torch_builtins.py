"""The built-in PyTorch tasks: the same maths as their numpy twins, and DP-SGD ready."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from biofed.core import ConfigurationError, ParameterSet
from biofed.data import Dataset
from biofed.tasks import CoxPHTask, LogisticRegressionTask, Task, TrainContext, make_task
from biofed.tasks._cox import cox_loss_and_score_grad

if TYPE_CHECKING:
    import torch

    from biofed.tasks import CoxPHTorchTask, LogisticRegressionTorchTask
else:
    torch = pytest.importorskip("torch")

pytestmark = pytest.mark.torch

P = 6


def _surv(n: int = 60, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P)).astype(np.float32)
    time = np.round(rng.exponential(np.exp(-X[:, 0])), 1)  # rounded: ties
    return Dataset(
        name="surv",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(P)),
        targets={"event": rng.integers(0, 2, n).astype(np.float64), "time": time},
    )


def _labels(n: int = 60, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P)).astype(np.float32)
    return Dataset(
        name="bin",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(P)),
        targets={"label": (X[:, 1] + rng.normal(size=n) > 0).astype(np.int64)},
    )


def _cox_torch() -> CoxPHTorchTask:
    from biofed.tasks import CoxPHTorchTask

    return CoxPHTorchTask(P)


def _logreg_torch() -> LogisticRegressionTorchTask:
    from biofed.tasks import LogisticRegressionTorchTask

    return LogisticRegressionTorchTask(P)


def _close(a: ParameterSet, b: ParameterSet) -> None:
    assert a.spec == b.spec
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("seed", range(5))
def test_torch_cox_loss_and_gradient_match_numpy(seed: int) -> None:
    from biofed.tasks._cox_torch import cox_loss

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    score = rng.normal(size=n) * 2
    time = rng.integers(0, 6, n).astype(np.float64)  # many ties: the stable order matters
    event = rng.integers(0, 2, n).astype(np.float64)
    expected_loss, expected_grad = cox_loss_and_score_grad(score, time, event)
    s = torch.tensor(score, requires_grad=True)
    loss = cox_loss(s[:, None], {"time": torch.from_numpy(time), "event": torch.from_numpy(event)})
    loss.backward()
    assert float(loss.detach()) == pytest.approx(expected_loss, rel=1e-12, abs=1e-14)
    assert s.grad is not None
    np.testing.assert_allclose(s.grad.numpy(), expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"optimizer": "adam", "learning_rate": 0.01},
        {"proximal_mu": 0.5, "momentum": 0.9},
        {"max_grad_norm": 0.5},
    ],
)
def test_cox_torch_trains_like_cox_numpy(extra: dict[str, Any]) -> None:
    data = _surv()
    numpy_task, torch_task = CoxPHTask(P), _cox_torch()
    assert isinstance(torch_task, Task)
    params = CoxPHTask(P, init="uniform").init_parameters(np.random.default_rng(1))
    config = {"local_steps": 30, "batch_size": 8, "learning_rate": 0.05, **extra}
    a = numpy_task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(4)))
    b = torch_task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(4)))
    _close(b.parameters, a.parameters)  # the frozen bias never moves, as in numpy
    assert b.parameters["bias"] == params["bias"]
    assert b.metrics["train_loss"] == pytest.approx(a.metrics["train_loss"], rel=1e-4)


def test_cox_torch_init_and_metrics_match_numpy() -> None:
    torch_task = _cox_torch()
    params = torch_task.init_parameters(np.random.default_rng(0))
    assert params == CoxPHTask(P).init_parameters(np.random.default_rng(0))  # zeros
    trained = CoxPHTask(P).train(
        params, _surv(), TrainContext(config={"local_steps": 20}, rng=np.random.default_rng(0))
    )
    test = _surv(seed=9)
    a = CoxPHTask(P).evaluate(trained.parameters, test, TrainContext()).metrics
    b = torch_task.evaluate(trained.parameters, test, TrainContext()).metrics
    assert set(b) == {"c_index", "cox_loss"}
    assert b["c_index"] == pytest.approx(a["c_index"], abs=1e-12)
    assert b["cox_loss"] == pytest.approx(a["cox_loss"], rel=1e-6)
    uniform = make_task("cox_ph_torch", num_features=P, init="uniform")
    assert uniform.init_parameters(np.random.default_rng(0)).spec == params.spec


def test_cox_torch_under_dp_sgd() -> None:
    pytest.importorskip("opacus")
    task, data = _cox_torch(), _surv(n=120)
    params = task.init_parameters(np.random.default_rng(0))
    config = {
        "local_steps": 20,
        "batch_size": 16,
        "learning_rate": 0.05,
        "dp_noise_multiplier": 0.8,
        "dp_max_grad_norm": 1.0,
        "dp_seeded": True,
    }
    result = task.train(params, data, TrainContext(config=config, rng=np.random.default_rng(1)))
    assert result.parameters.all_finite()
    assert result.parameters["bias"] == params["bias"]  # frozen: no noise on it
    assert result.metrics["dp_sampling_rate"] == pytest.approx(16 / 120)


@pytest.mark.parametrize("extra", [{}, {"optimizer": "adam", "learning_rate": 0.01}])
def test_logreg_torch_trains_like_logreg_numpy(extra: dict[str, Any]) -> None:
    data = _labels()
    params = LogisticRegressionTask(P, init="uniform").init_parameters(np.random.default_rng(2))
    config = {"local_steps": 25, "batch_size": 8, "learning_rate": 0.1, **extra}
    a = LogisticRegressionTask(P).train(
        params, data, TrainContext(config=config, rng=np.random.default_rng(5))
    )
    b = _logreg_torch().train(
        params, data, TrainContext(config=config, rng=np.random.default_rng(5))
    )
    _close(b.parameters, a.parameters)
    test = _labels(seed=3)
    ma = LogisticRegressionTask(P).evaluate(a.parameters, test, TrainContext()).metrics
    mb = _logreg_torch().evaluate(a.parameters, test, TrainContext()).metrics
    assert set(mb) == set(ma)
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], rel=1e-6)


def test_make_task_builds_the_torch_tasks() -> None:
    from biofed.tasks import CoxPHTorchTask, LogisticRegressionTorchTask

    cox = make_task("cox_ph_torch", num_features=39)
    assert isinstance(cox, CoxPHTorchTask)
    assert (cox.name, cox.primary_metric) == ("cox_ph_torch", "c_index")
    logreg = make_task("logistic_regression_torch", num_features=3)
    assert isinstance(logreg, LogisticRegressionTorchTask)
    assert logreg.primary_metric == "roc_auc"
    with pytest.raises(ConfigurationError, match="num_features"):
        make_task("cox_ph_torch", num_features=0)
    with pytest.raises(ConfigurationError, match="unexpected keyword"):
        make_task("cox_ph_torch", num_features=3, l2=0.1)


def test_torch_tasks_without_torch_are_a_configuration_error() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import biofed.tasks as t\n"
        "from biofed.core import ConfigurationError\n"
        "try:\n"
        "    t.make_task('cox_ph_torch', num_features=3)\n"
        "except ConfigurationError as exc:\n"
        "    assert 'PyTorch' in str(exc) and 'biofed[torch]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('built a torch task without torch')\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
