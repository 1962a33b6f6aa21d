"""Who is on the other end of a connection: peer certificate checks and revocation lists."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from biofed.core import ConfigurationError, PolicyViolation
from biofed.identity._pki import (
    ROLES,
    as_utc,
    certificate_fingerprint,
    load_certificate,
    load_crl,
    subject_field,
    utcnow,
)

_E = TypeVar("_E", bound=x509.ExtensionType)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerIdentity:
    """A peer whose certificate :func:`identify_peer` verified.

    Attributes
    ----------
    name, role, consortium:
        The certificate subject's CN, OU and O.
    fingerprint:
        Hex SHA-256 of the certificate DER.
    serial:
        The certificate serial number.
    """

    name: str
    role: str
    consortium: str
    fingerprint: str
    serial: int


def _ca_certificate(ca_pem: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey, str]:
    try:
        ca = load_certificate(ca_pem)
    except ValueError as exc:
        raise ConfigurationError("ca_pem is not a PEM or DER X.509 certificate") from exc
    constraints = _extension(ca.extensions, x509.BasicConstraints)
    public = ca.public_key()
    consortium = subject_field(ca.subject, NameOID.ORGANIZATION_NAME)
    if constraints is None or not constraints.ca or consortium is None:
        raise ConfigurationError("ca_pem is not a consortium CA certificate (cA=TRUE, O=…)")
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ConfigurationError("ca_pem does not hold an ECDSA key (biofed CAs use P-256)")
    return ca, public, consortium


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def verified_crl(crl_pem: bytes, ca_pem: bytes) -> x509.CertificateRevocationList:
    """Parse ``crl_pem`` and check that the CA of ``ca_pem`` signed it.

    Raises
    ------
    ConfigurationError
        If either input is not parseable.
    PolicyViolation
        If the CRL was not issued and signed by that CA.
    """
    ca, public, _ = _ca_certificate(ca_pem)
    try:
        crl = load_crl(crl_pem)
    except ValueError as exc:
        raise ConfigurationError("crl_pem is not a PEM or DER certificate revocation list") from exc
    if crl.issuer != ca.subject or not crl.is_signature_valid(public):
        raise PolicyViolation(
            "the CRL is not signed by this consortium's CA; every peer is refused until a "
            "valid crl.pem from the CA is installed"
        )
    return crl


def identify_peer(
    certificate: bytes,
    ca_pem: bytes,
    *,
    crl_pem: bytes | None = None,
    now: dt.datetime | None = None,
    roles: Collection[str] | None = None,
) -> PeerIdentity:
    """Verify a peer's certificate against the consortium CA and say who the peer is.

    Parameters
    ----------
    certificate:
        The peer's leaf certificate, PEM or DER (gRPC hands over PEM from the TLS session).
    ca_pem:
        The consortium CA certificate (``ca.pem`` of the local kit).
    crl_pem:
        The CA's revocation list; when given, its signature is checked and revoked serials
        are refused. Coordinators must pass it.
    now:
        The time to check validity at (default: the current UTC time).
    roles:
        If given, the roles accepted (a node that dials the coordinator passes
        ``{"coordinator"}``).

    Returns
    -------
    PeerIdentity
        Name, role and consortium from the subject, the fingerprint and serial.

    Raises
    ------
    PolicyViolation
        If the certificate is not a certificate, was not issued by this consortium's CA, is
        a CA certificate, is expired or not yet valid, was revoked, has a malformed subject or
        a role outside ``roles``, or if the CRL is not signed by the CA.
    ConfigurationError
        If ``ca_pem`` or ``crl_pem`` cannot be parsed (a broken local kit).

    Security notes
    --------------
    Run on every authenticated connection, after the TLS library has checked the chain, as
    defence in depth and to bind the peer to a consortium identity: RFC 5280 §6.1 path
    validation for a one-level chain (issuer name equals the CA subject, signature by the CA
    key, validity period of leaf and CA, leaf not a CA), ExtendedKeyUsage (RFC 5280 §4.2.1.12)
    and revocation per RFC 5280 §6.3 against a CRL whose own signature is checked, so a
    forged or swapped CRL cannot un-revoke a site. The CRL's nextUpdate is not enforced (see
    :meth:`CertificateAuthority.revoke`).
    """
    ca, _, consortium = _ca_certificate(ca_pem)
    moment = utcnow() if now is None else as_utc(now, "now")
    try:
        cert = load_certificate(certificate)
    except ValueError as exc:
        raise PolicyViolation("the peer's certificate is not an X.509 certificate") from exc
    name = subject_field(cert.subject, NameOID.COMMON_NAME)
    who = f"certificate of {name or cert.subject.rfc4514_string()!r}"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PolicyViolation(f"{who} was not issued by this consortium's CA") from exc
    extensions = cert.extensions
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is None or constraints.ca:
        raise PolicyViolation(f"{who} is a CA certificate, not a participant's")
    usage = _extension(extensions, x509.ExtendedKeyUsage)
    usages = set(usage) if usage is not None else set()
    if moment > cert.not_valid_after_utc:
        raise PolicyViolation(f"{who} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if moment < cert.not_valid_before_utc:
        raise PolicyViolation(f"{who} is not valid before {cert.not_valid_before_utc} UTC")
    if not ca.not_valid_before_utc <= moment <= ca.not_valid_after_utc:
        raise PolicyViolation("the consortium CA certificate is outside its validity period")
    role = subject_field(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    if name is None or role not in ROLES:
        raise PolicyViolation(f"{who} has no biofed name (CN) and role (OU)")
    if subject_field(cert.subject, NameOID.ORGANIZATION_NAME) != consortium:
        raise PolicyViolation(f"{who} names another consortium than {consortium!r}")
    needed = ExtendedKeyUsageOID.SERVER_AUTH if role == "coordinator" else None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or (needed and needed not in usages):
        raise PolicyViolation(f"{who} is not meant for TLS authentication (ExtendedKeyUsage)")
    if crl_pem is not None:
        crl = verified_crl(crl_pem, ca_pem)
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise PolicyViolation(f"{who} was revoked (serial {cert.serial_number:x})")
    if roles is not None and role not in roles:
        raise PolicyViolation(f"{who} has role {role!r}; expected {' or '.join(sorted(roles))}")
    return PeerIdentity(
        name=name,
        role=role,
        consortium=consortium,
        fingerprint=certificate_fingerprint(cert),
        serial=cert.serial_number,
    )


def signed_by(
    certificate: bytes,
    ca_pem: bytes,
    *,
    name: str,
    role: str,
    message: bytes,
    signature: bytes,
    crl_pem: bytes | None = None,
) -> bool:
    """Whether ``signature`` over ``message`` was made by participant ``name`` of ``role``:
    ``certificate`` must pass :func:`identify_peer` (this consortium's CA, valid now, not
    revoked) and name exactly that participant, and its ECDSA P-256 key must verify the
    DER signature (SHA-256).

    Security notes
    --------------
    Threat: a relaying party (the coordinator) substituting a participant's signed data or
    certificate. It can relay certificates but not forge one the CA would accept for that
    name and role, nor a signature under its key.
    """
    try:
        peer = identify_peer(certificate, ca_pem, crl_pem=crl_pem, roles={role})
        public = load_certificate(certificate).public_key()
    except (PolicyViolation, ValueError):
        return False
    if peer.name != name or not isinstance(public, ec.EllipticCurvePublicKey):
        return False
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class RevocationList:
    """A ``crl.pem`` on disk that is re-read whenever the file changes.

    For a long-running coordinator: after the operator copies a new CRL into the kit, the
    next check sees it, with no restart. Thread-safe.

    Parameters
    ----------
    path:
        The CRL file (``Kit.crl_path``).
    ca_pem:
        The consortium CA certificate; every (re)loaded CRL must be signed by it.

    Security notes
    --------------
    Fails closed: a CRL that cannot be read, parsed or verified raises on every check
    (:class:`~biofed.core.PolicyViolation` or :class:`~biofed.core.ConfigurationError`) until a
    valid file is in place; it never falls back to an older list or to "nothing revoked".
    A change is detected by modification time, size and inode (``os.replace`` changes the
    inode even within one mtime tick).
    """

    def __init__(self, path: str | os.PathLike[str], ca_pem: bytes) -> None:
        self._path = Path(path)
        self._ca_pem = ca_pem
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._pem = b""
        self._revoked: frozenset[int] = frozenset()
        self._reload()

    @property
    def path(self) -> Path:
        """The CRL file."""
        return self._path

    def pem(self) -> bytes:
        """The current CRL, PEM (reloaded first if the file changed)."""
        self._reload()
        return self._pem

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is on the current CRL (reloaded first if the file changed)."""
        self._reload()
        return serial in self._revoked

    def _reload(self) -> None:
        with self._lock:
            try:
                info = self._path.stat()
            except OSError as exc:
                self._stamp = None
                raise ConfigurationError(f"cannot read the CRL {self._path}: {exc}") from exc
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == self._stamp:
                return
            self._stamp = None  # until the new file verifies, every check fails
            try:
                pem = self._path.read_bytes()
                crl = verified_crl(pem, self._ca_pem)
            except OSError as exc:
                raise ConfigurationError(f"cannot read the CRL {self._path}: {exc}") from exc
            self._pem = pem
            self._revoked = frozenset(entry.serial_number for entry in crl)
            self._stamp = stamp
