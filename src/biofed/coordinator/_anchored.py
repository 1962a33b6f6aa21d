"""The coordinator's half of audit-head anchoring: its head goes out with every instruction.

See :mod:`biofed.governance._audit_anchor` for the protocol and the threat (a truncated audit
log); the node records the head it receives in its own signed log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from biofed.core import Instruction, NodeInfo, Reply
from biofed.governance import AuditLog
from biofed.transport import Transport


class AnchoredTransport(Transport):
    """Wraps a run's transport: each instruction carries the coordinator's current audit
    head (which covers its receipts of that node's earlier replies).

    Security notes
    --------------
    The head is read when the instruction is sent, so it anchors every entry the
    coordinator wrote before it in the node's log (Crosby & Wallach 2009: truncation is
    evident against a head that another party holds).
    """

    def __init__(self, inner: Transport, audit: AuditLog) -> None:
        self._inner = inner
        self._audit = audit

    def available_nodes(self) -> Sequence[NodeInfo]:
        return self._inner.available_nodes()

    def send(self, instruction: Instruction) -> None:
        head = self._audit.head()
        self._inner.send(dataclasses.replace(instruction, audit_head=head))

    def receive(self, timeout: float | None = None) -> Reply | None:
        return self._inner.receive(timeout)

    def close(self) -> None:
        self._inner.close()
