"""Simulating a job: the virtual sites are real site nodes (DP plan, ledger, SecAgg+, output
control) driven by the coordinator's engine, and the report shows each site's ε."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.coordinator import JobSpec
from biofed.core import ConfigurationError
from biofed.datasets import load_tcga_brca
from biofed.node import NodeConfig
from biofed.simulation import load_node_config, simulate
from biofed.strategies import FedAvg
from biofed.tasks import CoxPHTask

SITES = [f"center-{k}" for k in range(6)]


def _job(*, seeded: bool = True, secure: bool = True, **run: Any) -> JobSpec:
    tables: dict[str, Any] = {
        "run": {"name": "sim", "dataset": "tcga-brca", "rounds": 2, "seed": 3, **run},
        "task": {"name": "pem_torch", "num_features": 39, "num_intervals": 4, "max_time": 3650.0},
        "strategy": {"name": "fedavg"},
        "train": {"local_steps": 2, "batch_size": 16, "learning_rate": 0.5, "optimizer": "sgd"},
        "evaluate": {"split": "test"},
        "privacy": {
            "mode": "sample",
            "target_epsilon": 4.0,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
            "seeded": seeded,
        },
    }
    tables["run"].setdefault("min_nodes", 2)
    tables["run"].setdefault("min_replies", 2)
    if secure:
        tables["secure_aggregation"] = {"clip_range": 8.0, "quantisation_step": 1e-6}
    return JobSpec.from_mapping(tables)


def _models_equal(a: Any, b: Any) -> bool:
    return list(a) == list(b) and all(np.array_equal(a[n], b[n]) for n in a)


@pytest.fixture(scope="module")
def dp_secagg_report() -> Any:
    return simulate(load_tcga_brca(), job=_job(), baselines=False)


@pytest.mark.slow
def test_dp_secagg_job_runs_secure_rounds_over_every_site(dp_secagg_report: Any) -> None:
    report = dp_secagg_report
    assert report.secure_aggregation
    assert [r.failed for r in report.history] == [None, None], report.events
    for record in report.history:  # the coordinator only ever held the sum of six updates
        assert record.train_metrics["secagg.survivors"] == 6.0
        assert record.num_replies == 6
    assert set(report.federated.site_metrics) == set(SITES)


@pytest.mark.slow
def test_report_shows_each_sites_epsilon_with_its_label(dp_secagg_report: Any) -> None:
    privacy = dp_secagg_report.privacy
    assert privacy is not None
    assert set(privacy["sites"]) == set(SITES)
    for spend in privacy["sites"].values():
        # each site calibrated its noise for the job's target over all its rounds
        assert 0.0 < spend["epsilon"] <= 4.0 * (1 + 1e-6)
        assert spend["epsilon"] > 2.0
        assert spend["delta"] == 1e-5
        assert spend["guarantee"] == "exact"
        assert spend["round"] == 2.0
    assert privacy["label"] == "exact"
    assert privacy["guarantee"]["target_epsilon"] == 4.0
    out = dp_secagg_report.to_dict()
    assert out["privacy"]["sites"]["center-0"]["guarantee"] == "exact"
    assert out["secure_aggregation"] is True


@pytest.mark.slow
def test_seeded_dp_is_reproducible_and_csprng_noise_is_not(dp_secagg_report: Any) -> None:
    again = simulate(load_tcga_brca(), job=_job(), baselines=False)
    assert _models_equal(again.parameters, dp_secagg_report.parameters)
    fresh = [
        simulate(load_tcga_brca(), job=_job(seeded=False, secure=False), baselines=False)
        for _ in range(2)
    ]
    assert not _models_equal(fresh[0].parameters, fresh[1].parameters)


@pytest.mark.slow
def test_ledger_dir_keeps_budget_across_rehearsals_and_caps_refuse(tmp_path: Path) -> None:
    """A cap in a site's node config is enforced by that site's real ledger: the first
    rehearsal spends most of it, the second is refused there (the others go on)."""
    node_toml = tmp_path / "node.toml"
    node_toml.write_text(
        '[datasets.tcga-brca]\npath = "not-read.csv"\n'
        '[privacy]\nledger = "real-site-ledger.db"\n'
        "[privacy.caps.tcga-brca]\nepsilon = 6.0\ndelta = 1e-4\n",
        encoding="utf-8",
    )
    configs = {"center-0": load_node_config(node_toml, "center-0")}
    ledgers = tmp_path / "ledgers"
    job = _job(secure=False)
    first = simulate(
        load_tcga_brca(), job=job, baselines=False, node_configs=configs, ledger_dir=ledgers
    )
    assert "center-0" in first.privacy["sites"]  # type: ignore[index]
    assert (ledgers / "center-0.db").is_file()
    assert not (tmp_path / "real-site-ledger.db").exists()  # a rehearsal never spends it
    second = simulate(
        load_tcga_brca(), job=job, baselines=False, node_configs=configs, ledger_dir=ledgers
    )
    assert second.privacy is not None
    assert "center-0" not in second.privacy["sites"]
    assert set(second.privacy["sites"]) == set(SITES) - {"center-0"}
    refused = [e for e in second.events if "center-0" in e and "budget" in e.lower()]
    assert refused, second.events
    # Without the ledger folder every rehearsal starts from a fresh budget.
    third = simulate(load_tcga_brca(), job=job, baselines=False, node_configs=configs)
    assert "center-0" in third.privacy["sites"]  # type: ignore[index]


@pytest.mark.slow
def test_plain_job_matches_shortcut_behaviour() -> None:
    """A job without DP or SecAgg runs over real nodes and reports no privacy."""
    job = JobSpec.from_mapping(
        {
            "run": {"name": "plain", "dataset": "tcga-brca", "rounds": 1, "seed": 1},
            "task": {"name": "cox_ph", "num_features": 39},
            "strategy": {"name": "fedavg"},
            "train": {"local_steps": 5, "batch_size": 8, "learning_rate": 0.01},
        }
    )
    report = simulate(load_tcga_brca(), job=job)
    assert report.privacy is None
    assert not report.secure_aggregation
    assert [b.method for b in report.baselines][-1] == "pooled"
    final = report.history[-1].node_eval_metrics
    for site, value in report.federated.site_metrics.items():
        assert final[site]["c_index"] == pytest.approx(value)


def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    with pytest.raises(ConfigurationError, match="not both"):
        simulate(fed, task, FedAvg(), rounds=1, seed=0, job=_job())
    with pytest.raises(ConfigurationError, match="needs a job"):
        simulate(fed, task)
    with pytest.raises(ConfigurationError, match="backend must be one of"):
        simulate(fed, job=_job(secure=False), backend="dask", baselines=False)
    with pytest.raises(ConfigurationError, match="min_nodes"):
        simulate(fed, job=_job(min_nodes=7, min_replies=2), baselines=False)
    with pytest.raises(ConfigurationError, match="sites the dataset does not have"):
        simulate(
            fed, job=_job(), node_configs={"elsewhere": NodeConfig(datasets={})}, baselines=False
        )
    governed = tmp_path / "governed.toml"
    governed.write_text(
        '[governance]\nagreements_dir = "a"\ncertificates_dir = "c"\napprovals = "p.json"\n'
        'registry = "r.json"\nbundles_dir = "b"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError, match=r"\[governance\]"):
        load_node_config(governed, "center-0")
