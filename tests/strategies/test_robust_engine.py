"""Robust aggregation in the real round engine on Fed-TCGA-BRCA's Cox task, with one of the
six sites lying: it sends a scaled, sign-flipped update (model replacement ``x − 50·Δ``),
claims 10¹⁵ examples, and reports a C-index of 0.99996 — the attack of issue 15."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, RoundEngine, RunResult
from biofed.core import Instruction, MessageKind, NodeInfo, ParameterSet, Reply
from biofed.datasets import load_tcga_brca
from biofed.node import SiteNode
from biofed.simulation import evaluate_everywhere
from biofed.strategies import FedAvg, Robust, Strategy
from biofed.tasks import CoxPHTask
from biofed.transport import InMemoryTransport

TRAIN = {"local_steps": 20, "batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"}
LIAR = "center-0"


def lie(instruction: Instruction, honest: Reply) -> Reply:
    if instruction.kind is MessageKind.TRAIN and honest.parameters is not None:
        x, local = instruction.parameters, honest.parameters
        assert x is not None
        replaced = {k: (x[k] - 50 * (local[k] - x[k])).astype(x[k].dtype) for k in x}
        return dataclasses.replace(honest, parameters=ParameterSet(replaced), num_examples=10**15)
    if instruction.kind is MessageKind.EVALUATE:
        claims = {**honest.metrics, "c_index": 0.99996}
        return dataclasses.replace(honest, metrics=claims, num_examples=10**15)
    return honest


def run(strategy: Strategy, *, attacked: bool) -> tuple[RunResult, float]:
    """Three rounds over six real site nodes; the pooled test C-index of the final model."""
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39)
    nodes = {site: SiteNode(site, task, data) for site, data in fed.sites.items()}
    handlers: dict[str, Callable[[Instruction], Reply]] = {s: n.handle for s, n in nodes.items()}
    info = {s: NodeInfo(node_id=s, num_examples=n.num_train_examples) for s, n in nodes.items()}
    if attacked:
        honest_handle = nodes[LIAR].handle
        handlers[LIAR] = lambda instruction: lie(instruction, honest_handle(instruction))
        info[LIAR] = NodeInfo(node_id=LIAR, num_examples=10**15)  # declared at registration
    transport = InMemoryTransport(handlers, info=info)
    engine = RoundEngine(strategy, transport, EngineConfig(rounds=3, seed=0))
    with transport:
        result = engine.run(task.init_parameters(np.random.default_rng(0)))
    pooled = evaluate_everywhere(task, result.parameters, fed, method="check").pooled_metric
    return result, pooled


@cache
def fedavg(attacked: bool) -> tuple[RunResult, float]:
    return run(FedAvg(train_config=TRAIN), attacked=attacked)


def honest_loss(result: RunResult) -> float:
    final = result.history[-1].node_eval_metrics
    return float(np.mean([m["cox_loss"] for s, m in final.items() if s != LIAR]))


def test_the_attack_ruins_fedavg() -> None:
    (clean, clean_c), (attacked, attacked_c) = fedavg(False), fedavg(True)
    assert clean_c > 0.7
    assert attacked_c <= 0.55  # the goal for an undefended 1-of-6 scaling attack
    assert honest_loss(attacked) > 10 * honest_loss(clean)
    assert attacked.history[-1].eval_metrics["c_index"] == pytest.approx(0.99996)


RULES = {
    "median": {},
    "trimmed_mean": {"f": 1},
    "krum": {"f": 1},
    "multi_krum": {"f": 1},
    "geometric_median": {},
    "centered_clipping": {"cc_tau": 0.2},
    "norm_bound": {"norm_bound": 0.2},  # with capped weights (below)
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_robust_aggregation_withstands_it(rule: str) -> None:
    def strategy() -> Robust:
        # norm bounding bounds the size of a liar's update, not its weight: cap that too
        cap = 100 if rule == "norm_bound" else None
        inner = FedAvg(train_config=TRAIN, max_weight=cap)
        return Robust(inner, rule, **RULES[rule])  # type: ignore[arg-type]

    clean, clean_c = run(strategy(), attacked=False)
    result, pooled = run(strategy(), attacked=True)
    # Far from FedAvg's ruin, and close to what the same rule reaches without the attack.
    assert pooled >= max(0.65, clean_c - 0.03)
    assert honest_loss(result) < 1.5 * honest_loss(clean)
    # The run's reported C-index stays within the honest sites' own values.
    final = result.history[-1].node_eval_metrics
    honest_values = [m["c_index"] for s, m in final.items() if s != LIAR]
    assert result.history[-1].eval_metrics["c_index"] <= max(honest_values) + 1e-12
    # Every update's fate is a run event the engine recorded.
    kinds = {e.kind for e in result.events if e.node_id == LIAR}
    assert kinds
    assert kinds <= {"update_accepted", "update_rejected", "update_downweighted", "update_clipped"}
    expected = {"krum": "update_rejected", "multi_krum": "update_rejected"}
    expected |= {"geometric_median": "update_downweighted", "norm_bound": "update_clipped"}
    expected |= {"centered_clipping": "update_clipped"}
    if rule in expected:
        assert expected[rule] in kinds
