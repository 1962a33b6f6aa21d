"""The coordinator runtime: accepts runs from researchers, drives them over the connected
nodes with the round engine, and persists every step so a restart resumes where it stopped.

This module is the control API (submit, status, logs, cancel, results, nodes) and wires the
parts together; each part lives in its own module::

    Coordinator (control API) ── BundleStore        _bundles.py     bundles by digest
         │                    ── run_summary        _summaries.py   what `run status` shows
         │                    ── RunAccess          _access.py      who may see/cancel a run
         ├── RunScheduler     _scheduler.py   which runs execute, several at once
         └── RunExecutor      _executor.py    one run: RoundEngine.run + commit each round
                  └── RoundEngine   _engine.py  the round loop, over the hub's transport
                        (StoreListener, _summaries.py, writes its progress to the store)

The node hub (the gRPC :class:`~biofed.transport.grpc.NodeHub`) is injected as a factory by
whoever starts the coordinator (:func:`~biofed.coordinator.serve_coordinator`).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from biofed.coordinator._access import RunAccess
from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._analysis import ANALYSIS_EVENT, result_event
from biofed.coordinator._analysis_job import AnalysisJob, run_spec_from_json
from biofed.coordinator._bundles import BundleStore
from biofed.coordinator._executor import RunExecutor
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_contribution import check_incentives
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._records import RoundRecord
from biofed.coordinator._result import model_result
from biofed.coordinator._scheduler import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENT_RUNS,
    RunScheduler,
)
from biofed.coordinator._store import (
    NodeRow,
    NodeStatus,
    RunRow,
    RunStatus,
    StateStore,
)
from biofed.coordinator._summaries import StoreListener, node_summary, run_summary
from biofed.coordinator._tracking import TRACKING_FAILED_EVENT, TrackingConfig
from biofed.coordinator._tracking_worker import Tracking, make_tracking
from biofed.core import (
    BiofedError,
    PolicyViolation,
    ProtocolError,
)
from biofed.governance import AuditLog
from biofed.transport.grpc import (
    EventInfo,
    NodeEvent,
    NodeHub,
    NodeSummary,
    Peer,
    RunSummary,
)

_NODE_STATUS: dict[str, NodeStatus] = {
    "connected": "online",
    "reconnected": "online",
    "disconnected": "offline",
    "lost": "lost",
}


class HubFactory(Protocol):
    """Makes the coordinator's node hub, given where to report node and wire events (the
    gRPC :class:`~biofed.transport.grpc.NodeHub` class fits, or a ``functools.partial`` of it
    with heartbeat settings)."""

    def __call__(
        self,
        *,
        on_node_event: Callable[[str, NodeEvent], None],
        on_wire_error: Callable[[str, int, str, str], None],
    ) -> NodeHub: ...


class Coordinator:
    """Runs, nodes and the control API of one consortium's coordinator.

    Parameters
    ----------
    store:
        Where runs, rounds, events, nodes and checkpoints persist.
    heartbeat_interval, missed_heartbeats:
        Node liveness: a node silent for ``interval × missed`` seconds is marked lost.
    node_wait:
        Seconds a round waits for ``min_nodes`` sites to be connected before it fails.
    clock:
        Wall clock for timestamps.
    audit:
        The coordinator's signed, hash-chained audit log (runs submitted and ended, and every
        payload accepted from a node, for reconciliation with the nodes' logs).
    bundles_dir:
        Where task bundles submitted with jobs are kept, by digest, for nodes to fetch.
    max_concurrent_runs:
        Runs executed at the same time (the coordinator kit's ``max_concurrent_runs``).
    max_attempts:
        Starts without a completed round after which a run is failed, not resumed again.
    limits:
        The caps every submitted job must fit (default: :class:`JobLimits`'s defaults).
    agreements:
        Verifies and keeps the study agreements jobs name; their researchers may see the
        runs (:mod:`._access`). Without it, a job that names an agreement is refused.
    trusted_data:
        The trusted datasets the operator registered (name → file, ``kit.toml``
        ``[trusted_data]``): a job's ``[robust] trusted_dataset`` must name one, whose file
        fits the job's task, or it is refused at submit.
    hub:
        Makes the node hub the runs' transports come from (default: a gRPC
        :class:`~biofed.transport.grpc.NodeHub` with ``heartbeat_interval`` and
        ``missed_heartbeats``; a given factory makes those two unused).
    tracking:
        Experiment tracking (the kit's ``[tracking]``): every training run is logged to
        MLflow (:mod:`biofed.coordinator._tracking`); None tracks nothing.
    """

    def __init__(
        self,
        store: StateStore,
        *,
        heartbeat_interval: float = 2.0,
        missed_heartbeats: int = 3,
        node_wait: float = 60.0,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
        bundles_dir: Path | None = None,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        limits: JobLimits | None = None,
        agreements: AgreementKeeper | None = None,
        hub: HubFactory | None = None,
        trusted_data: Mapping[str, Path] | None = None,
        tracking: TrackingConfig | None = None,
    ) -> None:
        self.store = store
        self.tracking: Tracking | None = None
        if tracking is not None and tracking.enabled:
            self.tracking = make_tracking(tracking, on_failure=self._tracking_failed)
        self.limits = JobLimits() if limits is None else limits
        self.access = RunAccess(agreements)
        self.audit = audit
        self.bundles = BundleStore(bundles_dir)
        self.node_wait = node_wait
        self.clock = clock
        make_hub: HubFactory = hub or functools.partial(
            NodeHub, heartbeat_interval=heartbeat_interval, missed_heartbeats=missed_heartbeats
        )
        self.hub = make_hub(on_node_event=self._node_event, on_wire_error=self._wire_error)
        self.scheduler = RunScheduler(
            store,
            self._execute,
            self._fail,
            max_concurrent_runs=max_concurrent_runs,
            max_attempts=max_attempts,
        )
        self.executor = RunExecutor(
            store,
            self.hub,
            lambda run_id: StoreListener(self.store, run_id, self.audit),
            self.scheduler.stopping,
            node_wait=node_wait,
            audit=self._audit,
            anchor=audit,
            limits=self.limits,
            agreement_rules=self.access.analytics_rules,
            trusted_data=trusted_data,
            agreement_incentives=self.access.incentives,
            tracker=self.tracking,
            releases_model=self.access.releases_model,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Coordinator:
        """Start executing runs (resuming interrupted ones first)."""
        self.scheduler.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the current rounds; unfinished runs stay ``running`` and resume at the
        next start."""
        self.scheduler.stop(timeout)
        if self.tracking is not None:  # what the runs reported so far reaches the tracker
            self.tracking.close(timeout)

    # -- node registry -------------------------------------------------------------------------
    def _node_event(self, node_id: str, event: NodeEvent) -> None:
        properties: dict[str, Any] = {}
        for session in self.hub.sessions():
            if session.node_id == node_id:
                for ds in session.datasets:
                    properties[f"dataset.{ds.name}.examples"] = ds.num_examples
        self.store.upsert_node(
            NodeRow(
                node_id=node_id,
                status=_NODE_STATUS[event],
                last_seen=self.clock(),
                properties=properties,
            )
        )
        self.scheduler.wake()

    def _wire_error(self, run_id: str, server_round: int, node_id: str, message: str) -> None:
        try:
            if self.store.get_run(run_id) is not None:
                self.store.append_event(
                    run_id,
                    round=server_round,
                    kind="reply_rejected",
                    message=message,
                    node_id=node_id,
                )
                return
        except BiofedError:
            pass
        for row in self.store.list_runs([RunStatus.RUNNING]):
            self.store.append_event(
                row.run_id,
                round=row.completed_rounds + 1,
                kind="reply_rejected",
                message=f"upload for run {run_id!r}: {message}",
                node_id=node_id,
            )

    # -- control API (biofed.transport.grpc.ControlHandler) ------------------------------------
    def submit_run(
        self,
        peer: Peer,
        spec_json: str | bytes,
        bundle: bytes = b"",
        agreement: bytes = b"",
        certificates: Mapping[str, bytes] | None = None,
    ) -> RunSummary:
        spec = run_spec_from_json(spec_json, limits=self.limits)
        self.access.admit(peer, spec.agreement, agreement, certificates or {})
        if isinstance(spec, AnalysisJob):
            if bundle:
                raise ProtocolError("an analysis job runs no task bundle: send none")
        else:
            self.executor.trusted_for(spec)  # an unknown or unfitting trusted dataset
            check_incentives(spec, self.executor.policy_for(spec))
            self.bundles.keep(spec.bundle, bundle)
        run_id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        self.store.create_run(run_id, spec.to_json(), peer.name)
        self.store.append_event(run_id, round=0, kind="submitted", message=f"by {peer.name}")
        self._audit(
            "run.submitted",
            {
                "run_id": run_id,
                "owner": peer.name,
                "spec_sha256": hashlib.sha256(spec.to_json().encode()).hexdigest(),
            },
        )
        self.scheduler.wake()
        return self.get_run(peer, run_id)

    def bundle(self, peer: Peer, digest: str) -> bytes:
        """A kept bundle, for a node to fetch (it checks the digest and its own approval)."""
        return self.bundles.get(digest)

    def _row(self, run_id: str) -> RunRow:
        row = self.store.get_run(run_id)
        if row is None:
            raise LookupError(f"no run {run_id!r}")
        return row

    def get_run(self, peer: Peer, run_id: str) -> RunSummary:
        return self._summary(self.access.require(peer, self.store.get_run(run_id)))

    def list_runs(self, peer: Peer) -> list[RunSummary]:
        return [self._summary(r) for r in self.access.visible(peer, self.store.list_runs())]

    def watch_run(
        self, peer: Peer, run_id: str, after_seq: int, follow: bool, alive: Callable[[], bool]
    ) -> Iterator[EventInfo]:
        self.access.require(peer, self.store.get_run(run_id))
        seq = after_seq
        while True:
            rows = self.store.events(run_id, after_seq=seq)
            for e in rows:
                seq = e.seq
                yield EventInfo(
                    seq=e.seq,
                    time=e.time,
                    round=e.round,
                    kind=e.kind,
                    node_id=e.node_id or "",
                    message=e.message,
                )
            if not follow or not alive():
                return
            if not rows and self._row(run_id).status.is_terminal:
                return
            time.sleep(0.1)

    def cancel_run(self, peer: Peer, run_id: str) -> RunSummary:
        row = self.access.require(peer, self.store.get_run(run_id), "cancel")
        if row.status.is_terminal:
            raise ProtocolError(f"run {run_id!r} already ended ({row.status.value})")
        self.store.append_event(
            run_id, round=row.completed_rounds, kind="cancel_requested", message=f"by {peer.name}"
        )
        # Executing here: its engine abandons the round at once and records the end. Not
        # executing (pending, or waiting for a free slot): it ends now.
        if not self.scheduler.cancel(run_id):
            self.executor.cancelled(run_id)
        self.hub.cancel_run(run_id)  # nodes drop what they hold of it
        return self.get_run(peer, run_id)

    def run_result(self, peer: Peer, run_id: str) -> bytes:
        row = self.access.require(peer, self.store.get_run(run_id))
        if not row.status.has_result:
            raise ProtocolError(
                f"run {run_id!r} is {row.status.value}; results exist once finished"
                + (" with at least one completed round" if row.status.is_terminal else "")
            )
        if isinstance(run_spec_from_json(row.spec), AnalysisJob):
            raise ProtocolError(
                f"run {run_id!r} is an analysis: its result is its {ANALYSIS_EVENT} event "
                "(biofed analyze result RUN_ID), not a model"
            )
        spec = JobSpec.from_json(row.spec)
        if spec.agreement is not None and not self.access.releases_model(spec.agreement):
            raise PolicyViolation(
                f"the study agreement {spec.agreement!r} does not release the final model "
                "(outputs.final_model = false)"
            )
        result = model_result(self.store, run_id, spec)
        if result is None:
            raise LookupError(f"run {run_id!r} has no model")
        return result

    def analysis_result(self, peer: Peer, run_id: str) -> str:
        """The result of an analysis run (its ``analysis_result`` event's JSON; read it with
        :func:`biofed.analytics.result_from_json`), under the same access rules as
        :meth:`get_run`.

        Raises
        ------
        PolicyViolation
            The run is not visible to ``peer`` (the same words for a missing run).
        ProtocolError
            The run is not an analysis, or has not finished (its status says why).
        """
        row = self.access.require(peer, self.store.get_run(run_id))
        if not isinstance(run_spec_from_json(row.spec), AnalysisJob):
            raise ProtocolError(f"run {run_id!r} is a training run: its result is a model")
        text = result_event([(e.kind, e.message) for e in self.store.events(run_id)])
        if row.status is not RunStatus.FINISHED or text is None:
            raise ProtocolError(
                f"run {run_id!r} is {row.status.value}; an analysis has a result once finished"
                + (f" ({row.error})" if row.error else "")
            )
        return text

    def run_rounds(self, peer: Peer, run_id: str) -> list[RoundRecord]:
        """The round records of a run (each round's replies, aggregated and per-site
        metrics, failure), under the same access rules as :meth:`get_run` (the coordinator's
        dashboard draws its charts from them).

        Raises
        ------
        PolicyViolation
            The run is not visible to ``peer`` (the same words for a missing run).
        """
        self.access.require(peer, self.store.get_run(run_id))
        return [r.record for r in self.store.rounds(run_id)]

    def list_nodes(self, peer: Peer) -> list[NodeSummary]:
        return [node_summary(n) for n in self.store.list_nodes()]

    def _summary(self, row: RunRow) -> RunSummary:
        return run_summary(self.store, row)

    # -- execution (biofed.coordinator._scheduler, biofed.coordinator._executor) ---------------
    def _execute(self, row: RunRow, cancel: threading.Event) -> None:
        """Execute one run (the scheduler calls this on the run's own thread)."""
        self.executor.execute(row, cancel)

    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append(event, data)

    def _tracking_failed(self, run_id: str, reason: str) -> None:
        """Record that a run's tracking failed (the run goes on, untracked)."""
        row = self.store.get_run(run_id)
        self.store.append_event(
            run_id,
            round=0 if row is None else row.completed_rounds,
            kind=TRACKING_FAILED_EVENT,
            message=f"experiment tracking failed, the run goes on untracked: {reason}",
        )

    def _fail(self, run_id: str, message: str) -> None:
        """Mark the run failed (the scheduler calls this for any exception of the run) and
        tell the nodes to drop what they still hold of it."""
        self.executor.fail(run_id, message)
        self.hub.cancel_run(run_id)
