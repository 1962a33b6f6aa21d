"""A site's local approvals of task bundles, by digest, recorded in its signed audit log.

The node runs a bundle only if its digest is approved here (and listed in a study agreement
the site signed); the bundle format itself is :mod:`biofed.governance._bundle`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.governance._audit import AuditLog, AuditLogError
from biofed.governance._bundle import check_digest
from biofed.governance._files import write_atomically


@dataclass(frozen=True, slots=True, kw_only=True)
class Approval:
    """A site operator's local approval of one bundle digest."""

    digest: str
    by: str
    note: str = ""
    approved_at: str = ""


def _utc_now() -> datetime:
    return datetime.now(UTC)


APPROVED_EVENT = "bundle.approved"
"""The audit event of an approval: ``{"bundle": digest, "by": who, "note": why}``."""
REVOKED_EVENT = "bundle.revoked"
"""The audit event of a withdrawn approval: ``{"bundle": digest}``."""


class ApprovalStore:
    """A site's approved bundle digests: recorded in its signed audit log, listed in a file.

    Parameters
    ----------
    path:
        The JSON file (created on the first approval), for people and tools to read.
    audit:
        The site's audit log. With it, every approval and revocation is first recorded
        there (``bundle.approved`` / ``bundle.revoked``), and a digest counts as approved
        only if the file lists it *and* the log's latest word on it is an approval. Without
        it (development, tests of the file format) the file alone decides.
    clock:
        Returns the current time (injected for tests).

    Security notes
    --------------
    Threat: a hand edit of ``approvals.json`` (adding a digest) silently approves code and
    bypasses the audited command. With ``audit``, approvals are read back from the signed,
    hash-chained log (:class:`~biofed.governance.AuditFollower`: ECDSA P-256 signatures, an
    unbroken chain), so an edit of the file approves nothing, and :meth:`check` — run when
    the node starts — refuses a file that lists a digest the log does not approve, with one
    line. Writes go to a temporary file that is fsynced and renamed over the old one, so a
    crash leaves the old or the new list; a file that does not parse is an error. Anyone
    holding the site's key can still write both; protect ``key.pem`` like the data.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        audit: AuditLog | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.path = Path(path)
        self._clock = clock
        self._audit = audit
        signed = (APPROVED_EVENT, REVOKED_EVENT)
        self._follower = None if audit is None else audit.follower(signed_events=signed)
        self._logged: dict[str, bool] = {}  # digest -> approved, as the log says last

    def _load(self) -> dict[str, Approval]:
        if not self.path.exists():
            return {}
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{self.path}: unreadable approvals file: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ConfigurationError(f"{self.path}: not a biofed approvals file (version 1)")
        entries = doc.get("approvals")
        if not isinstance(entries, dict):
            raise ConfigurationError(f"{self.path}: 'approvals' must be an object")
        out: dict[str, Approval] = {}
        for digest, entry in entries.items():
            check_digest(digest)
            if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), str) for k in ("by", "note", "approved_at")
            ):
                raise ConfigurationError(f"{self.path}: malformed approval of {digest}")
            out[digest] = Approval(
                digest=digest, by=entry["by"], note=entry["note"], approved_at=entry["approved_at"]
            )
        return out

    def _save(self, approvals: Mapping[str, Approval]) -> None:
        doc = {
            "version": 1,
            "approvals": {
                d: {"by": a.by, "note": a.note, "approved_at": a.approved_at}
                for d, a in sorted(approvals.items())
            },
        }
        write_atomically(self.path, (json.dumps(doc, indent=2) + "\n").encode())

    def _from_log(self) -> dict[str, bool]:
        """Each digest the audit log speaks of: approved (True) or revoked (False) last."""
        if self._follower is None:
            return {}
        try:
            entries, reset = self._follower.read()
        except AuditLogError as exc:
            raise ConfigurationError(f"cannot read the approvals in the audit log: {exc}") from exc
        if reset:
            self._logged = {}
        for entry in entries:
            if entry.event in (APPROVED_EVENT, REVOKED_EVENT):
                digest = entry.data.get("bundle", entry.data.get("digest"))
                if isinstance(digest, str):
                    self._logged[digest] = entry.event == APPROVED_EVENT
        return self._logged

    def approve(self, digest: str, *, by: str, note: str = "", via: str | None = None) -> Approval:
        """Approve ``digest`` (replacing an earlier approval of it) and return the record;
        with an audit log, the approval is recorded there first (``via`` names where it was
        made, e.g. ``"dashboard"``, in the entry; the command line leaves it out)."""
        check_digest(digest)
        if not by.strip():
            raise ConfigurationError("an approval must name who approved it (by=...)")
        approvals = self._load()
        approval = Approval(digest=digest, by=by, note=note, approved_at=self._clock().isoformat())
        if self._audit is not None:
            data = {"bundle": digest, "by": by, "note": note}
            self._audit.append(APPROVED_EVENT, data if via is None else {**data, "via": via})
        approvals[digest] = approval
        self._save(approvals)
        return approval

    def revoke(self, digest: str, *, via: str | None = None) -> Approval:
        """Withdraw the approval of ``digest`` and return it (recorded in the audit log
        first, when there is one; ``via`` as for :meth:`approve`).

        Raises
        ------
        ConfigurationError
            If ``digest`` is not approved.
        """
        check_digest(digest)
        approvals = self._load()
        if digest not in approvals:
            raise ConfigurationError(f"bundle {digest} is not approved here")
        if self._audit is not None:
            self._audit.append(
                REVOKED_EVENT, {"bundle": digest} if via is None else {"bundle": digest, "via": via}
            )
        removed = approvals.pop(digest)
        self._save(approvals)
        return removed

    def is_approved(self, digest: str) -> bool:
        """Whether ``digest`` is approved (a malformed digest raises).

        Raises
        ------
        ConfigurationError
            If the file lists ``digest`` but the audit log does not approve it (a hand
            edit), or either cannot be read.
        """
        check_digest(digest)
        listed = digest in self._load()
        if self._follower is None or not listed:
            return listed
        if not self._from_log().get(digest, False):
            raise ConfigurationError(_unlogged(self.path, digest))
        return True

    def check(self) -> None:
        """Refuse a file that lists a digest the audit log does not approve (run at node
        start). Without an audit log there is nothing to check against.

        Raises
        ------
        ConfigurationError
            One line naming the file and the first such digest.
        """
        if self._follower is None:
            return
        logged = self._from_log()
        for digest in sorted(self._load()):
            if not logged.get(digest, False):
                raise ConfigurationError(_unlogged(self.path, digest))

    def list(self) -> tuple[Approval, ...]:
        """Every approval, sorted by digest."""
        return tuple(a for _, a in sorted(self._load().items()))


def _unlogged(path: Path, digest: str) -> str:
    return (
        f"{path} approves bundle {digest[:16]}… but the site's signed audit log has no "
        "approval of it in force (was the file edited by hand?); approve bundles with "
        "`biofed node approve`, which records them"
    )
