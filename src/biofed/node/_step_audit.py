"""Step: audit what leaves, and anchor the coordinator's audit head.

On the way in the coordinator's head that came with the instruction is recorded (once per
distinct head); on the way out every successful reply is logged as ``round.sent`` (where it
belongs, the payload's SHA-256 and size, the metric names, and what the inner steps added)
*before* it leaves, and the reply carries this node's head once everything about it is
logged (:mod:`biofed.governance` anchors: each log's head is kept in the other's, so that a
truncated log is evident).

Security notes
--------------
Threat: a site that cannot show what it released, or a log truncated after the fact. If the
entry cannot be written, nothing leaves (fail closed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from biofed.core import BiofedError, Instruction, MessageKind, PolicyViolation, Reply
from biofed.governance import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    COORDINATOR_PEER,
    SENT_EVENT,
    AuditLog,
    anchor_data,
    reply_payload,
)
from biofed.node._chain import Next, Work


def record(audit: AuditLog, event: str, data: Mapping[str, Any], *, strict: bool = False) -> None:
    """Append to the audit log; with ``strict`` a failure raises PolicyViolation (so the
    action it would record does not happen), otherwise it is ignored (the action it records
    is already a refusal)."""
    try:
        audit.append(event, data)
    except (BiofedError, OSError) as exc:
        if strict:
            raise PolicyViolation(f"audit: cannot write the audit log ({exc})") from None


def where(instruction: Instruction) -> dict[str, Any]:
    """Where an entry belongs: run, round and kind."""
    return {
        "run_id": instruction.run_id,
        "round": instruction.round,
        "kind": instruction.kind.value,
    }


def withhold(
    audit: AuditLog | None, instruction: Instruction, exc: BiofedError, node_id: str
) -> Reply:
    """The error reply for a reply that may not leave, audited as ``round.withheld``."""
    if audit is not None:
        record(audit, "round.withheld", {**where(instruction), "rule": str(exc)})
    return Reply.error_for(instruction, exc, node_id=node_id)


def sent_entry(reply: Reply, data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``round.sent`` entry: where it belongs, and what left (the payload's SHA-256 and
    size, as :func:`~biofed.governance.reply_payload` defines them, and metric names)."""
    payload = reply_payload(reply)
    return {
        **data,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "metrics": sorted(reply.metrics),
    }


class AuditStep:
    """Records the coordinator's head, and what leaves, in the site's signed audit log."""

    def __init__(self, node_id: str, audit: AuditLog) -> None:
        self.node_id = node_id
        self.audit = audit
        self._peer_head = ""  # the coordinator's audit head last recorded
        self._lock = threading.Lock()

    def __call__(self, work: Work, call_next: Next) -> Reply:
        instruction = work.instruction
        if instruction.audit_head:
            self._anchor(instruction)
        reply = self._release(work, call_next(work))
        try:
            return dataclasses.replace(reply, audit_head=self.audit.head())
        except (BiofedError, OSError) as exc:  # the log broke: nothing leaves
            return Reply.error_for(
                instruction, PolicyViolation(f"audit: {exc}"), node_id=self.node_id
            )

    def _anchor(self, instruction: Instruction) -> None:
        """Record the coordinator's audit head (once per distinct head)."""
        with self._lock:
            if instruction.audit_head == self._peer_head:
                return
            self._peer_head = instruction.audit_head
        record(
            self.audit,
            ANCHOR_EVENT,
            {
                ANCHOR_KEY: anchor_data(COORDINATOR_PEER, instruction.audit_head),
                **where(instruction),
            },
        )

    def _release(self, work: Work, reply: Reply) -> Reply:
        if not reply.ok:
            return reply
        instruction = work.instruction
        data = {**where(instruction), **work.sent}
        secure = instruction.kind is MessageKind.SECAGG
        if secure:
            stage = instruction.directives.secagg_stage
            data["stage"] = "" if stage is None else stage.value
        try:
            record(self.audit, SENT_EVENT, sent_entry(reply, data), strict=True)
        except BiofedError as exc:
            if secure:
                return Reply.error_for(instruction, exc, node_id=self.node_id)
            return withhold(self.audit, instruction, exc, self.node_id)
        return reply
