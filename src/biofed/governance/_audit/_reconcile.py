"""Reconciling what nodes say they sent with what the coordinator says it received.

A node logs every payload that leaves the site as a :data:`SENT_EVENT` entry and the
coordinator logs every payload it accepts as a :data:`RECEIVED_EVENT` entry::

    round.sent      (written by the node; the node id is the entry's writer)
        {"run_id": str, "round": int >= 0, "kind": "train" | "evaluate" | ...,
         "payload_sha256": 64 lowercase hex, "bytes": int >= 0, ...}

    round.received  (written by the coordinator)
        {"run_id": str, "round": int >= 0, "node_id": str, "kind": str,
         "payload_sha256": 64 lowercase hex, "bytes": int >= 0, ...}

``payload_sha256`` and ``bytes`` are the SHA-256 and length of the exact reply bytes on the
wire (the encoded reply, before transport chunking); further keys (metric names, ε spent) may
be added. Entries are paired by (run_id, round, node id, kind), in log order.

Beyond the payloads, :func:`reconcile` reports entries that must exist but do not
(``ReconcileReport.missing``): a log that ends before, or differs at, a head of it the other
party recorded (:func:`~biofed.governance.check_against`, both ways, so a dropped
``budget.debited``, ``job.accepted`` or ``bundle.approved`` before an acknowledged head is
evident), and in a node's log a training or evaluation ``round.sent`` with no
``job.accepted`` before it, a ``round.sent`` with an ε and no ``budget.debited`` for its round,
and a ``job.accepted`` of a bundle with no ``bundle.approved`` of it in force.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from biofed.core import MessageKind, PolicyViolation, Reply, encode_parameters
from biofed.governance._audit._anchor import check_against
from biofed.governance._audit._entry import AuditEntry, AuditLogError
from biofed.governance._audit._verify import AuditSource, scan_log

SENT_EVENT = "round.sent"
"""Event a node logs for each payload it sends (schema in this module's docstring)."""

RECEIVED_EVENT = "round.received"
"""Event the coordinator logs for each payload it receives (schema in this module's docstring)."""


def reply_payload(reply: Reply) -> bytes:
    """The bytes both sides hash for a reply: the safetensors encoding of its parameters
    (empty for evaluations), or for a secure-aggregation stage the protocol message itself
    (``extras["secagg"]`` as safetensors: the masked vector, keys or shares)."""
    if reply.kind is MessageKind.SECAGG:
        return b"".join(encode_parameters(v) for _, v in sorted(reply.extras.items()))
    return b"" if reply.parameters is None else encode_parameters(reply.parameters)


_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    """One payload as one side logged it (``seq`` is the entry's number in that log)."""

    run_id: str
    round: int
    node_id: str
    kind: str
    payload_sha256: str
    bytes: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Pairing:
    """A sent payload and the receipt paired with it; ``differs`` names unequal fields."""

    sent: Transfer
    received: Transfer
    differs: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileReport:
    """What :func:`reconcile` found.

    Attributes
    ----------
    coordinator, nodes:
        The writers of the logs (as their certificates name them).
    matched, mismatched:
        Pairs whose digest and size agree, and pairs where either differs.
    sent_not_received, received_not_sent:
        Payloads only one side logged.
    invalid:
        Events of the two kinds whose data do not follow the schema (one line each).
    unchecked_nodes:
        Nodes the coordinator logged receipts from but whose logs were not given.
    missing:
        Entries that must exist but do not (one line each): a log truncated before a head
        the other party recorded, or a node's ``round.sent`` without the ``job.accepted``,
        ``budget.debited`` or ``bundle.approved`` that must precede it.
    """

    coordinator: str
    nodes: tuple[str, ...]
    matched: tuple[Pairing, ...]
    mismatched: tuple[Pairing, ...]
    sent_not_received: tuple[Transfer, ...]
    received_not_sent: tuple[Transfer, ...]
    invalid: tuple[str, ...]
    unchecked_nodes: tuple[str, ...]
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every logged payload has an equal counterpart on the other side and no
        entry that must exist is missing."""
        return not (
            self.mismatched
            or self.sent_not_received
            or self.received_not_sent
            or self.invalid
            or self.missing
        )


def reconcile(
    coordinator_log: AuditSource | str | os.PathLike[str],
    node_logs: Sequence[AuditSource | str | os.PathLike[str]],
    *,
    run_id: str | None = None,
    now: dt.datetime | None = None,
) -> ReconcileReport:
    """Verify the logs, then pair each node's sent payloads with the coordinator's receipts.

    Parameters
    ----------
    coordinator_log, node_logs:
        The logs, each an :class:`AuditSource` or a path whose folder holds ``cert.pem`` and
        ``ca.pem`` (:meth:`AuditSource.beside`).
    run_id:
        Only reconcile this run.
    now:
        The time to check the certificates at (default: now, UTC).

    Raises
    ------
    AuditLogError
        If a log fails :func:`verify_log` (the message names the log and the entry).
    PolicyViolation
        If a certificate is refused, is not the coordinator's (for ``coordinator_log``) or a
        site's (for ``node_logs``), or two node logs have the same writer.
    ConfigurationError
        If a log or certificate cannot be read.

    Security notes
    --------------
    Detects a payload altered, injected or dropped between a site and the coordinator, or a
    party that misreports what it sent or got: each side's claims are signed in its own
    verified log (see :func:`verify_log`), so a disagreement is attributable evidence.
    """
    wanted = (SENT_EVENT, RECEIVED_EVENT)

    def keep(entry: AuditEntry) -> bool:
        if entry.event in _APPROVAL_EVENTS:
            return True
        if entry.event not in (*wanted, *_PREREQUISITE_EVENTS):
            return False
        return run_id is None or entry.data.get("run_id") == run_id

    invalid: list[str] = []
    source = _source(coordinator_log)
    coordinator, received = _scan(source, {"coordinator"}, keep, now)
    receipts: dict[tuple[str, int, str, str], deque[Transfer]] = defaultdict(deque)
    for entry in received:
        if entry.event == RECEIVED_EVENT and (item := _transfer(entry, None, source, invalid)):
            receipts[(item.run_id, item.round, item.node_id, item.kind)].append(item)
    nodes: list[str] = []
    matched: list[Pairing] = []
    mismatched: list[Pairing] = []
    missing: list[Transfer] = []
    coordinator_source = source
    absent: list[str] = []
    for node_log in node_logs:
        source = _source(node_log)
        node, sent = _scan(source, {"site"}, keep, now)
        if node in nodes:
            raise PolicyViolation(f"two node logs are written by {node!r}")
        nodes.append(node)
        absent += _unbacked(sent, source)
        for log, other in ((source, coordinator_source), (coordinator_source, source)):
            absent += check_against(log, other, now=now).problems
        for entry in sent:
            if entry.event != SENT_EVENT or not (item := _transfer(entry, node, source, invalid)):
                continue
            queue = receipts.get((item.run_id, item.round, item.node_id, item.kind))
            if not queue:
                missing.append(item)
                continue
            got = queue.popleft()
            differs = tuple(
                f for f in ("payload_sha256", "bytes") if getattr(item, f) != getattr(got, f)
            )
            (mismatched if differs else matched).append(
                Pairing(sent=item, received=got, differs=differs)
            )
    extra = [item for queue in receipts.values() for item in queue if item.node_id in nodes]
    unchecked = sorted({item.node_id for queue in receipts.values() for item in queue} - set(nodes))
    return ReconcileReport(
        coordinator=coordinator,
        nodes=tuple(nodes),
        matched=tuple(matched),
        mismatched=tuple(mismatched),
        sent_not_received=tuple(missing),
        received_not_sent=tuple(sorted(extra, key=lambda t: t.seq)),
        invalid=tuple(invalid),
        unchecked_nodes=tuple(unchecked),
        missing=tuple(dict.fromkeys(absent)),
    )


_PREREQUISITE_EVENTS = ("job.accepted", "budget.debited")
_APPROVAL_EVENTS = ("bundle.approved", "bundle.revoked")


def _unbacked(entries: Sequence[AuditEntry], source: AuditSource) -> list[str]:
    """A node's sent payloads and accepted jobs that lack the entry that must precede them
    in its own log (the log's order is the node's order of events)."""
    accepted: set[tuple[Any, Any, Any]] = set()
    debited: set[tuple[Any, Any]] = set()
    approved: set[str] = set()
    problems: list[str] = []
    for entry in entries:
        data = entry.data
        where = f"{source.path} entry {entry.seq}"
        if entry.event in _APPROVAL_EVENTS:
            digest = data.get("bundle", data.get("digest"))
            if isinstance(digest, str):
                (approved.add if entry.event == "bundle.approved" else approved.discard)(digest)
        elif entry.event == "job.accepted":
            accepted.add((data.get("run_id"), data.get("round"), data.get("kind")))
            bundle = data.get("bundle")
            if isinstance(bundle, str) and bundle not in approved:
                problems.append(
                    f"{where}: job.accepted runs bundle {bundle[:16]}… with no bundle.approved "
                    "of it in force before (the approval is missing from the log)"
                )
        elif entry.event == "budget.debited":
            debited.add((data.get("run_id"), data.get("round")))
        elif entry.event == SENT_EVENT:
            run, rnd, kind = data.get("run_id"), data.get("round"), data.get("kind")
            if kind in ("train", "evaluate", "query") and (run, rnd, kind) not in accepted:
                problems.append(
                    f"{where}: round.sent of run {run!r} round {rnd} ({kind}) has no job.accepted "
                    "before it (the decision is missing from the log)"
                )
            if "dp_epsilon" in data and (run, rnd) not in debited:
                problems.append(
                    f"{where}: round.sent of run {run!r} round {rnd} spent ε with no "
                    "budget.debited before it (the debit is missing from the log)"
                )
    return problems


def _source(log: AuditSource | str | os.PathLike[str]) -> AuditSource:
    return log if isinstance(log, AuditSource) else AuditSource.beside(log)


def _scan(
    source: AuditSource,
    roles: set[str],
    keep: Callable[[AuditEntry], bool],
    now: dt.datetime | None,
) -> tuple[str, list[AuditEntry]]:
    report, entries = scan_log(
        source.path, source.cert_pem, source.ca_pem, roles=roles, now=now, keep=keep
    )
    if not report.ok:
        raise AuditLogError(
            f"{source.path}: FAILED at entry {report.first_bad}: {report.reason}; "
            "cannot reconcile against a log that does not verify"
        )
    return report.writer, entries


def _transfer(
    entry: AuditEntry, node: str | None, source: AuditSource, invalid: list[str]
) -> Transfer | None:
    data: Mapping[str, Any] = entry.data
    run, kind, digest = data.get("run_id"), data.get("kind"), data.get("payload_sha256")
    node_id = node if node is not None else data.get("node_id")
    number, size = data.get("round"), data.get("bytes")
    if (
        isinstance(run, str)
        and run
        and isinstance(kind, str)
        and kind
        and isinstance(node_id, str)
        and node_id
        and isinstance(digest, str)
        and _HEX64.fullmatch(digest)
        and _count(number)
        and _count(size)
    ):
        return Transfer(
            run_id=run,
            round=number,
            node_id=node_id,
            kind=kind,
            payload_sha256=digest,
            bytes=size,
            seq=entry.seq,
        )
    invalid.append(
        f"{source.path} entry {entry.seq}: {entry.event} data does not follow the schema "
        "(run_id, round, kind, payload_sha256, bytes" + (", node_id)" if node is None else ")")
    )
    return None


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
