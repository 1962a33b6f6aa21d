"""Simulating a job: the job file a researcher submits (``biofed run submit``), run over
virtual sites that are real site nodes, by the coordinator's round engine.

Each virtual site is a :class:`~biofed.node.NodeApp` holding its data in memory: it plans
and reserves its DP spend in its ledger, runs DP-SGD, clips and adds its noise share, takes
part in SecAgg+ with a kit of a throwaway consortium (it signs its keys, checks its
neighbours'), and controls what leaves — the chain a deployed site runs. The engine is the
coordinator's :class:`~biofed.coordinator.RoundEngine`, built from the
:class:`~biofed.coordinator.JobSpec` as the coordinator builds it (its strategy, the
instruction config every instruction carries, the secure rounds). Only two things differ
from a networked run, and neither changes the model: the sites run one after another in
this process, so there is no round deadline; and every site of the dataset takes part.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from biofed.contribution import CONTRIBUTIONS_EVENT, ledger_from_events, run_record
from biofed.coordinator import (
    EngineListener,
    JobSpec,
    RoundEngine,
    RoundRecord,
    RunEvent,
    RunResult,
    privacy_report,
    spend_event,
)
from biofed.core import BiofedError, ConfigurationError, Reply, Scalar
from biofed.data import FederatedDataset
from biofed.node import NodeConfig
from biofed.simulation._backends import Backend, BackendName, make_backend
from biofed.simulation._job_governance import Rehearsal
from biofed.simulation._job_sites import site_recipes
from biofed.simulation._sites import SiteSource
from biofed.strategies import TrustedValidation
from biofed.tasks import Task, make_task


class SpendListener:
    """Engine listener that keeps each site's reported spend as the coordinator's typed
    ``privacy_spent`` events (:func:`~biofed.coordinator.spend_event`), and passes every
    hook on to ``inner``."""

    def __init__(self, inner: EngineListener | None = None) -> None:
        self.inner = inner
        self.events: list[RunEvent] = []

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        if self.inner is not None:
            self.inner.on_round_start(server_round, num_selected)

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        event = spend_event(server_round, reply) if accepted else None
        if event is not None:
            self.events.append(event)
        if self.inner is not None:
            self.inner.on_reply(server_round, reply, accepted)

    def on_round_end(self, record: RoundRecord) -> None:
        if self.inner is not None:
            self.inner.on_round_end(record)

    def on_event(self, event: RunEvent) -> None:
        if self.inner is not None:
            self.inner.on_event(event)


def run_job(
    job: JobSpec,
    fed: FederatedDataset | Mapping[str, SiteSource],
    *,
    listener: EngineListener | None = None,
    node_configs: Mapping[str, NodeConfig] | None = None,
    ledger_dir: str | Path | None = None,
    backend: str | Backend = "inprocess",
    run_id: str | None = None,
    agreement: str | Path | None = None,
    bundle: str | Path | None = None,
    trusted: TrustedValidation | None = None,
) -> tuple[RunResult, dict[str, Any] | None]:
    """Run ``job`` over one real site node per site of ``fed``.

    Returns the engine's result and the privacy report (as a run summary's: each site's
    last reported ε(δ) with its label; None without DP).
    A job with a study spec runs the preprocessing phase first (``fed`` is then site →
    study source); the result holds the fitted preprocessing.
    Each run has its own id (default: ``sim-<random>``), so a site's ledger counts every
    rehearsal as a job of its own; nothing the sites compute depends on it.

    With ``agreement`` and ``bundle`` (files), every site is a governed node enforcing that
    agreement over that bundle (:mod:`~biofed.simulation._job_governance`). ``backend`` is
    a backend's name or a :class:`~biofed.simulation.Backend` (e.g. a
    :class:`~biofed.simulation.TamperingBackend` whose chosen sites lie); ``trusted`` is
    the coordinator's trusted data for the job's ``[robust]`` validation or FLTrust.

    Raises
    ------
    ConfigurationError
        For a job a simulation cannot run (a bundle without an agreement), or a bad node
        config, agreement or bundle.
    """
    backend_runner = (
        backend if isinstance(backend, Backend) else make_backend(cast(BackendName, backend))
    )  # a name is checked
    rehearsal = None
    if agreement is not None or bundle is not None:
        if agreement is None or bundle is None:
            raise ConfigurationError(
                "an agreement rehearsal needs both the agreement and the task bundle it approves"
            )
        rehearsal = Rehearsal.load(agreement, bundle)
        rehearsal.check_job(job.agreement, job.bundle)
    elif job.bundle is not None:
        raise ConfigurationError(
            "[run] bundle runs only at governed sites: give the agreement and the bundle file "
            "(--agreement, --bundle), or name a built-in task"
        )
    sites: Mapping[str, SiteSource] = fed.sites if isinstance(fed, FederatedDataset) else fed
    if (job.study is None) != isinstance(fed, FederatedDataset):
        raise ConfigurationError(
            "a job with [study] runs on the sites' study sources (site → OMOP CDM or file), "
            "a job without on a federated dataset"
        )
    if len(sites) < job.min_nodes:
        name = fed.name if isinstance(fed, FederatedDataset) else job.dataset
        raise ConfigurationError(
            f"[run] min_nodes is {job.min_nodes}, the dataset {name!r} has {len(sites)} sites"
        )
    spends = SpendListener(listener)
    with tempfile.TemporaryDirectory(prefix="biofed-sim-") as scratch:
        recipes = site_recipes(
            fed,
            job.dataset,
            workdir=Path(scratch),
            needs_kits=job.secure_aggregation is not None,
            node_configs=node_configs,
            ledger_dir=None if ledger_dir is None else Path(ledger_dir),
            rehearsal=rehearsal,
        )
        transport = backend_runner.transport(recipes)
        with transport:
            engine = RoundEngine(
                job.build_strategy(trusted=trusted),
                transport,
                job.engine_config(deadline=False),
                run_id=run_id or f"sim-{uuid.uuid4().hex[:12]}",
                listener=spends,
                job=job.job_section(),
                secure_aggregation=job.secure_aggregation,
            )
            fitted = engine.preprocess()  # a study job's preprocessing phase, before round 1
            if fitted is not None:
                job = job.with_preprocessing(fitted)
            result = engine.run(job.initial_parameters())
    if job.contribution is not None:  # the run's ledger, as the coordinator writes it
        result = dataclasses.replace(
            result, events=(*result.events, contributions_event(result.events, job.rounds))
        )
    return result, privacy_report(job, spends.events, result.history)


def contributions_event(events: Sequence[RunEvent], rounds: int) -> RunEvent:
    """The run event ``contributions`` (the ledger of a job with ``[contribution]``) built
    from its rounds' ``contribution`` events, as the coordinator's executor writes it."""
    try:
        ledger, records, failed = ledger_from_events((e.round, e.kind, e.message) for e in events)
    except BiofedError as exc:
        return RunEvent(round=rounds, kind="contributions_failed", message=str(exc))
    return RunEvent(
        round=rounds, kind=CONTRIBUTIONS_EVENT, message=run_record(ledger, records, failed)
    )


def job_task(job: JobSpec) -> Task:
    """The job's task, built as every site builds it."""
    return make_task(job.task, **job.task_options)


def baseline_config(job: JobSpec) -> dict[str, Scalar]:
    """Training config of the local-only and pooled baselines: the job's ``[train]`` for
    ``rounds × local_steps`` steps (what a site trains in the whole run), without noise; a
    DP job's baselines clip each mini-batch gradient to its ``max_grad_norm`` (the
    federated run clips each example's: without any clipping its learning rate may
    diverge)."""
    steps = int(job.train.get("local_steps", 100)) * job.rounds
    config: dict[str, Scalar] = {
        **{k: v for k, v in job.train.items() if k != "proximal_mu"},
        "local_steps": steps,
    }
    if job.privacy is not None and job.privacy.mode == "sample":
        config.setdefault("max_grad_norm", job.privacy.max_grad_norm)
    return config
