"""A simulated run and a networked run of the same job end with the same model.

The job trains with sample-level DP-SGD (seeded noise: a development node accepts it, and a
seeded run is reproducible) under SecAgg+. It runs twice:

1. networked: a real coordinator and three ``biofed node start`` processes over mutual TLS,
   each site reading its region of Fed-TCGA-BRCA from its kit folder;
2. simulated: :func:`biofed.simulation.simulate` with the same job over three virtual sites
   holding the same files' data in memory, with the same node configs (budget caps).

Every step a site takes is a function of (seed, round, site), and SecAgg+ sums in an
integer ring (in any order), so the two final models agree to float precision; so do the
ε each site reports.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from biofed.coordinator import JobSpec
from biofed.core import decode_parameters
from biofed.data import FederatedDataset, load_site_file
from biofed.simulation import load_node_config, simulate
from biofed.tasks import make_task

from .conftest import DATASET, Federation, events_of, format_events, wait_online, wait_terminal

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1", "center-2"]
CAPS = "\n[privacy.caps.tcga-brca]\nepsilon = 50.0\ndelta = 1e-3\n"


def _job() -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "sim-vs-network",
                "dataset": DATASET,
                "rounds": 2,
                "seed": 5,
                "min_nodes": 3,
                "min_replies": 2,
                "round_timeout": 300.0,
            },
            "task": {
                "name": "pem_torch",
                "num_features": 39,
                "num_intervals": 4,
                "max_time": 3650.0,
            },
            "strategy": {"name": "fedadam", "server_learning_rate": 0.5, "tau": 0.1},
            "train": {"local_steps": 3, "batch_size": 16, "learning_rate": 0.5, "optimizer": "sgd"},
            "evaluate": {"split": "test"},
            "privacy": {
                "mode": "sample",
                "target_epsilon": 8.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
                "seeded": True,
            },
            "secure_aggregation": {"clip_range": 8.0, "quantisation_step": 1e-6},
        }
    )


def _site_data(site_files: dict[str, Path]) -> FederatedDataset:
    """The sites' files as the nodes read them."""
    return FederatedDataset(
        name=DATASET,
        sites={
            site: load_site_file(
                site_files[site], target_columns={"event": "event", "time": "time"}
            )
            for site in SITES
        },
    )


def test_simulated_and_networked_runs_of_a_dp_secagg_job_end_with_the_same_model(
    make_federation: Callable[..., Federation], site_files: dict[str, Path]
) -> None:
    spec = _job()
    federation = make_federation(sites=SITES)
    for site in SITES:  # a node with a kit keeps a ledger: its budget for the dataset
        with (federation.kit(site) / "node.toml").open("a", encoding="utf-8") as toml:
            toml.write(CAPS)
    federation.start_coordinator()
    for site in SITES:
        federation.node_process(site)
    client = federation.control(timeout=30.0)
    wait_online(client, SITES, timeout=180)
    run_id = client.submit_run(spec.to_json()).run_id
    status = wait_terminal(client, run_id, timeout=600)
    events = events_of(client, run_id)
    assert status == "finished", format_events(events)
    assert any(e.kind == "secagg_reply" for e in events), format_events(events)
    networked = decode_parameters(client.download_result(run_id))

    report = simulate(
        _site_data(site_files),
        job=spec,
        baselines=False,
        node_configs={s: load_node_config(federation.kit(s) / "node.toml", s) for s in SITES},
    )
    simulated = report.parameters
    assert simulated is not None
    assert report.secure_aggregation
    assert [r.failed for r in report.history] == [None, None], report.events

    assert list(simulated) == list(networked)
    for name in networked:
        assert simulated[name].shape == networked[name].shape, name
        np.testing.assert_allclose(simulated[name], networked[name], rtol=1e-6, atol=1e-9)
    # Equal because both trained the same way, not because neither moved the model.
    initial = make_task(spec.task, **spec.task_options).init_parameters(
        np.random.default_rng(spec.seed)
    )
    assert any(not np.allclose(networked[n], initial[n], atol=1e-4) for n in networked)

    # Each site reports the same ε in both runs, labelled as a guarantee.
    assert report.privacy is not None
    sim_eps = {s: v["epsilon"] for s, v in report.privacy["sites"].items()}
    assert set(sim_eps) == set(SITES)
    assert {v["guarantee"] for v in report.privacy["sites"].values()} == {"exact"}
    net = [e for e in events if e.kind == "privacy_spent" and e.round == spec.rounds]
    net_eps = {e.node_id: float(e.message.split()[0].split("=")[1]) for e in net}
    assert net_eps.keys() == sim_eps.keys(), format_events(events)
    for site, eps in net_eps.items():
        assert sim_eps[site] == pytest.approx(eps, rel=1e-9)
