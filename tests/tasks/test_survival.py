"""The discrete-time survival tasks and the integrated Brier score."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

from biofed.core import ConfigurationError, DataError
from biofed.data import Dataset
from biofed.tasks import TrainContext, integrated_brier_score, make_task, parameter_spec
from biofed.tasks._metrics import censoring_survival

if TYPE_CHECKING:
    import torch
else:
    torch = pytest.importorskip("torch")

P = 4
SURVIVAL_TASKS = ("logistic_hazard_torch", "pem_torch")


def _surv(n: int = 200, seed: int = 0, max_time: float = 10.0) -> Dataset:
    """Exponential times with a log-hazard ratio of 1 on x0, uniform censoring."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, P)).astype(np.float32)
    t_event = rng.exponential(3.0 * np.exp(-X[:, 0]))
    t_cens = rng.uniform(0.0, 1.5 * max_time, n)
    return Dataset(
        name="surv",
        features=X,
        feature_names=tuple(f"x{i}" for i in range(P)),
        targets={
            "time": np.round(np.minimum(t_event, t_cens), 1),
            "event": (t_event <= t_cens).astype(np.float64),
        },
    )


# -- the integrated Brier score ------------------------------------------------------------------
def _km_censoring_reference(time: list[float], event: list[int], t: float, left: bool) -> float:
    """G(t) (or G(t−)) by the textbook product over distinct censoring times, in a loop."""
    g = 1.0
    for s in sorted(set(time)):
        if s > t or (left and s == t):
            break
        at_risk = sum(1 for u in time if u >= s)
        censored = sum(1 for u, e in zip(time, event, strict=True) if u == s and e == 0)
        g *= 1.0 - censored / at_risk
    return g


def _ibs_reference(
    time: list[float], event: list[int], surv: np.ndarray, grid: list[float]
) -> float:
    """Graf et al. 1999 written out record by record, grid point by grid point."""
    scores = []
    for j, t in enumerate(grid):
        total = 0.0
        for i, (ti, ei) in enumerate(zip(time, event, strict=True)):
            if ti <= t and ei == 1:
                total += surv[i, j] ** 2 / _km_censoring_reference(time, event, ti, left=True)
            elif ti > t:
                total += (1 - surv[i, j]) ** 2 / _km_censoring_reference(time, event, t, False)
        scores.append(total / len(time))
    area = sum(
        (grid[k + 1] - grid[k]) * (scores[k] + scores[k + 1]) / 2 for k in range(len(grid) - 1)
    )
    return area / (grid[-1] - grid[0])


def test_censoring_km_matches_a_hand_computed_example() -> None:
    time = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    event = np.array([1, 0, 1, 0, 1, 0]) == 1
    # censorings at 2 (5 at risk) and 3 (3 at risk) and 5 (1 at risk)
    expected = [1.0, 1.0, 0.8, 0.8 * 2 / 3, 0.8 * 2 / 3, 0.0]
    got = censoring_survival(time, event, np.array([0.5, 1.0, 2.0, 3.0, 4.5, 5.0]))
    np.testing.assert_allclose(got, expected)
    left = censoring_survival(time, event, np.array([2.0, 3.0]), left=True)
    np.testing.assert_allclose(left, [1.0, 0.8])


@pytest.mark.parametrize("seed", range(5))
def test_ibs_matches_a_loop_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 25
    time = np.round(rng.exponential(2.0, n), 1) + 0.1  # ties, including event-censoring ties
    event = rng.integers(0, 2, n)
    grid = np.linspace(0.2, float(np.quantile(time, 0.8)), 7)
    surv = np.sort(rng.uniform(size=(n, grid.size)), axis=1)[:, ::-1]
    got = integrated_brier_score(time, event, surv, grid)
    want = _ibs_reference(time.tolist(), event.tolist(), surv, grid.tolist())
    assert got == pytest.approx(want, rel=1e-12)


def test_ibs_without_censoring_is_the_mean_squared_error_of_survival() -> None:
    time = np.array([1.0, 2.0, 3.0, 4.0])
    grid = np.array([0.5, 1.5, 2.5])
    surv = np.full((4, 3), 0.5)
    # G = 1, every term is (0.5 − 1(T > t))² = 0.25
    assert integrated_brier_score(time, np.ones(4), surv, grid) == pytest.approx(0.25)
    perfect = (time[:, None] > grid[None, :]).astype(float)
    assert integrated_brier_score(time, np.ones(4), perfect, grid) == 0.0


def test_ibs_refuses_bad_input_with_one_line() -> None:
    with pytest.raises(DataError, match="survival must be"):
        integrated_brier_score([1.0, 2.0], [1, 0], np.ones((3, 2)), [0.5, 1.0])
    with pytest.raises(DataError, match="grid must hold"):
        integrated_brier_score([1.0, 2.0], [1, 0], np.ones((2, 2)), [1.0, 0.5])


# -- the tasks -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SURVIVAL_TASKS)
def test_layout_and_declaration(name: str) -> None:
    task = make_task(name, num_features=P, num_intervals=5, max_time=10.0)
    params = task.init_parameters(np.random.default_rng(0))
    assert params.spec == parameter_spec(name, num_features=P, num_intervals=5, max_time=10.0)
    assert {n: s for n, s, _ in params.spec.entries}["baseline.weight"] == (5, 1)
    assert type(task).dp_record_coupling == "independent"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_intervals": 0}, "num_intervals must be"),
        ({"num_intervals": 2.5}, "num_intervals must be"),
        ({"max_time": 0.0}, "max_time must be"),
        ({"max_time": math.inf}, "max_time must be"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, float], match: str) -> None:
    for name in SURVIVAL_TASKS:
        with pytest.raises(ConfigurationError, match=match):
            make_task(name, num_features=P, **kwargs)
        with pytest.raises(ConfigurationError, match=match):
            parameter_spec(name, num_features=P, **kwargs)


def test_interval_targets() -> None:
    from biofed.tasks._survival_torch import interval_targets

    cuts = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    time = torch.tensor([0.0, 0.5, 1.0, 3.0, 9.0])
    event = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0])
    at_risk, died, exposure = interval_targets(time, event, cuts)
    assert at_risk.tolist() == [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]]
    # the time beyond the last cut is censored there
    assert died.tolist() == [[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]]
    assert exposure.tolist() == [[0, 0, 0], [0.5, 0, 0], [1, 0, 0], [1, 1, 0.5], [1, 1, 1]]


def test_losses_are_the_likelihoods_written_out() -> None:
    from biofed.tasks._survival_torch import logistic_hazard_loss, pem_loss

    cuts = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    out = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)
    targets = {"time": torch.tensor([1.5, 0.5]), "event": torch.tensor([1.0, 0.0])}
    sig = torch.sigmoid
    # record 0: survives interval 0, dies in 1; record 1: censored in interval 0
    lh = -(
        torch.log(1 - sig(out[0, 0])) + torch.log(sig(out[0, 1])) + torch.log(1 - sig(out[1, 0]))
    )
    assert float(logistic_hazard_loss(out, targets, cuts)) == pytest.approx(float(lh) / 2)
    pem = -((-torch.exp(out[0, 0])) + (out[0, 1] - 0.5 * torch.exp(out[0, 1])))
    pem = pem + 0.5 * torch.exp(out[1, 0])
    assert float(pem_loss(out, targets, cuts)) == pytest.approx(float(pem) / 2)


@pytest.mark.parametrize("name", SURVIVAL_TASKS)
def test_training_learns_the_hazard_ratio(name: str) -> None:
    task = make_task(name, num_features=P, num_intervals=8, max_time=10.0)
    train, test = _surv(400, seed=1), _surv(300, seed=2)
    params = task.init_parameters(np.random.default_rng(0))
    before = task.evaluate(params, test, TrainContext(rng=np.random.default_rng(0))).metrics
    config = {"local_steps": 300, "batch_size": 64, "learning_rate": 0.05, "optimizer": "adam"}
    result = task.train(params, train, TrainContext(rng=np.random.default_rng(1), config=config))
    weight = result.parameters["linear.weight"].reshape(-1)
    assert weight[0] > 0.5
    assert np.all(np.abs(weight[1:]) < 0.3)
    after = task.evaluate(result.parameters, test, TrainContext(rng=np.random.default_rng(0)))
    assert after.metrics["c_index"] > 0.7
    assert after.metrics["integrated_brier_score"] < before["integrated_brier_score"]
    assert 0.0 < after.metrics["integrated_brier_score"] < 0.25


@pytest.mark.parametrize("name", SURVIVAL_TASKS)
def test_survival_curves_are_monotone_and_start_at_one(name: str) -> None:
    task = make_task(name, num_features=P, num_intervals=4, max_time=8.0, init="uniform")
    params = task.init_parameters(np.random.default_rng(3))
    x = _surv(10).features
    times = np.array([0.0, 1.0, 2.0, 3.0, 7.9, 8.0, 20.0])
    s = task.survival(x, params, times)  # type: ignore[attr-defined]
    assert np.allclose(s[:, 0], 1.0)
    assert np.all(np.diff(s, axis=1) <= 1e-12)
    assert np.allclose(s[:, -1], s[:, -2])  # flat beyond max_time


@pytest.mark.parametrize("name", SURVIVAL_TASKS)
def test_dp_sgd_runs(name: str) -> None:
    task = make_task(name, num_features=P, num_intervals=5, max_time=10.0)
    params = task.init_parameters(np.random.default_rng(0))
    config = {
        "local_steps": 5,
        "batch_size": 16,
        "learning_rate": 0.1,
        "dp_noise_multiplier": 1.0,
        "dp_max_grad_norm": 1.0,
        "dp_seeded": True,
    }
    result = task.train(params, _surv(), TrainContext(rng=np.random.default_rng(1), config=config))
    assert result.metrics["dp_steps"] == 5.0
    assert "train_loss" not in result.metrics
