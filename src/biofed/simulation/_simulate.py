"""Simulate a federation in one process: virtual sites, in-memory transport, real engine.

Besides the federated run, a simulation trains the same task on each site alone
(local-only) and on all training data pooled (centralised), on the same split, so a table
can show what federation buys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from biofed.coordinator import EngineConfig, EngineListener, RoundEngine, RoundRecord, RunResult
from biofed.core import NodeInfo, ParameterSet, Scalar
from biofed.data import Dataset, FederatedDataset
from biofed.node import SiteNode
from biofed.strategies import Strategy
from biofed.tasks import Task, TrainContext
from biofed.transport import InMemoryTransport


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodResult:
    """One model's test metric on every site, their mean, and on the pooled test set."""

    method: str
    site_metrics: Mapping[str, float]
    mean_site_metric: float
    pooled_metric: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes ``None``)."""
        return {
            "method": self.method,
            "site_metrics": {k: _json_float(v) for k, v in self.site_metrics.items()},
            "mean_site_metric": _json_float(self.mean_site_metric),
            "pooled_metric": _json_float(self.pooled_metric),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationReport:
    """Everything ``biofed simulate`` shows."""

    dataset: str
    task: str
    metric: str
    strategy: str
    seed: int
    settings: Mapping[str, Scalar]
    federated: MethodResult
    baselines: tuple[MethodResult, ...] = ()
    history: tuple[RoundRecord, ...] = ()
    events: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the whole report."""
        return {
            "dataset": self.dataset,
            "task": self.task,
            "metric": self.metric,
            "strategy": self.strategy,
            "seed": self.seed,
            "settings": dict(self.settings),
            "federated": self.federated.to_dict(),
            "baselines": [b.to_dict() for b in self.baselines],
            "rounds": [
                {
                    "round": r.round,
                    "replies": r.num_replies,
                    "rejected": r.num_rejected,
                    "train_metrics": {k: _json_float(v) for k, v in r.train_metrics.items()},
                    "eval_metrics": {k: _json_float(v) for k, v in r.eval_metrics.items()},
                    "failed": r.failed,
                    "duration_s": r.duration_s,
                }
                for r in self.history
            ],
            "events": list(self.events),
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def run_federation(
    fed: FederatedDataset,
    task: Task,
    strategy: Strategy,
    config: EngineConfig,
    *,
    initial: ParameterSet | None = None,
    listener: EngineListener | None = None,
    run_id: str = "simulation",
) -> RunResult:
    """Run ``strategy`` over one virtual node per site of ``fed`` and return the result."""
    nodes = {site: SiteNode(site, task, data) for site, data in fed.sites.items()}
    info = {
        site: NodeInfo(node_id=site, num_examples=n.num_train_examples) for site, n in nodes.items()
    }
    transport = InMemoryTransport({s: n.handle for s, n in nodes.items()}, info=info)
    engine = RoundEngine(strategy, transport, config, run_id=run_id, listener=listener)
    if initial is None:
        initial = task.init_parameters(np.random.default_rng(engine.seed))
    with transport:
        return engine.run(initial)


def train_centralised(
    task: Task,
    data: Dataset,
    initial: ParameterSet,
    train_config: Mapping[str, Scalar],
    *,
    seed: int,
) -> ParameterSet:
    """Train ``task`` on one dataset with ``train_config`` (a baseline, not federated)."""
    ctx = TrainContext(config=train_config, rng=np.random.default_rng([seed, 0xBA5E]))
    return task.train(initial, data, ctx).parameters


def evaluate_everywhere(
    task: Task, parameters: ParameterSet, fed: FederatedDataset, *, method: str
) -> MethodResult:
    """Evaluate one model on every site's test split and on the pooled test set."""
    metric = task.primary_metric
    ctx = TrainContext()
    per_site = {
        site: float(task.evaluate(parameters, data.split("test"), ctx).metrics[metric])
        for site, data in fed.sites.items()
    }
    pooled = float(task.evaluate(parameters, fed.pooled("test"), ctx).metrics[metric])
    return MethodResult(
        method=method,
        site_metrics=MappingProxyType(per_site),
        mean_site_metric=_nanmean(list(per_site.values())),
        pooled_metric=pooled,
    )


def simulate(
    fed: FederatedDataset,
    task: Task,
    strategy: Strategy,
    *,
    rounds: int,
    seed: int,
    baseline_config: Mapping[str, Scalar] | None = None,
    baselines: bool = True,
    listener: EngineListener | None = None,
) -> SimulationReport:
    """Federate ``task`` over ``fed`` with ``strategy`` and compare with local and pooled.

    Parameters
    ----------
    fed:
        The sites' data (each with a test split).
    task, strategy:
        What to train and how to aggregate.
    rounds, seed:
        Number of rounds; the seed makes the whole simulation deterministic.
    baseline_config:
        Training config for the local-only and pooled baselines. Default: the strategy's
        training config with ``rounds × local_steps`` steps, the same total a site trains
        in the federated run.
    baselines:
        Also train and evaluate the local-only and pooled baselines.
    listener:
        Progress hooks for the federated run.
    """
    config = EngineConfig(rounds=rounds, seed=seed, evaluate_every=1, min_nodes=1)
    initial = task.init_parameters(np.random.default_rng(seed))
    result = run_federation(fed, task, strategy, config, initial=initial, listener=listener)
    federated = evaluate_everywhere(task, result.parameters, fed, method=strategy.name)
    extra: list[MethodResult] = []
    if baselines:
        if baseline_config is None:
            steps = int(strategy.train_config.get("local_steps", 100)) * rounds
            baseline_config = {
                **{k: v for k, v in strategy.train_config.items() if k != "proximal_mu"},
                "local_steps": steps,
            }
        for site, data in fed.sites.items():
            params = train_centralised(task, data.train, initial, baseline_config, seed=seed)
            extra.append(evaluate_everywhere(task, params, fed, method=f"local:{site}"))
        pooled = train_centralised(task, fed.pooled("train"), initial, baseline_config, seed=seed)
        extra.append(evaluate_everywhere(task, pooled, fed, method="pooled"))
    return SimulationReport(
        dataset=fed.name,
        task=task.name,
        metric=task.primary_metric,
        strategy=strategy.name,
        seed=seed,
        settings=MappingProxyType({"rounds": rounds, **strategy.describe()}),
        federated=federated,
        baselines=tuple(extra),
        history=result.history,
        events=tuple(
            f"round {e.round} {e.node_id or '-'} {e.kind}: {e.message}" for e in result.events
        ),
    )
