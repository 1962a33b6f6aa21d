"""Anchoring each audit log's head in the other party's log, so that truncation is evident.

Threat: whoever can write a participant's files removes the newest entries of its log —
``head -n -3 audit.jsonl`` — to hide a ``budget.debited``, a ``job.accepted`` or a
``round.received``. What remains is still a valid hash chain with valid signatures: a chain
proves that nothing was changed *before* a head, never that the head is the last one. As in
RFC 6962's consistency proofs (§2.1.2) and Crosby & Wallach, *Efficient Data Structures for
Tamper-Evident Logging* (USENIX Security 2009), truncation is only evident against a head
that somebody else holds; here each party holds the other's, in its own signed log.

Protocol (carried by :attr:`~biofed.core.Reply.audit_head` and
:attr:`~biofed.core.Instruction.audit_head`, ``"<seq>:<hash>"``):

* every reply a node sends carries its head once the reply is logged (``round.sent``,
  ``job.refused``…); the coordinator records it in its own log, in the ``round.received`` of
  an accepted reply or in an :data:`ANCHOR_EVENT` entry for a refusal;
* every instruction the coordinator sends carries its head (which covers its receipts of
  that node's earlier replies); the node records it in an :data:`ANCHOR_EVENT` entry before
  acting on the instruction.

Both records keep the other party's head under the key :data:`ANCHOR_KEY` of their data::

    "anchor": {"peer": "<node id>" | "coordinator", "seq": <int >= 1>, "hash": "<64 hex>"}

:func:`check_against` then finds, for a log, every head of its writer that the other log
records, and reports a log that ends before one of them (truncated) or holds another entry
at that place (rewritten). :func:`check_expected_head` does the same for a head recorded out
of band (``biofed audit verify LOG --expect-head HEAD``).

Limits: a head is anchored only once the other party has seen it. The newest entries of a
log, written after its last exchange (the coordinator's receipts of a run's last round and
its ``run.finished`` until it next instructs that node), are evident only against a head
kept elsewhere (``--expect-head``). A writer who holds its own key can rewrite its whole log
consistently, but not the other party's record of its head: the check names the entry.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from biofed.core import ConfigurationError
from biofed.governance._audit._entry import AuditEntry
from biofed.governance._audit._verify import AuditSource, VerifyReport, scan_log
from biofed.identity import identify_peer

ANCHOR_EVENT = "audit.anchored"
"""Event recording the other party's audit head outside a ``round.received``."""

ANCHOR_KEY = "anchor"
"""The data key under which an entry records the other party's head."""

COORDINATOR_PEER = "coordinator"
"""The ``peer`` a node writes for its coordinator's head (a node has one coordinator)."""

EXPECTED_HEAD = "--expect-head"
"""The ``witness`` of a head given by hand (:func:`check_expected_head`)."""

_HEAD = re.compile(r"(?:([1-9][0-9]{0,17}):)?([0-9a-f]{64})")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditHead:
    """A position in a log: entry ``seq`` has hash ``hash`` (``seq`` 0: any position)."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """``"<seq>:<hash>"`` or a bare 64-hex ``"<hash>"`` (then ``seq`` is 0).

        Raises
        ------
        ConfigurationError
            If ``text`` is neither.
        """
        match = _HEAD.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if match is None:
            raise ConfigurationError(
                f"an audit head is '<seq>:<64 hex>' or '<64 hex>', got {str(text)[:80]!r}"
            )
        return cls(seq=int(match.group(1) or 0), hash=match.group(2))

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}" if self.seq else self.hash


@dataclass(frozen=True, slots=True, kw_only=True)
class Anchor:
    """A head of ``peer``'s log, recorded in entry ``seq`` of another log."""

    peer: str
    head: AuditHead
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AnchorReport:
    """What :func:`check_against` or :func:`check_expected_head` found.

    Attributes
    ----------
    writer:
        Whose log was checked.
    witness:
        Whose log held the heads (the other party's name, or ``"--expect-head"``).
    log:
        The checked log's own verification.
    anchors:
        How many recorded heads of ``writer`` were checked.
    latest:
        The furthest head checked, or None when there was none.
    problems:
        One line each: a truncation, a rewritten entry, a witness log that does not verify.
    """

    writer: str
    witness: str
    log: VerifyReport
    anchors: int
    latest: AuditHead | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No problem found (the log itself verified, and holds every recorded head)."""
        return self.log.ok and not self.problems


def anchor_data(peer: str, head: str) -> dict[str, Any]:
    """The :data:`ANCHOR_KEY` value recording ``peer``'s head ``"<seq>:<hash>"``."""
    parsed = AuditHead.parse(head)
    if not parsed.seq:
        raise ConfigurationError("an anchored audit head needs its seq")
    return {"peer": peer, "seq": parsed.seq, "hash": parsed.hash}


def anchors_in(entries: Iterable[AuditEntry]) -> list[Anchor]:
    """The heads recorded in ``entries`` (well-formed :data:`ANCHOR_KEY` values only)."""
    found: list[Anchor] = []
    for entry in entries:
        value = entry.data.get(ANCHOR_KEY)
        if not isinstance(value, Mapping):
            continue
        peer, seq, digest = value.get("peer"), value.get("seq"), value.get("hash")
        if (
            isinstance(peer, str)
            and isinstance(seq, int)
            and not isinstance(seq, bool)
            and seq >= 1
            and isinstance(digest, str)
            and _HEAD.fullmatch(digest)
        ):
            found.append(Anchor(peer=peer, head=AuditHead(seq=seq, hash=digest), seq=entry.seq))
    return found


def _has_anchor(entry: AuditEntry) -> bool:
    return ANCHOR_KEY in entry.data


def check_against(
    log: AuditSource, other: AuditSource, *, now: dt.datetime | None = None
) -> AnchorReport:
    """Check that ``log`` still holds every head of its writer that ``other`` recorded.

    Parameters
    ----------
    log:
        The log under audit (a node's or the coordinator's).
    other:
        The other party's log: the coordinator's for a node's log, a node's for the
        coordinator's.

    Returns
    -------
    AnchorReport
        ``problems`` names a log that ends before a recorded head (entries were removed
        from its end), an entry that differs from the recorded head (the log was rewritten
        from there), and an ``other`` log that does not verify (its verified entries are
        still used).

    Raises
    ------
    PolicyViolation
        If a certificate is refused (see :func:`~biofed.governance.verify_log`).

    Security notes
    --------------
    Truncation evidence by heads anchored in the other party's signed log (RFC 6962 §2.1.2
    consistency; Crosby & Wallach 2009). Both logs are verified first, with certificates
    that must chain to the consortium CA, so neither the recorded head nor the entry it is
    compared with can be forged without its writer's key.
    """
    writer = identify_peer(log.cert_pem, log.ca_pem, now=now)
    report, recorded = scan_log(other.path, other.cert_pem, other.ca_pem, now=now, keep=_has_anchor)
    problems: list[str] = []
    if not report.ok:
        problems.append(
            f"the other log {other.path} fails at entry {report.first_bad} ({report.reason}); "
            f"only its first {report.entries} entries were used"
        )
    wanted = COORDINATOR_PEER if writer.role == "coordinator" else writer.name
    heads = [a for a in anchors_in(recorded) if a.peer in (wanted, writer.name)]
    return _check(log, heads, report.writer, problems, now)


def check_expected_head(
    log: AuditSource, head: str, *, now: dt.datetime | None = None
) -> AnchorReport:
    """Check that ``log`` holds ``head`` (``"<seq>:<hash>"``, or a bare hash anywhere in it),
    a head recorded out of band (printed by ``biofed audit verify``, kept by an auditor)."""
    expected = AuditHead.parse(head)
    return _check(log, [Anchor(peer="", head=expected, seq=0)], EXPECTED_HEAD, [], now)


def _check(
    log: AuditSource,
    anchors: list[Anchor],
    witness: str,
    problems: list[str],
    now: dt.datetime | None,
) -> AnchorReport:
    seqs = {a.head.seq for a in anchors}
    hashes = {a.head.hash for a in anchors if not a.head.seq}
    report, kept = scan_log(
        log.path,
        log.cert_pem,
        log.ca_pem,
        now=now,
        keep=lambda e: e.seq in seqs or e.hash in hashes,
    )
    by_seq = {e.seq: e.hash for e in kept}
    found_hashes = {e.hash for e in kept}
    truncated: list[Anchor] = []
    rewritten: list[Anchor] = []
    for anchor in anchors:
        head = anchor.head
        if not head.seq:
            if head.hash not in found_hashes:
                truncated.append(anchor)
        elif head.seq > report.entries:
            truncated.append(anchor)
        elif by_seq.get(head.seq) != head.hash:
            rewritten.append(anchor)
    where = (
        f"ends at entry {report.entries}"
        if report.ok
        else f"verifies only to entry {report.entries}"
    )
    if truncated:
        worst = max(truncated, key=lambda a: (a.head.seq, a.seq))
        if worst.head.seq:
            problems.append(
                f"{log.path} {where}, but {witness} recorded its head at entry "
                f"{worst.head.seq} ({worst.head.hash[:16]}…) in its entry {worst.seq}: "
                f"entries {report.entries + 1}–{worst.head.seq} at least were removed "
                f"(truncated log; {len(truncated)} recorded head(s) missing)"
            )
        else:
            problems.append(
                f"{log.path} {where} and holds no entry with hash {worst.head.hash[:16]}… "
                "(truncated or rewritten log)"
            )
    if rewritten:
        first = min(rewritten, key=lambda a: a.head.seq)
        problems.append(
            f"{log.path} entry {first.head.seq} is not the entry {witness} recorded there "
            f"({first.head.hash[:16]}… in its entry {first.seq}): the log was rewritten "
            f"from that entry on ({len(rewritten)} recorded head(s) differ)"
        )
    latest = max((a.head for a in anchors), key=lambda h: h.seq, default=None)
    return AnchorReport(
        writer=report.writer,
        witness=witness,
        log=report,
        anchors=len(anchors),
        latest=latest,
        problems=tuple(problems),
    )
