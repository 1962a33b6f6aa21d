"""Robust aggregation under SecAgg+ in the real runtime (engine ↔ NodeApp, one process):
norm bounding runs on the released mean and its check becomes a run event; rules that need
single updates fail the round with a message naming the rule."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, JobSpec, RoundEngine, RunResult
from biofed.core import Instruction, Reply
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import FedAvg, Robust, Strategy
from biofed.tasks import CoxPHTask
from biofed.transport import InMemoryTransport

SITES = ("center-0", "center-1", "center-2", "center-3")
SECURE = SecureAggregationSettings(clip_range=4.0, quantisation_step=1e-6, max_weight=1000)
JOB = {
    "run": {"name": "s", "dataset": "brca", "rounds": 1, "seed": 3, "min_nodes": 4},
    "task": {"name": "cox_ph", "num_features": 39},
    "strategy": {"name": "fedavg"},
    "train": {"local_steps": 5, "batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeApp]:
    root = tmp_path_factory.mktemp("robust-secure")
    Consortium.create(root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=list(SITES))
    paths = write_site_files(load_tcga_brca(), root / "data")
    out = {}
    for site in SITES:
        toml = root / f"{site}.toml"
        toml.write_text(
            f'[datasets.brca]\npath = "{paths[site]}"\nformat = "csv"\n'
            'split_column = "split"\ntargets = { event = "event", time = "time" }\n'
        )
        out[site] = NodeApp(site, NodeConfig.from_toml(toml), kit=load_kit(root / "c" / site))
    return out


def run(apps: dict[str, NodeApp], strategy: Strategy, secure: bool) -> RunResult:
    spec = JobSpec.from_mapping(JOB)
    extra = dict(spec.instruction_config())
    if secure:
        extra.update(SECURE.to_config())
    engine = RoundEngine(
        strategy,
        InMemoryTransport({n: a.handle for n, a in apps.items()}),
        EngineConfig(rounds=1, min_nodes=4, min_replies=2, seed=3, round_timeout=60.0),
        run_id="run-rs",
        instruction_config=extra,
        secure_aggregation=SECURE if secure else None,
    )
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    return engine.run(x0)


def test_norm_bound_runs_on_the_secure_mean_and_reports_its_check(
    apps: dict[str, NodeApp],
) -> None:
    inner = JobSpec.from_mapping(JOB).build_strategy()
    plain = run(apps, Robust(inner, "norm_bound", norm_bound=100.0), secure=False)
    secure = run(apps, Robust(inner, "norm_bound", norm_bound=100.0), secure=True)
    assert secure.history[0].failed is None, secure.history[0]
    for name in plain.parameters:  # no update reaches the bound: the plain weighted mean
        np.testing.assert_allclose(secure.parameters[name], plain.parameters[name], atol=2e-6)
    checks = [e for e in secure.events if e.node_id == "secure-aggregate"]
    assert [e.kind for e in checks] == ["update_accepted"]
    assert "within the bound 100" in json.loads(checks[0].message)["reason"]


def test_a_rule_that_needs_single_updates_fails_the_secure_round_naming_it(
    apps: dict[str, NodeApp],
) -> None:
    inner = JobSpec.from_mapping(JOB).build_strategy()
    result = run(apps, Robust(inner, "krum"), secure=True)
    failed = result.history[0].failed
    assert failed is not None
    assert "robust-krum cannot run under secure aggregation" in failed


def test_without_max_weight_secure_sites_weigh_equally(apps: dict[str, NodeApp]) -> None:
    """Robust counts every site once when no max_weight bounds the example counts, and
    tells SecAgg+ so (``weighted`` False → "equal" weighting): the secure model is the plain
    run's equal-weight mean, not the example-weighted one of a capped strategy."""
    inner = JobSpec.from_mapping(JOB).build_strategy()
    capped = JobSpec.from_mapping(
        {**JOB, "strategy": {"name": "fedavg", "max_weight": 1000}}
    ).build_strategy()
    secure = run(apps, Robust(inner, "norm_bound", norm_bound=100.0), secure=True)
    unweighted = FedAvg(weighted=False, train_config=inner.train_config, min_train_nodes=2)
    equal = run(apps, Robust(unweighted, "norm_bound", norm_bound=100.0), secure=False)
    examples = run(apps, Robust(capped, "norm_bound", norm_bound=100.0), secure=True)
    for name in secure.parameters:
        np.testing.assert_allclose(secure.parameters[name], equal.parameters[name], atol=2e-6)
    gap = max(
        float(np.max(np.abs(secure.parameters[n] - examples.parameters[n])))
        for n in secure.parameters
    )
    assert gap > 1e-4  # the sites' sizes differ (TCGA-BRCA): weighting shows


def test_a_site_that_skips_the_clip_gets_the_round_rejected_not_failed(
    apps: dict[str, NodeApp],
) -> None:
    """center-0 drops the ``robust.max_update_norm`` directive before its real node runs
    (a malicious site skipping the clip); the others clip to M = 10⁻³ before masking. The
    released mean exceeds M, so the round keeps x0 with an ``update_rejected`` event on
    ``secure-aggregate`` naming the norms — a decision, not a failed round."""
    inner = JobSpec.from_mapping(JOB).build_strategy()

    def skips_the_clip(instruction: Instruction) -> Reply:
        bare = dataclasses.replace(instruction.directives, max_update_norm=None)
        return apps["center-0"].handle(dataclasses.replace(instruction, directives=bare))

    handlers = {n: a.handle for n, a in apps.items()}
    handlers["center-0"] = skips_the_clip
    engine = RoundEngine(
        Robust(inner, "norm_bound", norm_bound=1e-3),
        InMemoryTransport(handlers),
        EngineConfig(rounds=1, min_nodes=4, min_replies=2, seed=3, round_timeout=60.0),
        run_id="run-rs",
        instruction_config={**JobSpec.from_mapping(JOB).instruction_config(), **SECURE.to_config()},
        secure_aggregation=SECURE,
    )
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    result = engine.run(x0)
    assert result.history[0].failed is None
    for name in x0:
        np.testing.assert_array_equal(result.parameters[name], x0[name])
    checks = [e for e in result.events if e.node_id == "secure-aggregate"]
    assert [e.kind for e in checks] == ["update_rejected"]
    decision = json.loads(checks[0].message)
    assert decision["action"] == "rejected"
    assert decision["weight"] == 0.0
    assert "> the bound 0.001" in decision["reason"]
