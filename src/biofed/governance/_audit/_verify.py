"""Checking an audit log: chain, hashes, signatures and the writer's consortium certificate."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance._audit._entry import (
    GENESIS,
    MAX_LINE_BYTES,
    SIGNATURE,
    AuditEntry,
    BadEntry,
    decode_signature,
    parse_entry,
)
from biofed.identity import identify_peer

CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """What :func:`verify_log` found.

    Attributes
    ----------
    ok:
        Every line is a valid entry of one unbroken chain signed by the certificate's holder.
    entries:
        How many entries verified (all of them when ``ok``; those before ``first_bad`` if not).
    first_bad:
        The 1-based line number of the first bad entry, or None when ``ok``.
    reason:
        Why that entry is bad (``"ok"`` when ``ok``).
    writer:
        The certificate holder's name, which every entry must carry.
    head:
        The ``hash`` of the last verified entry (64 zeros for an empty log). Record it
        elsewhere to detect a later removal of the newest entries.
    """

    ok: bool
    entries: int
    first_bad: int | None
    reason: str
    writer: str
    head: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSource:
    """An audit log and the certificates to check it with.

    Attributes
    ----------
    path:
        The log file.
    cert_pem:
        The writer's certificate.
    ca_pem:
        The consortium CA certificate that must have issued ``cert_pem``.
    """

    path: Path
    cert_pem: bytes
    ca_pem: bytes

    @classmethod
    def beside(
        cls,
        path: str | os.PathLike[str],
        *,
        cert: str | os.PathLike[str] | None = None,
        ca: str | os.PathLike[str] | None = None,
    ) -> AuditSource:
        """The log at ``path`` with ``cert.pem`` and ``ca.pem`` from its folder (or as given).

        Raises
        ------
        ConfigurationError
            If the log or a certificate file is missing or unreadable.
        """
        log = Path(path)
        if not log.is_file():
            raise ConfigurationError(f"no audit log at {log}")
        folder = log.parent
        cert_path = Path(cert) if cert is not None else folder / CERT_FILE
        ca_path = Path(ca) if ca is not None else folder / CA_FILE
        try:
            return cls(path=log, cert_pem=cert_path.read_bytes(), ca_pem=ca_path.read_bytes())
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the certificates to check {log} with ({exc}); pass --cert and --ca"
            ) from exc


def verify_log(
    path: str | os.PathLike[str],
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    writer: str | None = None,
    roles: Collection[str] | None = None,
    now: dt.datetime | None = None,
) -> VerifyReport:
    """Check an audit log from its first line to its last and name the first bad entry.

    Parameters
    ----------
    path:
        The log file.
    cert_pem:
        The writer's certificate (PEM or DER); its CN must be every entry's ``writer``.
    ca_pem:
        The consortium CA certificate, from a source the auditor trusts.
    writer:
        If given, the name the certificate must carry (whose log this is meant to be).
    roles:
        If given, the roles the certificate may carry (e.g. ``{"site"}``).
    now:
        The time to check the certificate's validity at (default: now, UTC).

    Returns
    -------
    VerifyReport
        ``ok`` or the first bad line: a line that is not a canonical entry, a ``seq`` out of
        order, a broken ``prev`` link, a ``hash`` that does not match, another writer's name,
        a signature that does not verify, or a truncated last line.

    Raises
    ------
    PolicyViolation
        If the certificate was not issued by the CA, has expired or been revoked, or is not
        the expected writer's or role's: no entry can be trusted.
    ConfigurationError
        If the log cannot be read or ``ca_pem`` is not a CA certificate.

    Security notes
    --------------
    Guards against edits to a log by anyone without the writer's private key, including a
    chain rewritten from scratch with another participant's key: signatures are checked
    against a certificate that must chain to the consortium CA (RFC 5280 §6.1 via
    :func:`~biofed.identity.identify_peer`) and name the writer. Trust comes from ``ca_pem``:
    take it from your own kit, not from the folder of the log under audit.
    """
    report, _ = scan_log(path, cert_pem, ca_pem, writer=writer, roles=roles, now=now)
    return report


def scan_log(
    path: str | os.PathLike[str],
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    writer: str | None = None,
    roles: Collection[str] | None = None,
    now: dt.datetime | None = None,
    keep: Callable[[AuditEntry], bool] = lambda entry: False,
) -> tuple[VerifyReport, list[AuditEntry]]:
    """:func:`verify_log` that also returns the verified entries for which ``keep`` is true."""
    identity = identify_peer(cert_pem, ca_pem, now=now, roles=roles)
    if writer is not None and identity.name != writer:
        raise PolicyViolation(
            f"the certificate is {identity.name!r}'s, but the log should be {writer!r}'s"
        )
    public = _public_key(cert_pem)
    kept: list[AuditEntry] = []
    prev = GENESIS
    line = 0

    def bad(reason: str) -> tuple[VerifyReport, list[AuditEntry]]:
        report = VerifyReport(
            ok=False,
            entries=line - 1,
            first_bad=line,
            reason=reason,
            writer=identity.name,
            head=prev,
        )
        return report, kept

    try:
        with Path(path).open("rb") as stream:
            while raw := stream.readline(MAX_LINE_BYTES + 1):
                line += 1
                if not raw.endswith(b"\n"):
                    if len(raw) > MAX_LINE_BYTES:
                        return bad(f"the line is longer than {MAX_LINE_BYTES} bytes")
                    return bad("the last line is truncated (no end of line): an incomplete entry")
                try:
                    entry = parse_entry(raw[:-1])
                except BadEntry as exc:
                    return bad(str(exc))
                if entry.seq != line:
                    return bad(
                        f"seq is {entry.seq}, expected {line}: "
                        "an entry was deleted, inserted or moved"
                    )
                if entry.prev != prev:
                    return bad("prev is not the hash of the entry before: the chain is broken")
                if entry.writer != identity.name:
                    return bad(
                        f"the entry names writer {entry.writer!r}, but the certificate is "
                        f"{identity.name!r}'s"
                    )
                try:
                    public.verify(
                        decode_signature(entry.sig), entry.hash.encode("ascii"), SIGNATURE
                    )
                except (BadEntry, InvalidSignature):
                    return bad(
                        f"the signature does not verify with {identity.name!r}'s certificate"
                    )
                prev = entry.hash
                if keep(entry):
                    kept.append(entry)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the audit log {path}: {exc}") from exc
    reason = "ok" if line else "ok (the log is empty)"
    report = VerifyReport(
        ok=True, entries=line, first_bad=None, reason=reason, writer=identity.name, head=prev
    )
    return report, kept


def _public_key(cert_pem: bytes) -> ec.EllipticCurvePublicKey:
    try:
        if cert_pem.lstrip().startswith(b"-----"):
            cert = x509.load_pem_x509_certificate(cert_pem)
        else:
            cert = x509.load_der_x509_certificate(cert_pem)
    except ValueError as exc:  # identify_peer accepted it, so this is unexpected
        raise PolicyViolation("the writer's certificate is not an X.509 certificate") from exc
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PolicyViolation("the writer's certificate does not hold an ECDSA key")
    return public
