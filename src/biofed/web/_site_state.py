"""What a site's dashboard reads and changes: the same files, through the same SDK calls, as
``biofed node review / approve / revoke / approvals / budget``, ``biofed agreement verify``
and ``biofed audit verify``.

Which bundles are *pending*: the node runs a bundle only once its digest is approved here,
and fetches one from the coordinator only after that, so a bundle awaiting review is one the
site holds but has not approved — a ``<digest>.zip`` in ``node.toml``'s ``bundles_dir``
(placed by the operator, or fetched and later revoked) — or one a signed agreement here
lists whose file has not arrived yet (shown, but it cannot be approved from the dashboard
until its file is here to read).

Security notes
--------------
Every digest from a request passes :func:`~biofed.governance.check_digest` (64 lowercase
hex characters) before it names a file, and a bundle file is looked up by its path *in* the
validated bundle, never joined to a folder: no path traversal (OWASP ASVS 4.0 V12.3.1).
Bundles are read with :func:`~biofed.governance.read_bundle` (zip-slip, size and manifest
checks); their content is shown, never run, truncated past :data:`SHOWN_BYTES`.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biofed.core import BiofedError, ConfigurationError, PolicyViolation
from biofed.governance import (
    LEDGER_FILE,
    LOG_FILE,
    Approval,
    ApprovalStore,
    AuditLog,
    AuditSigner,
    BudgetStatus,
    Bundle,
    PrivacyLedger,
    VerifyReport,
    check_digest,
    read_agreement,
    read_bundle,
    verify,
    verify_log,
)
from biofed.identity import Kit
from biofed.node import GovernanceConfig, NodeConfig

#: The most bytes of one bundle file a page shows (the rest is cut, and said to be).
SHOWN_BYTES = 64 * 1024
#: About the most characters of a bundle's files one page shows, and of its diff (1000
#: files of 64 KiB would otherwise make a 64 MB page).
PAGE_BYTES = 1024 * 1024
#: The most diff lines a page shows per file, and in all (the rest is counted).
DIFF_LINES = 400
DIFF_TOTAL = 4000
#: Audit entries per page.
AUDIT_PAGE = 50
#: What the dashboard's audit entries say they came through.
VIA = "dashboard"


@dataclass(frozen=True, slots=True, kw_only=True)
class ShownFile:
    """One bundle file as a page shows it: text (maybe cut) or a binary's size and hash."""

    path: str
    size: int
    sha256: str
    text: str | None
    truncated: bool
    shown: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Pending:
    """A bundle awaiting this site's approval."""

    digest: str
    here: bool
    agreements: tuple[str, ...]
    files: int = 0
    size: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AgreementRow:
    """One agreement in the site's folder and its state."""

    agreement_id: str
    title: str
    state: str
    reasons: tuple[str, ...]
    signed_by: tuple[str, ...]
    missing: tuple[str, ...]
    expires: str
    dataset: str
    bundles: tuple[str, ...]
    digest: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRow:
    """One audit-log line as the audit page shows it."""

    seq: int | None
    time: str
    event: str
    data: str
    bad: bool = False


def show_file(path: str, data: bytes, limit: int = SHOWN_BYTES) -> ShownFile:
    """``data`` as a page may show it: UTF-8 text without NUL cut at ``limit`` bytes,
    anything else as binary (size and SHA-256 only)."""
    sha = hashlib.sha256(data).hexdigest()
    cut = data[:limit]
    try:
        text: str | None = cut.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a cut inside a multi-byte character is still text
        text = cut[: exc.start].decode("utf-8") if len(cut) - exc.start < 4 else None
    if text is not None and "\x00" in text:
        text = None
    return ShownFile(
        path=path,
        size=len(data),
        sha256=sha,
        text=text,
        truncated=len(data) > limit,
        shown=0 if text is None else len(text.encode()),
    )


def show_files(bundle: Bundle, budget: int = PAGE_BYTES) -> list[ShownFile]:
    """Every file of ``bundle`` as :func:`show_file` shows it, until about ``budget``
    characters of text are shown; past it, text files are cut (``truncated``) to nothing."""
    out = []
    for path, data in bundle.files.items():
        shown = show_file(path, data)
        if shown.text is not None and len(shown.text) > budget:
            text = shown.text[: max(0, budget)]
            shown = dataclasses.replace(shown, text=text, shown=len(text), truncated=True)
        budget -= 0 if shown.text is None else len(shown.text)
        out.append(shown)
    return out


def diff_lines(
    old: Bundle, new: Bundle, limit: int = SHOWN_BYTES, most: int = DIFF_LINES
) -> list[tuple[str, str]]:
    """A unified diff of two bundles' text files as (kind, line) pairs, kind ``add``,
    ``del``, ``hunk``, ``file``, ``same`` or ``cut``; binary files are compared by hash.
    Past ``most`` lines of one file's diff, one ``cut`` line says how many were left out;
    past :data:`DIFF_TOTAL` lines or :data:`PAGE_BYTES` characters in all, the rest is cut."""
    out: list[tuple[str, str]] = []
    size = 0
    for path in sorted(set(old.files) | set(new.files)):
        a, b = old.files.get(path), new.files.get(path)
        if a == b:
            continue
        one = _diff_file(path, a, b, limit)
        if len(one) > most:
            one = [*one[:most], ("cut", f"… {len(one) - most} more diff lines not shown")]
        out += one
        size += sum(len(line) for _, line in one)
        if len(out) > DIFF_TOTAL or size > PAGE_BYTES:
            return [*out[:DIFF_TOTAL], ("cut", "… the rest of the diff is not shown")]
    return out


def _diff_file(path: str, a: bytes | None, b: bytes | None, limit: int) -> list[tuple[str, str]]:
    left = None if a is None else show_file(path, a, limit)
    right = None if b is None else show_file(path, b, limit)
    if (left is not None and left.text is None) or (right is not None and right.text is None):
        return [("file", f"{path}: binary file changed")]
    lines = difflib.unified_diff(
        [] if left is None or left.text is None else left.text.splitlines(),
        [] if right is None or right.text is None else right.text.splitlines(),
        fromfile=f"a/{path}" if a is not None else "/dev/null",
        tofile=f"b/{path}" if b is not None else "/dev/null",
        lineterm="",
    )
    out: list[tuple[str, str]] = []
    for line in lines:
        if line.startswith(("---", "+++")):
            out.append(("file", line))
        elif line.startswith("@@"):
            out.append(("hunk", line))
        elif line.startswith("+"):
            out.append(("add", line))
        elif line.startswith("-"):
            out.append(("del", line))
        else:
            out.append(("same", line))
    return out


class SiteState:
    """A site's governance state, read and changed as the node and its CLI do.

    Parameters
    ----------
    kit:
        The site's kit (its key signs the audit entries of approvals and revocations).
    config:
        The node's ``node.toml``; it must have a ``[governance]`` table.
    """

    def __init__(self, kit: Kit, config: NodeConfig) -> None:
        if kit.role != "site":
            raise ConfigurationError(f"the kit is {kit.role} {kit.name!r}'s, not a site's")
        if config.governance is None:
            raise ConfigurationError(
                "node.toml has no [governance] table: the site dashboard shows a governed "
                "site's approvals, agreements, ledger and audit log"
            )
        self.kit = kit
        self.gov: GovernanceConfig = config.governance
        self.audit_path = self.gov.audit or kit.directory / LOG_FILE
        ledger = config.privacy.ledger if config.privacy is not None else None
        self.ledger_path = ledger or kit.directory / LEDGER_FILE
        try:  # who approves, by default: the OS user, as `biofed node approve` assumes
            self.operator = getpass.getuser()
        except (KeyError, OSError):  # a container's user without a name
            self.operator = ""

    # -- approvals -----------------------------------------------------------------------------
    def store(self) -> ApprovalStore:
        """The approvals file with the site's signed audit log, as ``biofed node approve
        --kit`` opens it and as the node does."""
        log = AuditLog(self.audit_path, AuditSigner.from_kit(self.kit))
        return ApprovalStore(self.gov.approvals, audit=log)

    def approvals(self) -> tuple[Approval, ...]:
        """Every approval, newest first."""
        rows = ApprovalStore(self.gov.approvals).list()
        return tuple(sorted(rows, key=lambda a: a.approved_at, reverse=True))

    def bundle_file(self, digest: str) -> Path:
        """Where the node keeps bundle ``digest`` (checked: 64 hex characters)."""
        return self.gov.bundles_dir / f"{check_digest(digest)}.zip"

    def bundle(self, digest: str) -> Bundle:
        """Bundle ``digest`` as held here, validated against its digest.

        Raises
        ------
        LookupError
            The site holds no such bundle.
        """
        file = self.bundle_file(digest)
        if not file.is_file():
            raise LookupError(f"this site holds no bundle {digest}")
        return read_bundle(file, expected_digest=digest)

    def _held(self) -> Iterator[str]:
        if not self.gov.bundles_dir.is_dir():
            return
        for file in sorted(self.gov.bundles_dir.glob("*.zip")):
            try:
                yield check_digest(file.stem)
            except ConfigurationError:
                continue

    def _listed(self) -> dict[str, list[str]]:
        """Bundle digest → the agreements here that list it."""
        out: dict[str, list[str]] = {}
        for signed in self._agreements():
            for digest in signed.agreement.approved_bundles:
                out.setdefault(digest, []).append(signed.agreement.agreement_id)
        return out

    def pending(self) -> list[Pending]:
        """Bundles held here or listed by an agreement here, and not approved here."""
        approved = {a.digest for a in self.approvals()}
        listed = self._listed()
        out: list[Pending] = []
        held = list(self._held())
        for digest in held:
            if digest in approved:
                continue
            agreements = tuple(listed.get(digest, ()))
            try:
                bundle = self.bundle(digest)
            except (BiofedError, LookupError) as exc:  # a broken file is shown
                out.append(Pending(digest=digest, here=True, agreements=agreements, error=str(exc)))
                continue
            out.append(
                Pending(
                    digest=digest,
                    here=True,
                    agreements=agreements,
                    files=len(bundle.files),
                    size=sum(len(b) for b in bundle.files.values()),
                )
            )
        for digest, names in sorted(listed.items()):
            if digest not in approved and digest not in held:
                out.append(Pending(digest=digest, here=False, agreements=tuple(names)))
        return out

    def is_pending(self, digest: str) -> bool:
        """Whether ``digest`` is held here and not approved (what may be approved here)."""
        check_digest(digest)
        return self.bundle_file(digest).is_file() and digest not in {
            a.digest for a in self.approvals()
        }

    def diff_base(self, digest: str, against: str | None = None) -> str | None:
        """The approved bundle to compare ``digest`` with: ``against`` if given (it must be
        approved and held here), else the latest approval of a bundle held here that an
        agreement listing ``digest`` also lists (an earlier version of the same study's
        task), else the latest approval held here at all."""
        held = set(self._held())
        approvals = [a for a in self.approvals() if a.digest in held and a.digest != digest]
        if against is not None:
            check_digest(against)
            if against not in {a.digest for a in approvals}:
                raise LookupError(f"no approved bundle {against} is held here to compare with")
            return against
        listed = self._listed()
        mine = set(listed.get(digest, ()))
        for approval in approvals:
            if mine & set(listed.get(approval.digest, ())):
                return approval.digest
        return approvals[0].digest if approvals else None

    def approve(self, digest: str, *, by: str, note: str) -> Approval:
        """Approve a pending bundle, as ``biofed node approve DIGEST --store … --kit …``
        does (audited ``bundle.approved``, with ``via: dashboard``).

        Raises
        ------
        PolicyViolation
            ``digest`` is not pending here (not held, or approved already).
        """
        if not self.is_pending(digest):
            raise PolicyViolation(f"bundle {digest} is not pending review at this site")
        self.bundle(digest)  # it must read and match its digest: the operator saw this code
        return self.store().approve(digest, by=by.strip(), note=note.strip(), via=VIA)

    def revoke(self, digest: str) -> Approval:
        """Withdraw an approval, as ``biofed node revoke`` does (audited
        ``bundle.revoked``, with ``via: dashboard``)."""
        check_digest(digest)
        return self.store().revoke(digest, via=VIA)

    # -- agreements ----------------------------------------------------------------------------
    def _agreements(self) -> Iterator[Any]:
        folder = self.gov.agreements_dir
        if not folder.is_dir():
            return
        for file in sorted(folder.glob("*.toml")):
            try:
                yield read_agreement(file)
            except ConfigurationError:
                continue

    def agreements(self) -> list[AgreementRow]:
        """Every agreement in the site's folder, verified as the node verifies it (the
        signers' certificates from ``certificates_dir``, the kit's CA)."""
        rows = []
        for signed in self._agreements():
            agreement = signed.agreement
            certificates: dict[str, bytes] = {}
            for party in agreement.signers:
                file = self.gov.certificates_dir / f"{party.name}.pem"
                if file.is_file():
                    certificates[party.name] = file.read_bytes()
            status = verify(signed, certificates, self.kit.ca_pem, crl_pem=self.kit.crl_pem)
            if status.in_force:
                state = "in force"
            elif any("expired" in r for r in status.reasons):
                state = "expired"
            elif status.missing:
                state = "awaiting signatures"
            else:
                state = "not in force"
            rows.append(
                AgreementRow(
                    agreement_id=agreement.agreement_id,
                    title=agreement.title,
                    state=state,
                    reasons=status.reasons,
                    signed_by=status.signed_by,
                    missing=status.missing,
                    expires=agreement.expires.isoformat(),
                    dataset=agreement.datasets.get(self.kit.name, "—"),
                    bundles=agreement.approved_bundles,
                    digest=status.digest,
                )
            )
        return rows

    # -- ledger --------------------------------------------------------------------------------
    def budgets(self) -> list[BudgetStatus]:
        """The ledger per dataset, as ``biofed node budget`` reads it (nothing when the node
        has not written a ledger yet)."""
        if not self.ledger_path.is_file():
            return []
        ledger = PrivacyLedger(self.ledger_path)
        return [ledger.spent(name) for name in ledger.datasets()]

    # -- audit ---------------------------------------------------------------------------------
    def verify_audit(self) -> VerifyReport | str:
        """``biofed audit verify`` of the site's log with its own certificate and CA (the
        kit's, not files beside the log); a refused certificate is a one-line string."""
        if not self.audit_path.is_file():
            return "no audit log yet"
        try:
            return verify_log(
                self.audit_path, self.kit.cert_pem, self.kit.ca_pem, writer=self.kit.name
            )
        except (PolicyViolation, ConfigurationError) as exc:
            return str(exc)

    def audit_page(self, page: int) -> tuple[list[AuditRow], int]:
        """Entries of page ``page`` (1 = newest), newest first, and the number of pages."""
        if not self.audit_path.is_file():
            return [], 1
        lines = self.audit_path.read_bytes().splitlines()
        pages = max(1, -(-len(lines) // AUDIT_PAGE))
        page = min(max(1, page), pages)
        end = len(lines) - (page - 1) * AUDIT_PAGE
        chosen = lines[max(0, end - AUDIT_PAGE) : end]
        return [_row(raw) for raw in reversed(chosen)], pages


def _row(raw: bytes) -> AuditRow:
    import datetime as dt

    try:
        entry = json.loads(raw)
        seq, when, event, data = entry["seq"], entry["time"], entry["event"], entry["data"]
        stamp = dt.datetime.fromtimestamp(float(when), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        shown = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return AuditRow(seq=int(seq), time=stamp, event=str(event), data=shown)
    except (ValueError, TypeError, KeyError, OverflowError):
        text = raw[:200].decode("utf-8", "replace")
        return AuditRow(seq=None, time="", event="(unreadable line)", data=text, bad=True)
