"""The strategies' default settings, pinned with the reason for each (issue 13, point 7).

``benchmarks/defaults_real_tables.py`` measures them on real multi-site tables; these tests
pin the values and the property each was chosen for, so a change has to argue with both.
"""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import MessageKind, ParameterSet, Reply
from biofed.simulation import recommended_settings
from biofed.strategies import FedAdagrad, FedAdam, FedYogi, Strategy, make_strategy


def _one_round(strategy: Strategy, delta: list[float]) -> np.ndarray:
    """The server's step after one round whose mean site update is ``delta`` (from 0)."""
    x = ParameterSet({"w": np.zeros(len(delta), dtype=np.float64)})
    agg = strategy.begin_train_aggregation(1, x, strategy.init_state(x), 1)
    agg.add(
        Reply(
            run_id="r",
            round=1,
            node_id="a",
            kind=MessageKind.TRAIN,
            parameters=ParameterSet({"w": np.asarray(delta, dtype=np.float64)}),
            num_examples=10,
        )
    )
    return np.asarray(agg.finish().parameters["w"], dtype=np.float64)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_defaults_are_reddi_et_al(cls: type[FedAdam]) -> None:
    # Reddi et al. 2021 (§5, App. D): β₁ = 0.9, β₂ = 0.99, τ = 1e-3; η = 0.1 as Flower ships.
    s = cls()
    assert (s.server_learning_rate, s.beta_1, s.beta_2, s.tau) == (0.1, 0.9, 0.99, 1e-3)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_fedadam_default_first_step_is_at_most_eta(cls: type[FedAdam]) -> None:
    # With β₂ = 0.999 (Adam's centralised value) and no bias correction, the first round moved
    # every coordinate by η·0.1/√0.001 ≈ 3.2·η whatever its size: the swing the issue saw.
    step = _one_round(cls(), [1.0, -0.5, 0.05])
    assert np.all(np.abs(step) <= 0.1 * 1.0001)
    assert np.all(np.sign(step) == [1, -1, 1])


def test_generic_presets_are_fedavg_like_for_small_updates() -> None:
    # τ = 0.1 (FedAdam/FedYogi) and η = τ = 1 (FedAdagrad): a small update is applied in
    # proportion to its size, (1 − β₁)·Δ, not as a sign step of η; a large one is capped.
    for name in ("fedadam", "fedyogi", "fedadagrad"):
        settings = recommended_settings("my-table", name)
        strategy = make_strategy(
            name, train_config=settings.train_config, **settings.strategy_kwargs
        )
        small = _one_round(strategy, [1e-3, -1e-4])
        np.testing.assert_allclose(small, [1e-4, -1e-5], rtol=0.02)
        large = _one_round(strategy, [1.0, 10.0])
        assert large[1] < 0.1  # adaptive above the scale: capped, and
        assert large[1] / large[0] < 2  # a 10× larger update moves < 2× further
    # FedAdagrad's v has no (1 − β₂) factor: η and τ 10× FedAdam's give it the same step.
    adam = recommended_settings("my-table", "fedadam").strategy_kwargs
    adagrad = recommended_settings("my-table", "fedadagrad").strategy_kwargs
    scale = 1 / np.sqrt(1 - 0.99)
    assert adagrad["tau"] == pytest.approx(adam["tau"] * scale)
    assert adagrad["server_learning_rate"] == pytest.approx(adam["server_learning_rate"] * scale)


def test_generic_fedavgm_and_scaffold_presets() -> None:
    # FedAvgM: effective server step η/(1 − β) = 1, FedAvg's (Hsu et al. 2019).
    kw = recommended_settings("my-table", "fedavgm").strategy_kwargs
    assert kw["server_learning_rate"] / (1 - kw["server_momentum"]) == pytest.approx(1.0)
    # SCAFFOLD returns the last local SGD iterate; its noise grows with the step size.
    assert recommended_settings("my-table", "scaffold").train_config["learning_rate"] == 0.1
    # Fed-TCGA-BRCA keeps its own tuned values.
    assert recommended_settings("tcga-brca", "scaffold").train_config["learning_rate"] == 0.3
