"""The node's plan follows the task's declared record coupling: exact, bounded (noise scaled
by the proven factor, accounting unchanged) or refused; client-mode figures name their
trust assumption."""

from __future__ import annotations

import json

import pytest

from biofed.core import ConfigurationError, PolicyViolation
from biofed.node._privacy import for_task, plan_round
from biofed.privacy import DPSettings, calibrate_noise
from biofed.tasks import record_coupling, sensitivity_factor


def _config(mode: str = "sample", **extra: object) -> dict[str, object]:
    table: dict[str, object] = {"mode": mode, "delta": 1e-5, "max_grad_norm": 1.0}
    if mode == "sample":
        table["target_epsilon"] = 3.0
    else:
        table["noise_multiplier"] = 1.2
    table.update(extra)
    dp = DPSettings.from_table(table, rounds=4, min_replies=3)
    config: dict[str, object] = {**dp.to_config(), "local_steps": 10, "batch_size": 20}
    if mode == "client":
        config["dp.clip_norm"] = 1.0
        if dp.noise == "distributed":
            config["dp.noise_std_share"] = 0.5
    return config


def test_a_bounded_task_gets_noise_scaled_by_its_factor_and_the_same_accounting() -> None:
    plan = plan_round(_config(), 200)  # type: ignore[arg-type]
    assert plan is not None
    z = calibrate_noise(3.0, 1e-5, 0.1, 40, "rdp")
    exact = for_task(plan, "independent", None, heuristic_allowed=False)
    bounded = for_task(plan, "bounded", 4.0, heuristic_allowed=False)
    assert exact.task_config["dp_noise_multiplier"] == pytest.approx(z)
    assert bounded.task_config["dp_noise_multiplier"] == pytest.approx(4.0 * z)
    assert bounded.event == exact.event  # the accountant counts z in units of k·C
    assert bounded.planned_epsilon() == pytest.approx(exact.planned_epsilon())
    assert (exact.guarantee, bounded.guarantee) == ("exact", "bounded")
    assert json.loads(bounded.mechanism())["sensitivity"] == 4.0
    for factor in (None, 0.5, float("inf")):
        with pytest.raises(PolicyViolation, match="factor"):
            for_task(plan, "bounded", factor, heuristic_allowed=False)


def test_a_task_without_a_guarantee_is_refused_unless_heuristics_are_accepted() -> None:
    plan = plan_round(_config(), 200)  # type: ignore[arg-type]
    assert plan is not None
    with pytest.raises(PolicyViolation, match="sample-level DP refused"):
        for_task(plan, "none", None, heuristic_allowed=False)
    heuristic = for_task(plan, "none", None, heuristic_allowed=True)
    assert heuristic.guarantee == "heuristic"
    assert heuristic.task_config == plan.task_config


def test_client_mode_figures_name_what_they_rest_on() -> None:
    central = plan_round(_config("client"), 200)  # type: ignore[arg-type]
    distributed = plan_round(_config("client", noise="distributed"), 200)  # type: ignore[arg-type]
    assert central is not None
    assert distributed is not None
    # the task's declaration does not matter: the node clips and noises itself
    assert for_task(central, "none", None, heuristic_allowed=False) is central
    assert central.trust == "trusts the coordinator to add the noise"
    assert distributed.trust == "rests on at least 3 honest sites adding their noise share"
    sample = plan_round(_config(), 200)  # type: ignore[arg-type]
    assert sample is not None
    assert "each site adds its own noise" in sample.trust


class _Bounded:
    dp_record_coupling = "bounded"

    def __init__(self, factor: object) -> None:
        self.factor = factor

    def dp_sensitivity_factor(self, batch_size: int) -> object:
        return self.factor


def test_task_declarations_are_validated() -> None:
    assert record_coupling(object()) == "none"  # declaring nothing claims nothing
    assert sensitivity_factor(_Bounded(2.5), 8) == 2.5
    for bad in (0.5, float("nan"), True, "3"):
        with pytest.raises(ConfigurationError, match="dp_sensitivity_factor"):
            sensitivity_factor(_Bounded(bad), 8)

    class Odd:
        dp_record_coupling = "mostly"

    with pytest.raises(ConfigurationError, match="dp_record_coupling"):
        record_coupling(Odd())

    class NoFactor:
        dp_record_coupling = "bounded"

    with pytest.raises(ConfigurationError, match="without a dp_sensitivity_factor"):
        record_coupling(NoFactor())
    from biofed.tasks import LogisticRegressionTask

    assert record_coupling(LogisticRegressionTask(num_features=3)) == "independent"
