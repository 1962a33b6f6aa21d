"""Executing one run: set it up, wait for its sites, drive the round engine, commit each round,
and end it with a status that tells the truth.

A run ends

* ``finished`` when every round completed,
* ``finished_with_failures`` when some rounds completed and some failed,
* ``failed`` when no round completed (its "result" would be the initial model, so none is
  offered) or the run itself failed,
* ``cancelled`` when a researcher cancelled it: the engine abandons the current round at once,
  the hub tells the nodes to drop the run, and nothing more is sent.

Each round's checkpoint, record and ``round_completed`` event are committed together
(:meth:`~biofed.coordinator.StateStore.complete_round`).

A job whose ``[robust]`` table validates updates or runs FLTrust gets the coordinator's
trusted data it names (:class:`~biofed.coordinator.TrustedData`, from the operator's
``kit.toml`` ``[trusted_data]``); each decision the robust strategy takes about a site's
update is a run event ``update_<action>`` and an entry ``update.<action>`` in the
coordinator's audit log.

A job with ``[contribution]`` measures every round (:class:`~biofed.contribution.Measured`,
run events ``contribution``); at the run's end the executor builds the run's
:class:`~biofed.contribution.ContributionLedger` from them, writes it as the run event
``contributions`` (the ledger, the shares, every round's coalition values, so a site can
recompute its figure) and appends one signed audit entry ``contribution.measured`` per
site (run, site, total value, share). When the study agreement the job runs under states
an incentive policy (its signed ``[incentives]``), the policy is applied to the ledger
(:func:`~biofed.contribution.incentive_outcome`): the outcome goes into the
``contributions`` event and one audit entry ``incentive.outcome`` per site (reward share,
access, free-rider flag and the reasons), and a job under such an agreement measures with
the policy's ``measure``.

An analysis job (:class:`~biofed.coordinator.AnalysisJob`) runs its query instead of rounds
(:func:`~biofed.coordinator._analysis.analyze_over`, the loop a simulation runs too): it
waits for ``min_nodes`` sites as a round does, and ends ``finished`` with the run event
``analysis_result`` (the result's JSON) or ``failed`` with the sites' reasons. A query
interrupted by a coordinator restart starts again from pass 1 (a ``resumed`` event says
so): passes of two coordinator lives are never mixed.

With a tracker (:class:`~biofed.coordinator.RunTracker`, the kit's ``[tracking]``), a
training run is reported as it goes: its settings when it starts, each round once committed
(with the privacy spend its sites reported), and at its end its status, privacy report,
contributions and final model (only where the study agreement releases it). The tracker
never fails nor holds up the run (:class:`~biofed.coordinator.Tracking`); analysis runs are
not tracked.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from biofed.contribution import (
    AUTO,
    CONTRIBUTIONS_EVENT,
    ContributionLedger,
    Measured,
    incentive_outcome,
    ledger_from_events,
    run_record,
)
from biofed.coordinator._analysis import ANALYSIS_EVENT, PASS_EVENT, analyze_over
from biofed.coordinator._analysis_job import AnalysisJob, run_spec_from_json
from biofed.coordinator._anchored import AnchoredTransport
from biofed.coordinator._engine import DECISION_EVENT_PREFIX, EngineListener, RoundEngine
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._preprocess import reused
from biofed.coordinator._privacy_report import privacy_report
from biofed.coordinator._records import RoundRecord, RunCancelled, RunEvent
from biofed.coordinator._result import model_result, result_contributions
from biofed.coordinator._store import Checkpoint, RunRow, RunStatus, StateStore
from biofed.coordinator._tracking import (
    TRACKING_FAILED_EVENT,
    RunTracker,
    TrackedEnd,
    TrackedListener,
    TrackedRound,
    TrackedStart,
    flat_params,
)
from biofed.coordinator._trusted import TrustedData
from biofed.core import BiofedError, ConfigurationError, ParameterSet, Reply
from biofed.governance import AuditLog, IncentivePolicy
from biofed.strategies import StrategyState
from biofed.tasks import make_task
from biofed.transport import Transport

_LOG = logging.getLogger("biofed.coordinator.tracking")


class _Session(Protocol):
    @property
    def node_id(self) -> str: ...


class NodeDirectory(Protocol):
    """What the executor needs of the node connections (a
    :class:`~biofed.transport.grpc.NodeHub` fits): a transport per run, and who is connected."""

    def transport_for(self, run_id: str, dataset: str) -> Transport: ...

    def sessions(self) -> Sequence[_Session]: ...


class RunListener(EngineListener, Protocol):
    """Engine hooks that also word a round's ``round_completed`` event (committed with it)."""

    def completed_event(self, record: RoundRecord) -> RunEvent: ...


class _AuditedDecisions:
    """A run's listener that also appends each robust-aggregation decision (run event
    ``update_<action>``) to the coordinator's audit log as ``update.<action>``."""

    def __init__(
        self, inner: RunListener, run_id: str, audit: Callable[[str, dict[str, Any]], None]
    ) -> None:
        self.inner = inner
        self.run_id = run_id
        self.audit = audit

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        self.inner.on_round_start(server_round, num_selected)

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        self.inner.on_reply(server_round, reply, accepted)

    def on_round_end(self, record: RoundRecord) -> None:
        self.inner.on_round_end(record)

    def completed_event(self, record: RoundRecord) -> RunEvent:
        return self.inner.completed_event(record)

    def on_event(self, event: RunEvent) -> None:
        self.inner.on_event(event)
        if event.kind.startswith(DECISION_EVENT_PREFIX):
            action = event.kind[len(DECISION_EVENT_PREFIX) :]
            try:
                decision = json.loads(event.message)
            except ValueError:  # pragma: no cover - the engine writes JSON
                decision = {"message": event.message}
            self.audit(
                f"update.{action}",
                {"run_id": self.run_id, "round": event.round, **decision},
            )


def _spec_or_none(text: str) -> JobSpec | AnalysisJob | None:
    try:
        return run_spec_from_json(text)
    except BiofedError:
        return None


def _training_spec(text: str) -> JobSpec | None:
    spec = _spec_or_none(text)
    return spec if isinstance(spec, JobSpec) else None


def ending_status(records: list[RoundRecord]) -> tuple[RunStatus, str | None]:
    """The status a run that went through all its rounds ends in, and why it failed."""
    failed = [r for r in records if r.failed is not None]
    if records and not failed:
        return RunStatus.FINISHED, None
    if len(failed) < len(records):
        return RunStatus.FINISHED_WITH_FAILURES, None
    last = failed[-1].failed if failed else "no rounds"
    return (
        RunStatus.FAILED,
        f"no round completed: all {len(records)} rounds failed (last: {last})",
    )


class RunExecutor:
    """Runs one run at a time per call of :meth:`execute` (the scheduler calls it from one
    thread per run).

    Parameters
    ----------
    store:
        Runs, rounds, checkpoints, events.
    hub:
        The node connections (each run gets its own transport), injected by whoever starts
        the coordinator.
    listener:
        Makes the engine listener of a run (writes its progress to the store).
    stopping:
        Set when the coordinator stops: the run ends after its current round and stays
        ``running``, to resume at the next start.
    node_wait:
        Seconds a round waits for ``min_nodes`` sites before the engine records it failed.
    audit:
        Appends an entry to the coordinator's audit log (``run.finished``, ``run.failed``…).
    anchor:
        The coordinator's audit log, whose head every instruction carries
        (:class:`~biofed.coordinator._anchored.AnchoredTransport`), or None.
    limits:
        The coordinator's job limits; a study job's model size is checked against them once
        its preprocessing is fitted (its feature count is unknown at submit).
    agreement_rules:
        The ``[analytics]`` disclosure thresholds a kept study agreement sets (by id), or
        None: an analysis job's requests are at least as strict on every key it sets.
    trusted_data:
        The coordinator's trusted datasets (name → file, its kit's ``[trusted_data]``) a
        job's ``[robust]`` or ``[contribution]`` ``trusted_dataset`` may name.
    agreement_incentives:
        The incentive policy a kept study agreement states (by id), or None.
    tracker:
        Where training runs are reported (the kit's ``[tracking]``), or None.
    releases_model:
        Whether a kept study agreement releases the final model (by id): the tracker gets
        the model only then, as ``biofed run result`` would.
    """

    def __init__(
        self,
        store: StateStore,
        hub: NodeDirectory,
        listener: Callable[[str], RunListener],
        stopping: threading.Event,
        *,
        node_wait: float = 60.0,
        audit: Callable[[str, dict[str, Any]], None] = lambda event, data: None,
        anchor: AuditLog | None = None,
        limits: JobLimits | None = None,
        agreement_rules: Callable[[str], Mapping[str, float] | None] = lambda agreement: None,
        trusted_data: Mapping[str, Path] | None = None,
        agreement_incentives: Callable[[str], IncentivePolicy | None] = lambda agreement: None,
        tracker: RunTracker | None = None,
        releases_model: Callable[[str], bool] = lambda agreement: False,
    ) -> None:
        self.tracker = tracker
        self.releases_model = releases_model
        self.agreement_rules = agreement_rules
        self.agreement_incentives = agreement_incentives
        self.trusted_data = dict(trusted_data or {})
        self.store = store
        self.limits = JobLimits() if limits is None else limits
        self.hub = hub
        self.listener = listener
        self.stopping = stopping
        self.node_wait = node_wait
        self.audit = audit
        self.anchor = anchor

    # -- the run -------------------------------------------------------------------------------
    def execute(self, row: RunRow, cancel: threading.Event) -> None:
        """Execute ``row`` until it ends, is cancelled or the coordinator stops. Raises what
        goes wrong (the scheduler fails the run with it)."""
        run_id = row.run_id
        current = self.store.get_run(run_id)
        if current is None or current.status.is_terminal:
            return  # cancelled before it started
        stored = run_spec_from_json(row.spec)
        if isinstance(stored, AnalysisJob):
            self._analyze(run_id, stored, current.status, cancel)
            return
        spec = stored
        strategy = spec.build_strategy(trusted=self.trusted_for(spec))
        policy = self.policy_for(spec)
        if policy is not None and isinstance(strategy, Measured) and strategy.method == AUTO:
            strategy.method = policy.measure  # every round by the agreed measure
        checkpoint = self.store.latest_checkpoint(run_id)
        if checkpoint is not None:
            self.store.append_event(
                run_id,
                round=checkpoint.round,
                kind="resumed",
                message=f"from the checkpoint of round {checkpoint.round}",
            )
        if current.status is RunStatus.PENDING:
            self.store.set_run_status(run_id, RunStatus.RUNNING)
        listener: RunListener = _AuditedDecisions(self.listener(run_id), run_id, self.audit)
        tracked: TrackedListener | None = None
        if self.tracker is not None:  # each round's privacy spend, for the tracker
            listener = tracked = TrackedListener(listener)
            self.tracker.on_start(
                TrackedStart(
                    run_id=run_id, params=flat_params(spec.to_mapping()), job_json=spec.to_json()
                )
            )
        transport: Transport = self.hub.transport_for(run_id, spec.dataset)
        if self.anchor is not None:  # each instruction carries the coordinator's audit head
            transport = AnchoredTransport(transport, self.anchor)

        def before_round(server_round: int) -> bool:
            return self._wait_for_nodes(run_id, server_round, spec, transport, cancel)

        def commit(
            server_round: int, params: ParameterSet, state: StrategyState, record: RoundRecord
        ) -> None:
            self.store.complete_round(
                run_id,
                record,
                Checkpoint(run_id=run_id, round=server_round, parameters=params, state=state),
                listener.completed_event(record),
            )
            if self.tracker is not None and tracked is not None:
                spends = tracked.take(server_round)
                self.tracker.on_round(TrackedRound(run_id=run_id, record=record, privacy=spends))

        try:
            engine = RoundEngine(
                strategy,
                transport,
                spec.engine_config(),
                run_id=run_id,
                listener=listener,
                job=spec.job_section(),
                secure_aggregation=spec.secure_aggregation,
                cancel=cancel,
            )
            if spec.study is not None:
                # The preprocessing phase, before round 1; a resumed run reuses its fit.
                fitted = reused([(e.kind, e.message) for e in self.store.events(run_id)])
                if fitted is None and not before_round(0):
                    if cancel.is_set():
                        raise RunCancelled(f"run {run_id!r} was cancelled")
                    return  # the coordinator stops: the run resumes at its next start
                preprocessing = engine.preprocess(fitted)
                assert preprocessing is not None
                # the model's size is known only now: the coordinator's limits apply to it
                spec = self.limits.check(spec.with_preprocessing(preprocessing))
            if checkpoint is not None:
                params, state = checkpoint.parameters, checkpoint.state
                start = checkpoint.round + 1
            else:
                params = spec.initial_parameters(make_task)
                state, start = strategy.init_state(params), 1
            # The engine's loop, the only one: the executor waits for sites before each round
            # and commits each round after it.
            result = engine.run(
                params,
                state=state,
                start_round=start,
                before_round=before_round,
                after_round=commit,
            )
            if not result.stopped:
                self._end(run_id, spec)
                return
        except RunCancelled:
            pass
        finally:
            transport.close()
        if cancel.is_set():
            self.cancelled(run_id)

    def trusted_for(self, spec: JobSpec) -> TrustedData | None:
        """The trusted data ``spec`` names (None when it names none), loaded and checked
        against its task.

        Raises
        ------
        ConfigurationError
            The name is not registered at this coordinator, or its file does not fit the
            job (one line naming ``[robust] trusted_dataset``).
        """
        name = spec.trusted_dataset
        if name is None:
            return None
        path = self.trusted_data.get(name)
        if path is None:
            known = ", ".join(sorted(self.trusted_data)) or "none"
            raise ConfigurationError(
                f"{spec.trusted_key} {name!r} is not registered at this coordinator "
                f"(kit.toml [trusted_data] lists: {known})"
            )
        return TrustedData(spec, path, name=name)

    # -- an analysis -----------------------------------------------------------------------------
    def _analyze(
        self, run_id: str, job: AnalysisJob, status: RunStatus, cancel: threading.Event
    ) -> None:
        """Run an analysis job's query (see the module); raises what fails it."""
        if any(e.kind == PASS_EVENT for e in self.store.events(run_id)):
            self.store.append_event(
                run_id,
                round=0,
                kind="resumed",
                message="the query restarts from pass 1 (passes of the coordinator's last "
                "life are not reused)",
            )
        if status is RunStatus.PENDING:
            self.store.set_run_status(run_id, RunStatus.RUNNING)
        listener = self.listener(run_id)
        transport: Transport = self.hub.transport_for(run_id, job.dataset)
        if self.anchor is not None:  # each instruction carries the coordinator's audit head
            transport = AnchoredTransport(transport, self.anchor)
        try:
            if not self._wait_for_nodes(run_id, 1, job, transport, cancel):
                if cancel.is_set():
                    raise RunCancelled(f"run {run_id!r} was cancelled")
                return  # the coordinator stops: the query restarts at its next start
            agreed = None if job.agreement is None else self.agreement_rules(job.agreement)
            result, events = analyze_over(
                transport,
                job.query,
                job.request_rules(agreed),
                run_id=run_id,
                min_nodes=job.min_nodes,
                min_replies=job.min_replies,
                round_timeout=job.round_timeout,
                job=job.job_section(),
                secure=job.secure_aggregation,
                listener=listener,
                cancel=cancel,
            )
            passes = sum(e.kind == PASS_EVENT for e in events)
            self.store.append_event(
                run_id, round=passes, kind=ANALYSIS_EVENT, message=result.to_json()
            )
            self.store.set_run_status(run_id, RunStatus.FINISHED)
            self.audit(
                "run.finished",
                {"run_id": run_id, "passes": passes, "status": RunStatus.FINISHED.value},
            )
            self.store.append_event(
                run_id,
                round=passes,
                kind="finished",
                message=f"{job.query.kind} answered in {passes} passes",
            )
            return
        except RunCancelled:
            pass
        finally:
            transport.close()
        if cancel.is_set():
            self.cancelled(run_id)

    # -- waiting for sites ---------------------------------------------------------------------
    def waiting_reason(self, spec: JobSpec | AnalysisJob, available: list[str]) -> str:
        """Why a run cannot start its round, in words a researcher can act on."""
        connected = sorted({s.node_id for s in self.hub.sessions()})
        if not available:
            if not connected:
                return (
                    f"no site connected; the run needs {spec.min_nodes} offering "
                    f"dataset {spec.dataset!r}"
                )
            return (
                f"no connected site offers dataset {spec.dataset!r} "
                f"({len(connected)} sites connected)"
            )
        return f"{len(available)} of {spec.min_nodes} required sites connected: " + ", ".join(
            available
        )

    def _wait_for_nodes(
        self,
        run_id: str,
        server_round: int,
        spec: JobSpec | AnalysisJob,
        transport: Any,
        cancel: threading.Event,
    ) -> bool:
        deadline = time.monotonic() + self.node_wait
        said = ""
        while True:
            available = [n.node_id for n in transport.available_nodes()]
            if len(available) >= spec.min_nodes:
                return True
            if self.stopping.is_set() or cancel.is_set():
                return False
            if time.monotonic() > deadline:
                return True  # the engine records the failed round
            reason = self.waiting_reason(spec, available)
            if reason != said:
                self.store.append_event(
                    run_id, round=server_round, kind="waiting_for_nodes", message=reason
                )
                said = reason
            cancel.wait(0.2)

    # -- endings -------------------------------------------------------------------------------
    def _end(self, run_id: str, spec: JobSpec) -> None:
        if spec.contribution is not None:
            self.contributions(run_id, spec)
        records = [r.record for r in self.store.rounds(run_id)]
        status, error = ending_status(records)
        failed = sum(r.failed is not None for r in records)
        message = f"{len(records) - failed} of {spec.rounds} rounds completed, {failed} failed"
        self.store.set_run_status(run_id, status, error=error)
        self.audit(
            "run.finished",
            {"run_id": run_id, "rounds": spec.rounds, "status": status.value, "failed": failed},
        )
        kind = "failed" if status is RunStatus.FAILED else "finished"
        self.store.append_event(run_id, round=spec.rounds, kind=kind, message=error or message)
        self.track_end(run_id, spec, status, error)

    def track_end(
        self, run_id: str, spec: JobSpec | None, status: RunStatus, error: str | None = None
    ) -> None:
        """Tell the tracker (if any) that a training run ended: its status, privacy report,
        contributions and, where it has one that may leave, its final model."""
        if self.tracker is None or spec is None:
            return
        try:
            events = self.store.events(run_id)
            records = [r.record for r in self.store.rounds(run_id)]
            released = spec.agreement is None or self.releases_model(spec.agreement)
            model = None
            if status.has_result and released and self.tracker.wants_model:
                model = model_result(self.store, run_id, spec)
            end = TrackedEnd(
                run_id=run_id,
                status=status.value,
                rounds=max((r.round for r in records), default=0),
                error=error,
                privacy=privacy_report(spec, events, records),
                contributions=result_contributions(events),
                model=model,
            )
        except Exception as exc:  # what the tracker would be told cannot fail the run
            _LOG.warning("the end of run %s could not be tracked: %s", run_id, exc)
            self.store.append_event(
                run_id,
                round=spec.rounds,
                kind=TRACKING_FAILED_EVENT,
                message=f"the run's end was not tracked: {type(exc).__name__}",
            )
            return
        self.tracker.on_end(end)

    def contributions(self, run_id: str, spec: JobSpec) -> ContributionLedger | None:
        """Build the run's contribution ledger from its ``contribution`` events, write the
        ``contributions`` event and audit each site's figure (``contribution.measured``).

        A ledger that cannot be read back (a malformed round record) is a
        ``contributions_failed`` event, not a failed run: the model is still the run's.
        """
        events = [(e.round, e.kind, e.message) for e in self.store.events(run_id)]
        try:
            ledger, records, failed = ledger_from_events(events)
        except BiofedError as exc:
            self.store.append_event(
                run_id, round=spec.rounds, kind="contributions_failed", message=str(exc)
            )
            return None
        # the run's sites: those measured, and those whose every update was rejected
        excluded = {
            s for rec in records.values() for s in rec.get("excluded", []) if isinstance(s, str)
        }
        outcome = self.incentive_outcome(
            run_id, spec, ledger, sites=sorted(excluded | set(ledger.sites))
        )
        self.store.append_event(
            run_id,
            round=spec.rounds,
            kind=CONTRIBUTIONS_EVENT,
            message=run_record(ledger, records, failed, outcome=outcome),
        )
        totals, shares = ledger.totals(), ledger.shares()
        for site in ledger.sites:
            riding = sum(site in r.free_riders for r in ledger.rounds)
            self.audit(
                "contribution.measured",
                {
                    "run_id": run_id,
                    "site": site,
                    "value": totals[site],
                    "share": shares[site],
                    "rounds": len(ledger.rounds),
                    "free_rider_rounds": riding,
                },
            )
        return ledger

    def policy_for(self, spec: JobSpec) -> IncentivePolicy | None:
        """The incentive policy of the study agreement ``spec`` runs under, or None."""
        return None if spec.agreement is None else self.agreement_incentives(spec.agreement)

    def incentive_outcome(
        self,
        run_id: str,
        spec: JobSpec,
        ledger: ContributionLedger,
        *,
        sites: Sequence[str] = (),
    ) -> dict[str, Any] | None:
        """The study agreement's incentive policy applied to the run's ledger (its outcome
        as JSON, each site's figures audited as ``incentive.outcome``), or None when the
        agreement states none. A policy that cannot be applied (a round measured by
        another method) is the event ``incentives_failed`` and the audit entry
        ``incentive.failed``: no site gets figures the policy did not decide. ``sites``:
        the run's sites, so one the ledger never measured (every update rejected) gets the
        policy's figures for a site that contributed nothing."""
        policy = self.policy_for(spec)
        if policy is None:
            return None
        try:
            outcome = incentive_outcome(policy, ledger, rounds=spec.rounds, sites=sites)
        except BiofedError as exc:
            self.store.append_event(
                run_id, round=spec.rounds, kind="incentives_failed", message=str(exc)
            )
            self.audit("incentive.failed", {"run_id": run_id, "reason": str(exc)})
            return None
        data: dict[str, Any] = json.loads(outcome.to_json())
        for site, figures in sorted(data["sites"].items()):
            self.audit(
                "incentive.outcome",
                {
                    "run_id": run_id,
                    "site": site,
                    "ledger_digest": data["ledger_digest"],
                    **figures,
                },
            )
        return data

    def cancelled(self, run_id: str) -> None:
        """Mark the run cancelled (nothing if it already ended)."""
        try:
            row = self.store.set_run_status(run_id, RunStatus.CANCELLED)
        except BiofedError:
            return  # already ended (cancelled by the control API while it was pending)
        what = f"round {row.completed_rounds + 1}"
        if isinstance(_spec_or_none(row.spec), AnalysisJob):
            what = "the query"
        self.store.append_event(
            run_id,
            round=row.completed_rounds,
            kind="cancelled",
            message=f"{what} abandoned; nodes told to drop the run",
        )
        self.audit("run.cancelled", {"run_id": run_id, "rounds": row.completed_rounds})
        self.track_end(run_id, _training_spec(row.spec), RunStatus.CANCELLED)

    def fail(self, run_id: str, reason: str) -> None:
        """Mark the run failed with ``reason`` (nothing if it already ended)."""
        try:
            row = self.store.set_run_status(run_id, RunStatus.FAILED, error=reason)
        except BiofedError:
            return
        self.store.append_event(run_id, round=row.completed_rounds, kind="failed", message=reason)
        self.audit("run.failed", {"run_id": run_id, "reason": reason})
        self.track_end(run_id, _training_spec(row.spec), RunStatus.FAILED, reason)
