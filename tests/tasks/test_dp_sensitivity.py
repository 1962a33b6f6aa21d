"""Empirical per-record sensitivity of DP-SGD's clipped batch gradient, for every torch task.

DP-SGD's accounting assumes that adding or removing one record moves a step's clipped sum
``Σ_{i ∈ B} clip_C(g_i)`` by at most ``factor · C`` in L2 (factor 1 for losses that are sums
of per-record terms, ``dp_record_coupling = "independent"``; the declared
``dp_sensitivity_factor(b)`` for ``"bounded"``). These tests compute the clipped sum exactly
as :mod:`biofed.tasks._dpsgd` does (Opacus per-example gradients, ``clip_factors``,
``clipped_sum``) for many random data sets, parameters, batches and records, with and
without the record, and check the declared bound. For the Cox model, which declares no
guarantee, they show why: the change far exceeds C.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from biofed.core import ParameterSet
from biofed.data import Dataset
from biofed.tasks import make_task

if TYPE_CHECKING:
    import torch
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("opacus")

pytestmark = [
    pytest.mark.torch,
    pytest.mark.slow,
    # Opacus's hooks need only the outputs' gradients; torch warns that the inputs need none
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
]

P = 5
CLIP = 1.0
# float32 sums of up to ~40 vectors of norm ≤ C: rounding stays far below this
TOLERANCE = 1e-4


def _data(rng: np.random.Generator, n: int, kind: str, scale: float) -> Dataset:
    """Features at ``scale`` (so that some gradients are clipped and some are not)."""
    X = (rng.normal(size=(n, P)) * scale).astype(np.float32)
    targets: dict[str, Any]
    if kind == "label":
        targets = {"label": rng.integers(0, 2, n).astype(np.int64)}
    else:
        targets = {
            "time": np.round(rng.exponential(5.0, n), 0),  # ties, zeros, some beyond max_time
            "event": rng.integers(0, 2, n).astype(np.float64),
        }
    return Dataset(
        name="d", features=X, feature_names=tuple(f"x{i}" for i in range(P)), targets=targets
    )


def clipped_batch_sum(
    task: Any, params: ParameterSet, data: Dataset, rows: np.ndarray
) -> np.ndarray:
    """``Σ_{i ∈ rows} clip_C(g_i)`` over all trainable parameters, as a DP-SGD step sums it."""
    from biofed.tasks import _dpsgd

    with torch.random.fork_rng(devices=[]):
        module = task._build(0)
        task._load(module, params)
        module.train()
        weights = [p for p in module.parameters() if p.requires_grad]
        gsm = _dpsgd.grad_sample_module(module)
        try:
            index = torch.from_numpy(rows)
            X = torch.from_numpy(np.array(data.features))[index]
            targets = {k: torch.from_numpy(np.array(v))[index] for k, v in data.targets.items()}
            gsm.zero_grad(set_to_none=True)
            task.loss_fn(gsm(X), targets).backward()
            per_example = _dpsgd.per_example_gradients(weights, int(rows.size))
            factors, _ = _dpsgd.clip_factors(per_example, CLIP)
            summed = _dpsgd.clipped_sum(per_example, factors)
        finally:
            gsm.cleanup()
    return torch.cat([s.reshape(-1) for s in summed]).double().numpy()


def _max_change(make: Callable[[], Any], kind: str, trials: int, seed: int) -> tuple[float, float]:
    """The largest ‖Δ clipped sum‖ / C over random trials, and the declared factor then."""
    rng = np.random.default_rng(seed)
    task = make()
    worst, worst_ratio = 0.0, 0.0
    for _ in range(trials):
        n = int(rng.integers(2, 40))
        scale = float(rng.choice([0.1, 1.0, 10.0]))
        data = _data(rng, n + 1, kind, scale)
        # parameters large enough to clip, small enough that exp(score) stays finite
        size = float(rng.choice([0.1, 1.0, 3.0])) / max(1.0, scale)
        params = ParameterSet(
            {
                k: (rng.normal(size=v.shape) * size).astype(v.dtype)
                for k, v in task.init_parameters(rng).items()
            }
        )
        batch = np.flatnonzero(rng.random(n) < rng.uniform(0.1, 1.0))  # a Poisson batch
        record = n  # the extra record, inserted at a random position
        with_record = np.insert(batch, int(rng.integers(0, batch.size + 1)), record)
        without = clipped_batch_sum(task, params, data, batch) if batch.size else 0.0
        change = float(np.linalg.norm(clipped_batch_sum(task, params, data, with_record) - without))
        coupling = type(task).dp_record_coupling
        factor = task.dp_sensitivity_factor(int(batch.size)) if coupling == "bounded" else 1.0
        worst = max(worst, change / CLIP)
        worst_ratio = max(worst_ratio, change / (factor * CLIP))
    return worst, worst_ratio


SURVIVAL = {"num_intervals": 6, "max_time": 12.0}


@pytest.mark.parametrize(
    ("name", "kwargs", "kind"),
    [
        ("logistic_regression_torch", {}, "label"),
        ("logistic_hazard_torch", SURVIVAL, "survival"),
        ("pem_torch", SURVIVAL, "survival"),
    ],
)
@pytest.mark.parametrize("seed", range(3))
def test_declared_sensitivity_holds(
    name: str, kwargs: dict[str, float], kind: str, seed: int
) -> None:
    task = make_task(name, num_features=P, **kwargs)
    assert type(task).dp_record_coupling in ("independent", "bounded")
    worst, ratio = _max_change(lambda: make_task(name, num_features=P, **kwargs), kind, 60, seed)
    assert ratio <= 1.0 + TOLERANCE
    assert worst > 0.5  # the trials did reach the bound's scale: the test can fail


def test_cox_declares_no_guarantee_and_its_change_exceeds_c() -> None:
    task = make_task("cox_ph_torch", num_features=P)
    assert type(task).dp_record_coupling == "none"
    assert not hasattr(task, "dp_sensitivity_factor")
    worst, _ = _max_change(lambda: make_task("cox_ph_torch", num_features=P), "survival", 60, 0)
    assert worst > 1.0 + TOLERANCE  # random batches already exceed C


def test_cox_change_grows_with_the_batch() -> None:
    """The docstring's construction: b events with equal features and scores, then a record
    with the longest time and a dominant score, which enters every risk set. Every share with
    a positive coefficient ``−1 + Σ_{k ≥ j} 1/k`` flips to ``−1``: each moves by 2C."""
    b = 30
    x = np.zeros((b + 1, P), dtype=np.float32)
    x[:, 0] = 10.0
    x[b, 0] = 100.0  # the added record's score dominates every risk set
    data = Dataset(
        name="d",
        features=x,
        feature_names=tuple(f"x{i}" for i in range(P)),
        targets={"time": np.arange(1.0, b + 2.0), "event": np.ones(b + 1)},
    )
    task = make_task("cox_ph_torch", num_features=P)
    weight = np.zeros((1, P), dtype=np.float32)
    weight[0, 0] = 0.1
    params = ParameterSet({"weight": weight, "bias": np.zeros(1, dtype=np.float32)})
    rows = np.arange(b)
    change = clipped_batch_sum(task, params, data, np.append(rows, b)) - clipped_batch_sum(
        task, params, data, rows
    )
    assert float(np.linalg.norm(change)) > 10 * CLIP


def test_the_harness_catches_a_coupled_loss_claimed_as_independent() -> None:
    """A loss normalised by the batch's own mean couples records: the check must see it."""
    from biofed.tasks import LogisticRegressionTorchTask

    class Coupled(LogisticRegressionTorchTask):
        def __init__(self, num_features: int) -> None:
            super().__init__(num_features)
            base = self.loss_fn

            def loss(outputs: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
                return base(outputs - outputs.mean(), targets)

            self.loss_fn = loss

    _, ratio = _max_change(lambda: Coupled(P), "label", 60, 0)
    assert ratio > 1.0 + TOLERANCE
