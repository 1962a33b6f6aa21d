"""Simulate a federation in one process: virtual sites, in-memory transport, real engine.

Given a job (:class:`~biofed.coordinator.JobSpec`, the file ``biofed run submit`` takes),
every virtual site is a real site node and the engine runs the job's secure rounds
(:mod:`biofed.simulation._job`). Given a task and a strategy object, each site is a bare
:class:`~biofed.node.SiteNode` running that object (no DP, ledger or secure aggregation).

Besides the federated run, a simulation trains the same task on each site alone
(local-only) and on all training data pooled (centralised), on the same split, so a table
can show what federation buys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from biofed.contribution import CONTRIBUTION_EVENT, CONTRIBUTIONS_EVENT
from biofed.coordinator import (
    PREPROCESSING_EVENT,
    SUMMARIES_EVENT,
    EngineConfig,
    EngineListener,
    JobSpec,
    RoundEngine,
    RoundRecord,
    RunResult,
)
from biofed.core import ConfigurationError, NodeInfo, ParameterSet, Scalar, TaskError
from biofed.data import Dataset, FederatedDataset, Preprocessing, extract
from biofed.node import NodeConfig, SiteNode
from biofed.simulation._backends import Backend
from biofed.simulation._job import baseline_config as job_baseline_config
from biofed.simulation._job import job_task, run_job
from biofed.simulation._sites import SiteSource
from biofed.strategies import Strategy, TrustedValidation
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
    """Everything ``biofed simulate`` shows.

    ``privacy`` (with a DP job) is each site's reported ε(δ) with its guarantee label,
    shaped like a run summary's ``"privacy"``; ``parameters`` is the final federated model
    (not in :meth:`to_dict`); ``features`` are the feature columns the model was trained on;
    ``preprocessing`` is a study job's fitted preprocessing (JSON, stored with the model).
    """

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
    privacy: Mapping[str, Any] | None = None
    secure_aggregation: bool = False
    parameters: ParameterSet | None = None
    features: tuple[str, ...] = ()
    preprocessing: str | None = None
    #: A job with ``[contribution]``: the run's ``contributions`` event (JSON: the ledger,
    #: shares and each round's coalition values), as the coordinator writes it.
    contributions: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the whole report."""
        return {
            "dataset": self.dataset,
            "features": list(self.features),
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
            "privacy": None if self.privacy is None else dict(self.privacy),
            "secure_aggregation": self.secure_aggregation,
            "contributions": None if self.contributions is None else json.loads(self.contributions),
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
    fed: FederatedDataset | Mapping[str, SiteSource],
    task: Task | None = None,
    strategy: Strategy | None = None,
    *,
    rounds: int | None = None,
    seed: int | None = None,
    baseline_config: Mapping[str, Scalar] | None = None,
    baselines: bool = True,
    listener: EngineListener | None = None,
    job: JobSpec | None = None,
    node_configs: Mapping[str, NodeConfig] | None = None,
    ledger_dir: str | Path | None = None,
    backend: str | Backend = "inprocess",
    agreement: str | Path | None = None,
    bundle: str | Path | None = None,
    trusted: TrustedValidation | None = None,
) -> SimulationReport:
    """Federate over ``fed`` and compare with local-only and pooled training.

    Either a ``job`` — the same :class:`~biofed.coordinator.JobSpec` a coordinator runs,
    ``[privacy]`` and ``[secure_aggregation]`` included — run over real site nodes; or a
    ``task`` and ``strategy`` object with ``rounds`` and ``seed``, run over bare sites.

    Parameters
    ----------
    fed:
        The sites' data (each with a test split). With a job, each site holds its part as
        the job's dataset, and every site takes part. With a job that has a study spec:
        site → study source (an OMOP CDM's URL or DuckDB file, or a data file), which each
        site compiles by the spec; the local-only and pooled baselines then train on the
        same extracted and preprocessed tables.
    task, strategy:
        What to train and how to aggregate (without a job).
    rounds, seed:
        Number of rounds; the seed makes the whole simulation deterministic (without a job;
        a job has its own).
    baseline_config:
        Training config for the local-only and pooled baselines. Default: the training
        config with ``rounds × local_steps`` steps, the same total a site trains in the
        federated run (without DP).
    baselines:
        Also train and evaluate the local-only and pooled baselines.
    listener:
        Progress hooks for the federated run.
    job:
        The job to rehearse.
    node_configs:
        With a job: site → the node config it runs (its privacy caps and heuristic-DP
        opt-in; see :func:`~biofed.simulation._job_sites.load_node_config`).
    ledger_dir:
        With a job: keep each site's privacy ledger as ``<ledger_dir>/<site>.db`` (so
        repeated rehearsals spend one budget); default: throwaway ledgers.
    backend:
        With a job: how the engine reaches the sites (``"inprocess"``, ``"processes"``,
        ``"ray"``, or a :class:`~biofed.simulation.Backend` such as a
        :class:`~biofed.simulation.TamperingBackend` whose chosen sites lie).
    agreement, bundle:
        With a job: a study agreement file (signed or a draft) and the task bundle it
        approves. Every site is then a governed node enforcing the agreement's terms (as
        re-signed by a throwaway consortium) and runs the bundle in its sandbox; the job
        must name both (``[run] agreement``, ``[run] bundle``).
    trusted:
        With a job: the coordinator's trusted data (update validation, FLTrust) for a job
        whose ``[robust]`` section uses it.

    Raises
    ------
    ConfigurationError
        When neither or both of ``job`` and ``task``/``strategy`` are given.
    """
    if job is not None:
        if task is not None or strategy is not None or rounds is not None or seed is not None:
            raise ConfigurationError(
                "simulate takes a job or a task, strategy, rounds and seed, not both"
            )
        return _simulate_job(
            fed,
            job,
            baseline_config=baseline_config,
            baselines=baselines,
            listener=listener,
            node_configs=node_configs,
            ledger_dir=ledger_dir,
            backend=backend,
            agreement=agreement,
            bundle=bundle,
            trusted=trusted,
        )
    if task is None or strategy is None or rounds is None or seed is None:
        raise ConfigurationError("simulate needs a job, or a task, strategy, rounds and seed")
    if not isinstance(fed, FederatedDataset):
        raise ConfigurationError("study sources need a job with [study]")
    if (
        node_configs
        or ledger_dir is not None
        or backend != "inprocess"
        or agreement is not None
        or bundle is not None
        or trusted is not None
    ):
        raise ConfigurationError(
            "node_configs, ledger_dir, backend, agreement, bundle and trusted need a job"
        )
    config = EngineConfig(rounds=rounds, seed=seed, evaluate_every=1, min_nodes=1)
    initial = task.init_parameters(np.random.default_rng(seed))
    result = run_federation(fed, task, strategy, config, initial=initial, listener=listener)
    if baselines and baseline_config is None:
        steps = int(strategy.train_config.get("local_steps", 100)) * rounds
        baseline_config = {
            **{k: v for k, v in strategy.train_config.items() if k != "proximal_mu"},
            "local_steps": steps,
        }
    return _report(
        fed,
        task,
        strategy,
        result,
        initial,
        seed=seed,
        settings={"rounds": rounds, **strategy.describe()},
        baseline_config=baseline_config if baselines else None,
    )


def _simulate_job(
    fed: FederatedDataset | Mapping[str, SiteSource],
    job: JobSpec,
    *,
    baseline_config: Mapping[str, Scalar] | None,
    baselines: bool,
    listener: EngineListener | None,
    node_configs: Mapping[str, NodeConfig] | None,
    ledger_dir: str | Path | None,
    backend: str | Backend,
    agreement: str | Path | None,
    bundle: str | Path | None,
    trusted: TrustedValidation | None,
) -> SimulationReport:
    strategy = job.build_strategy(trusted=trusted)
    result, privacy = run_job(
        job,
        fed,
        listener=listener,
        node_configs=node_configs,
        ledger_dir=ledger_dir,
        backend=backend,
        agreement=agreement,
        bundle=bundle,
        trusted=trusted,
    )
    if result.preprocessing is not None:  # the same tables, prepared as the sites did
        fitted = Preprocessing.from_json(result.preprocessing)
        job = job.with_preprocessing(fitted)
        fed = _prepared(job, fitted, fed)
    assert isinstance(fed, FederatedDataset)
    task = job_task(job)
    initial = job.initial_parameters()
    if job.bundle is not None:  # the bundle's task runs only in the sites' sandboxes
        return _bundle_report(fed, job, strategy, result, privacy)
    if baselines and baseline_config is None:
        baseline_config = job_baseline_config(job)
    report = _report(
        fed,
        task,
        strategy,
        result,
        initial,
        seed=job.seed,
        settings={"rounds": job.rounds, **strategy.describe()},
        baseline_config=baseline_config if baselines else None,
        privacy=privacy,
        secure_aggregation=job.secure_aggregation is not None,
    )
    return dataclasses.replace(report, preprocessing=result.preprocessing)


def _prepared(
    job: JobSpec, fitted: Preprocessing, sources: FederatedDataset | Mapping[str, SiteSource]
) -> FederatedDataset:
    """Each site's study table, extracted and prepared as the site did (for the report's
    evaluation and baselines: the simulation holds every site's source)."""
    assert job.study is not None
    assert not isinstance(sources, FederatedDataset)
    sites = {}
    for site, source in sources.items():
        if not isinstance(source, str | os.PathLike):
            raise ConfigurationError(f"site {site!r}: a study source is a URL or a file path")
        sites[site] = fitted.site_data(extract(job.study, source))
    return FederatedDataset(name=job.dataset, sites=sites)


def _bundle_report(
    fed: FederatedDataset,
    job: JobSpec,
    strategy: Strategy,
    result: RunResult,
    privacy: Mapping[str, Any] | None,
) -> SimulationReport:
    """The report of a bundle job: the sites' own last evaluation (the bundle's code runs
    only in their sandboxes), no pooled figure and no baselines."""
    per_node = result.history[-1].node_eval_metrics if result.history else {}
    metric = next((m for metrics in per_node.values() for m in metrics), "")
    site_metrics = {s: float(per_node.get(s, {}).get(metric, math.nan)) for s in fed.sites}
    federated = MethodResult(
        method=strategy.name,
        site_metrics=MappingProxyType(site_metrics),
        mean_site_metric=_nanmean(list(site_metrics.values())),
        pooled_metric=math.nan,
    )
    events = _event_lines(result)
    events.append("baselines: a bundle's task runs only at the sites; none trained")
    return SimulationReport(
        preprocessing=result.preprocessing,
        dataset=fed.name,
        task=job.task,
        metric=metric,
        strategy=strategy.name,
        seed=job.seed,
        settings=MappingProxyType({"rounds": job.rounds, **strategy.describe()}),
        federated=federated,
        history=result.history,
        events=tuple(events),
        contributions=_contributions(result),
        privacy=None if privacy is None else MappingProxyType(dict(privacy)),
        secure_aggregation=job.secure_aggregation is not None,
        parameters=result.parameters,
        features=_features(fed),
    )


def _event_lines(result: RunResult) -> list[str]:
    """The run's events as lines; the preprocessing phase's JSON documents as one line each
    saying what they hold (the report keeps the preprocessing itself)."""
    lines = []
    for e in result.events:
        message = e.message
        if e.kind == PREPROCESSING_EVENT and result.preprocessing is not None:
            names = Preprocessing.from_json(result.preprocessing).feature_names
            message = f"{len(names)} features: {', '.join(names)}"
        elif e.kind == SUMMARIES_EVENT:
            message = f"the summaries of {len(json.loads(message))} sites (heterogeneity input)"
        elif e.kind == CONTRIBUTION_EVENT:
            measured = json.loads(message)["contributions"]
            message = (
                f"{len(measured['values'])} sites measured by {measured['method']}, "
                f"v(N) = {measured['total']:.4g} in {measured['evaluations']} evaluations"
            )
        elif e.kind == CONTRIBUTIONS_EVENT:
            message = "the run's contribution ledger (see the contributions table)"
        lines.append(f"round {e.round} {e.node_id or '-'} {e.kind}: {message}")
    return lines


def _contributions(result: RunResult) -> str | None:
    """The run's ``contributions`` event's message (its last), or None."""
    found = [e.message for e in result.events if e.kind == CONTRIBUTIONS_EVENT]
    return found[-1] if found else None


def _features(fed: FederatedDataset) -> tuple[str, ...]:
    return next(iter(fed.sites.values())).train.feature_names


def _undefined_metric_events(
    federated: MethodResult, fed: FederatedDataset, metric: str
) -> list[str]:
    """One event per site whose test set cannot produce ``metric`` (left out of the mean)."""
    events = []
    for site, value in federated.site_metrics.items():
        if not math.isnan(value):
            continue
        test = fed.sites[site].split("test")
        why = "cannot produce it"
        if len(test) == 0:
            why = "is empty"
        elif "label" in test.targets and len(np.unique(test.targets["label"])) < 2:
            why = "has one class only"
        elif "event" in test.targets and not np.any(test.targets["event"]):
            why = "has no events"
        events.append(
            f"site {site}: test {metric} undefined (its test set of {len(test)} {why}); "
            "left out of the mean"
        )
    return events


def _failed(method: str, fed: FederatedDataset) -> MethodResult:
    """A baseline that trained no model: NaN everywhere."""
    return MethodResult(
        method=method,
        site_metrics=MappingProxyType(dict.fromkeys(fed.sites, math.nan)),
        mean_site_metric=math.nan,
        pooled_metric=math.nan,
    )


def _report(
    fed: FederatedDataset,
    task: Task,
    strategy: Strategy,
    result: RunResult,
    initial: ParameterSet,
    *,
    seed: int,
    settings: Mapping[str, Scalar],
    baseline_config: Mapping[str, Scalar] | None,
    privacy: Mapping[str, Any] | None = None,
    secure_aggregation: bool = False,
) -> SimulationReport:
    """Evaluate the federated model everywhere, train the baselines, and report."""
    federated = evaluate_everywhere(task, result.parameters, fed, method=strategy.name)
    extra: list[MethodResult] = []
    events = _event_lines(result)
    events += _undefined_metric_events(federated, fed, task.primary_metric)
    if baseline_config is not None:
        for method, data in [
            *((f"local:{site}", d.train) for site, d in fed.sites.items()),
            ("pooled", fed.pooled("train")),
        ]:
            try:
                params = train_centralised(task, data, initial, baseline_config, seed=seed)
            except TaskError as exc:  # diverged: the baseline has no model to show
                events.append(f"baseline {method} failed: {exc}")
                extra.append(_failed(method, fed))
                continue
            extra.append(evaluate_everywhere(task, params, fed, method=method))
    return SimulationReport(
        dataset=fed.name,
        task=task.name,
        metric=task.primary_metric,
        strategy=strategy.name,
        seed=seed,
        settings=MappingProxyType(dict(settings)),
        federated=federated,
        baselines=tuple(extra),
        history=result.history,
        events=tuple(events),
        contributions=_contributions(result),
        privacy=None if privacy is None else MappingProxyType(dict(privacy)),
        secure_aggregation=secure_aggregation,
        parameters=result.parameters,
        features=_features(fed),
    )
