"""One-process simulation: deterministic for a seed, consistent with federated evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.coordinator import EngineConfig
from biofed.datasets import load_tcga_brca
from biofed.simulation import recommended_settings, run_federation, simulate
from biofed.strategies import FedAvg, make_strategy
from biofed.tasks import CoxPHTask

TRAIN = {"local_steps": 20, "batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"}


@pytest.mark.parametrize("name", ["fedavg", "fedadam", "scaffold", "fedprox"])
def test_same_seed_same_report(name: str) -> None:
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    settings = recommended_settings(fed.name, name)

    def run(seed: int) -> dict[str, object]:
        config = {**settings.train_config, "local_steps": 20}
        strategy = make_strategy(name, train_config=config, **settings.strategy_kwargs)
        report = simulate(fed, task, strategy, rounds=2, seed=seed, baselines=False)
        out = report.to_dict()
        for r in out["rounds"]:  # type: ignore[attr-defined]
            r.pop("duration_s")
        return out

    first = run(42)
    assert first == run(42)
    assert first != run(43)


def test_report_has_baselines_and_federated_evaluation_matches_central() -> None:
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    report = simulate(fed, task, FedAvg(train_config=TRAIN), rounds=2, seed=1)
    methods = [b.method for b in report.baselines]
    assert methods == [f"local:center-{k}" for k in range(6)] + ["pooled"]
    assert set(report.federated.site_metrics) == set(fed.sites)
    final = report.history[-1].node_eval_metrics
    for site, value in report.federated.site_metrics.items():
        assert final[site]["c_index"] == pytest.approx(value)
    assert 0.5 < report.federated.mean_site_metric <= 1.0
    assert report.to_dict()["federated"]["method"] == "fedavg"


def test_run_federation_with_an_offline_minimum_fails_rounds_cleanly() -> None:
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    config = EngineConfig(rounds=1, seed=0, min_nodes=7, min_replies=7)
    result = run_federation(fed, task, FedAvg(train_config=TRAIN), config)
    assert result.history[0].failed is not None
    initial = task.init_parameters(np.random.default_rng(0))
    assert result.parameters.spec == initial.spec
