"""The coordinator runtime: accepts runs from researchers, drives them over the connected
nodes with the round engine, and persists every step so a restart resumes where it stopped.

This module is the control API (submit, status, logs, cancel, results, nodes). Execution
lives elsewhere: :mod:`biofed.coordinator._scheduler` decides which runs execute (several at
once, each failing alone, interrupted ones first) and :mod:`biofed.coordinator._executor`
executes one run with the round engine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from biofed.coordinator._access import RunAccess
from biofed.coordinator._agreements import AgreementKeeper
from biofed.coordinator._executor import RunExecutor
from biofed.coordinator._job import JobSpec
from biofed.coordinator._job_limits import JobLimits
from biofed.coordinator._privacy_report import PRIVACY_EVENT, privacy_report, spend_message
from biofed.coordinator._records import RoundRecord, RunEvent
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
from biofed.core import (
    BiofedError,
    ConfigurationError,
    PolicyViolation,
    ProtocolError,
    Reply,
    encode_parameters,
)
from biofed.governance import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    RECEIVED_EVENT,
    AuditLog,
    anchor_data,
    check_digest,
    read_bundle,
    reply_payload,
)
from biofed.transport.grpc import (
    EventInfo,
    NodeEvent,
    NodeHub,
    NodeSummary,
    Peer,
    RunSummary,
)

_PROBLEM_EVENTS = frozenset(
    {"reply_rejected", "reply_late", "no_reply", "send_failed", "round_failed", "failed"}
)
_NODE_STATUS: dict[str, NodeStatus] = {
    "connected": "online",
    "reconnected": "online",
    "disconnected": "offline",
    "lost": "lost",
}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def payload_digest(reply: Reply) -> tuple[str, int]:
    """SHA-256 and size of what a reply carried (:func:`~biofed.governance.reply_payload`,
    the same definition a node uses for its ``round.sent``)."""
    payload = reply_payload(reply)
    return hashlib.sha256(payload).hexdigest(), len(payload)


class _StoreListener:
    """Engine hooks that write the run's progress into the state store (and, when the
    coordinator keeps one, what it accepted from each node into its audit log)."""

    def __init__(self, store: StateStore, run_id: str, audit: AuditLog | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.audit = audit

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        self.store.append_event(
            self.run_id,
            round=server_round,
            kind="round_started",
            message=f"{num_selected} sites asked to train",
        )

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        # The node's audit head is anchored here: in the receipt, or for a refusal in its
        # own entry (biofed.governance._audit_anchor: truncation becomes evident).
        head = reply.audit_head
        anchor = {ANCHOR_KEY: anchor_data(reply.node_id, head)} if head else {}
        if accepted and self.audit is not None:
            digest, size = payload_digest(reply)
            self.audit.append(
                RECEIVED_EVENT,
                {
                    "run_id": reply.run_id,
                    "round": reply.round,
                    "node_id": reply.node_id,
                    "kind": reply.kind.value,
                    "payload_sha256": digest,
                    "bytes": size,
                    **anchor,
                },
            )
        elif self.audit is not None and anchor and reply.error is not None:
            where = {"run_id": reply.run_id, "round": reply.round, "kind": reply.kind.value}
            self.audit.append(ANCHOR_EVENT, {**anchor, **where, "node_id": reply.node_id})
        if accepted:
            self.store.append_event(
                self.run_id,
                round=server_round,
                kind=f"{reply.kind.value}_reply",
                message="accepted",
                node_id=reply.node_id,
            )
            spend = spend_message(reply)
            if spend is not None:  # the site's own figure for its ε(δ) so far in this job
                self.store.append_event(
                    self.run_id,
                    round=server_round,
                    kind=PRIVACY_EVENT,
                    message=spend,
                    node_id=reply.node_id,
                )

    def on_round_end(self, record: RoundRecord) -> None:
        """Nothing: ``round_completed`` is committed with the round (:meth:`completed_event`)."""

    def completed_event(self, record: RoundRecord) -> RunEvent:
        """The round's ``round_completed`` event, stored in the round's own transaction."""
        metrics = {
            **{f"train.{k}": v for k, v in record.train_metrics.items()},
            **{f"eval.{k}": v for k, v in record.eval_metrics.items()},
        }
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        message = record.failed or f"{record.num_replies}/{record.num_selected} replies; {text}"
        return RunEvent(round=record.round, kind="round_completed", message=message)

    def on_event(self, event: RunEvent) -> None:
        self.store.append_event(
            self.run_id,
            round=event.round,
            kind=event.kind,
            message=event.message,
            node_id=event.node_id,
        )


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
    ) -> None:
        self.store = store
        self.limits = JobLimits() if limits is None else limits
        self.access = RunAccess(agreements)
        self.audit = audit
        self.bundles_dir = bundles_dir
        self.node_wait = node_wait
        self.clock = clock
        self.hub = NodeHub(
            heartbeat_interval=heartbeat_interval,
            missed_heartbeats=missed_heartbeats,
            on_node_event=self._node_event,
            on_wire_error=self._wire_error,
        )
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
            lambda run_id: _StoreListener(self.store, run_id, self.audit),
            self.scheduler.stopping,
            node_wait=node_wait,
            audit=self._audit,
            anchor=audit,
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
        spec = JobSpec.from_json(spec_json, limits=self.limits)
        self.access.admit(peer, spec.agreement, agreement, certificates or {})
        self._keep_bundle(spec, bundle)
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

    def _bundle_path(self, digest: str) -> Path:
        if self.bundles_dir is None:
            raise ConfigurationError("this coordinator keeps no task bundles")
        return self.bundles_dir / f"{check_digest(digest)}.zip"

    def _keep_bundle(self, spec: JobSpec, data: bytes) -> None:
        """Check the bundle a job names and keep it for the nodes (before the run exists)."""
        if spec.bundle is None:
            if data:
                raise ConfigurationError("a bundle was sent with a job that names none")
            return
        path = self._bundle_path(spec.bundle)
        if not data:
            if not path.is_file():
                raise ConfigurationError(
                    f"the job names bundle {spec.bundle[:12]}…: send it with the job "
                    "(biofed run submit JOB --bundle FILE)"
                )
            return
        read_bundle(data, expected_digest=spec.bundle)  # refuses a mismatch or a bad archive
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".part{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def bundle(self, peer: Peer, digest: str) -> bytes:
        """A kept bundle, for a node to fetch (it checks the digest and its own approval)."""
        path = self._bundle_path(digest)
        if not path.is_file():
            raise LookupError(f"no bundle {digest[:12]}… here")
        return path.read_bytes()

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
        checkpoint = self.store.latest_checkpoint(run_id)
        if checkpoint is None:
            raise LookupError(f"run {run_id!r} has no model")
        spec = JobSpec.from_json(row.spec)
        if spec.agreement is not None and not self.access.releases_model(spec.agreement):
            raise PolicyViolation(
                f"the study agreement {spec.agreement!r} does not release the final model "
                "(outputs.final_model = false)"
            )
        metadata = {"run_id": run_id, "round": str(checkpoint.round)}
        privacy = privacy_report(
            spec, self.store.events(run_id), [r.record for r in self.store.rounds(run_id)]
        )
        if privacy is not None:  # the guarantee travels with the model
            metadata["privacy"] = json.dumps(privacy, sort_keys=True)
        return encode_parameters(checkpoint.parameters, metadata=metadata)

    def list_nodes(self, peer: Peer) -> list[NodeSummary]:
        return [
            NodeSummary(
                node_id=n.node_id,
                status=n.status,
                last_seen=n.last_seen,
                properties_json=json.dumps(dict(n.properties), sort_keys=True),
            )
            for n in self.store.list_nodes()
        ]

    def _summary(self, row: RunRow) -> RunSummary:
        spec: JobSpec | None = None
        summary: dict[str, Any]
        try:
            parsed = JobSpec.from_json(row.spec)
        except ConfigurationError as exc:
            # a run stored under older rules: it is shown (and fails alone), never breaks
            # ListRuns for everyone
            summary = {"spec_error": str(exc).splitlines()[0]}
        else:
            spec = parsed
            summary = {"strategy": spec.strategy, "dataset": spec.dataset, "task": spec.task}
        rounds = self.store.rounds(row.run_id)
        if rounds:
            failed = sum(r.record.failed is not None for r in rounds)
            summary["rounds"] = {"completed": len(rounds) - failed, "failed": failed}
            last = rounds[-1].record
            evaluated = [r.record for r in rounds if r.record.eval_metrics]
            summary["last_round"] = {
                "round": last.round,
                "replies": last.num_replies,
                "failed": last.failed,
                "train_metrics": {k: _finite(v) for k, v in last.train_metrics.items()},
            }
            if evaluated:
                final = evaluated[-1]
                summary["evaluation"] = {
                    "round": final.round,
                    "metrics": {k: _finite(v) for k, v in final.eval_metrics.items()},
                    "sites": {
                        n: {k: _finite(v) for k, v in m.items()}
                        for n, m in final.node_eval_metrics.items()
                    },
                }
        events = self.store.events(row.run_id)
        if row.status in (RunStatus.PENDING, RunStatus.RUNNING):
            waiting = [e for e in events if e.kind == "waiting_for_nodes"]
            started = [e for e in events if e.kind == "round_started"]
            if waiting and (not started or waiting[-1].seq > started[-1].seq):
                summary["waiting"] = waiting[-1].message  # why the run does not go on
        privacy = None if spec is None else privacy_report(spec, events, [r.record for r in rounds])
        if privacy is not None:
            summary["privacy"] = privacy
        problems = [
            {"round": e.round, "node": e.node_id, "kind": e.kind, "message": e.message}
            for e in events
            if e.kind in _PROBLEM_EVENTS
        ]
        if problems:  # e.g. a site's refusal, naming the rule of its policy that failed
            summary["problems"] = problems[-20:]
        return RunSummary(
            run_id=row.run_id,
            status=row.status.value,
            owner=row.owner,
            completed_rounds=row.completed_rounds,
            total_rounds=0 if spec is None else spec.rounds,
            error=row.error or "",
            summary_json=json.dumps(summary, sort_keys=True),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    # -- execution (biofed.coordinator._scheduler, biofed.coordinator._executor) ---------------
    def _execute(self, row: RunRow, cancel: threading.Event) -> None:
        """Execute one run (the scheduler calls this on the run's own thread)."""
        self.executor.execute(row, cancel)

    def _audit(self, event: str, data: dict[str, Any]) -> None:
        if self.audit is not None:
            self.audit.append(event, data)

    def _fail(self, run_id: str, message: str) -> None:
        """Mark the run failed (the scheduler calls this for any exception of the run) and
        tell the nodes to drop what they still hold of it."""
        self.executor.fail(run_id, message)
        self.hub.cancel_run(run_id)
