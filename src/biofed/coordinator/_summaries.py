"""What the coordinator writes and tells about a run: the engine listener that records a
run's progress in the state store (and what each node sent in the coordinator's audit log),
and the run summary researchers read (``biofed run status``)."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from biofed.coordinator._analysis import ANALYSIS_EVENT, PASS_EVENT
from biofed.coordinator._analysis_job import AnalysisJob, RunSpec, run_spec_from_json
from biofed.coordinator._privacy_report import privacy_report, spend_event
from biofed.coordinator._records import RoundRecord, RunEvent
from biofed.coordinator._store import NodeRow, RunRow, RunStatus, StateStore
from biofed.core import ConfigurationError, Reply
from biofed.governance import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    RECEIVED_EVENT,
    AuditLog,
    anchor_data,
    reply_payload,
)
from biofed.transport.grpc import NodeSummary, RunSummary

_PROBLEM_EVENTS = frozenset(
    {
        "reply_rejected",
        "reply_late",
        "no_reply",
        "send_failed",
        "round_failed",
        "failed",
        # contribution measurement and the incentive policy (issue 17)
        "contribution_failed",
        "contributions_failed",
        "incentives_failed",
        # experiment tracking (issue 16): the run goes on untracked
        "tracking_failed",
    }
)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def payload_digest(reply: Reply) -> tuple[str, int]:
    """SHA-256 and size of what a reply carried (:func:`~biofed.governance.reply_payload`,
    the same definition a node uses for its ``round.sent``)."""
    payload = reply_payload(reply)
    return hashlib.sha256(payload).hexdigest(), len(payload)


class StoreListener:
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
            spend = spend_event(server_round, reply)
            if spend is not None:  # the site's own figure for its ε(δ) so far in this job
                self.on_event(spend)

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
            data=event.data,
        )


def run_summary(store: StateStore, row: RunRow) -> RunSummary:
    """What ``biofed run status`` shows of a run: its job, rounds, last round, evaluation,
    why it waits, its privacy report and its latest problems."""
    spec: RunSpec | None = None
    summary: dict[str, Any]
    try:
        parsed = run_spec_from_json(row.spec)
    except ConfigurationError as exc:
        # a run stored under older rules: it is shown (and fails alone), never breaks
        # ListRuns for everyone
        summary = {"spec_error": str(exc).splitlines()[0]}
    else:
        spec = parsed
        if isinstance(spec, AnalysisJob):
            return _analysis_summary(store, row, spec)
        summary = {"strategy": spec.strategy, "dataset": spec.dataset, "task": spec.task}
    rounds = store.rounds(row.run_id)
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
    events = store.events(row.run_id)
    if row.status in (RunStatus.PENDING, RunStatus.RUNNING):
        waiting = [e for e in events if e.kind == "waiting_for_nodes"]
        started = [e for e in events if e.kind == "round_started"]
        if waiting and (not started or waiting[-1].seq > started[-1].seq):
            summary["waiting"] = waiting[-1].message  # why the run does not go on
    privacy = None
    if spec is not None and not isinstance(spec, AnalysisJob):
        privacy = privacy_report(spec, events, [r.record for r in rounds])
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
        total_rounds=0 if spec is None or isinstance(spec, AnalysisJob) else spec.rounds,
        error=row.error or "",
        summary_json=json.dumps(summary, sort_keys=True),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _analysis_summary(store: StateStore, row: RunRow, job: AnalysisJob) -> RunSummary:
    """What ``biofed run status`` shows of an analysis run: its query, passes, whether its
    result is in, why it waits and its latest problems (the result itself is read with
    :meth:`~biofed.coordinator.Coordinator.analysis_result`)."""
    events = store.events(row.run_id)
    resumed = [e.seq for e in events if e.kind == "resumed"]
    since = resumed[-1] if resumed else -1  # a restarted query counts its passes anew
    passes = [e for e in events if e.kind == PASS_EVENT and e.seq > since]
    summary: dict[str, Any] = {
        "analysis": job.query.kind,
        "dataset": job.dataset,
        "secure": job.secure,
        "passes": len(passes),
        "result": any(e.kind == ANALYSIS_EVENT for e in events),
    }
    if passes:
        summary["last_pass"] = passes[-1].message
    if row.status in (RunStatus.PENDING, RunStatus.RUNNING):
        waiting = [e for e in events if e.kind == "waiting_for_nodes"]
        if waiting and (not passes or waiting[-1].seq > passes[-1].seq):
            summary["waiting"] = waiting[-1].message
    problems = [
        {"round": e.round, "node": e.node_id, "kind": e.kind, "message": e.message}
        for e in events
        if e.kind in _PROBLEM_EVENTS
    ]
    if problems:
        summary["problems"] = problems[-20:]
    return RunSummary(
        run_id=row.run_id,
        status=row.status.value,
        owner=row.owner,
        completed_rounds=0,
        total_rounds=0,
        error=row.error or "",
        summary_json=json.dumps(summary, sort_keys=True),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def node_summary(node: NodeRow) -> NodeSummary:
    """What ``biofed nodes`` shows of a node."""
    return NodeSummary(
        node_id=node.node_id,
        status=node.status,
        last_seen=node.last_seen,
        properties_json=json.dumps(dict(node.properties), sort_keys=True),
    )
