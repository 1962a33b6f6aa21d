"""Shared X.509 helpers: roles, names, parsing, fingerprints and careful file writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from biofed.core import ConfigurationError, check_id
from biofed.core.checks import check_choice, check_int

ROLES = ("admin", "coordinator", "researcher", "site")
"""The roles a consortium certificate can carry (its subject's OU)."""

_MAX_CN = 64  # RFC 5280 ub-common-name and ub-organization-name


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What :meth:`CertificateAuthority.issue` hands out: one participant's key and certificate.

    Attributes
    ----------
    name, role, consortium:
        The certificate subject's CN, OU and O.
    key_pem:
        The participant's PKCS#8 private key, unencrypted PEM (hidden from ``repr``).
    cert_pem, ca_pem:
        The participant's certificate and the consortium CA certificate, PEM.
    serial:
        The certificate serial number.
    fingerprint:
        Hex SHA-256 of the certificate DER.
    not_after:
        End of the validity period (UTC).
    """

    name: str
    role: str
    consortium: str
    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    serial: int
    fingerprint: str
    not_after: dt.datetime


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.timezone.utc)


def as_utc(moment: dt.datetime, what: str) -> dt.datetime:
    """``moment`` in UTC; a naive datetime is refused rather than guessed."""
    if moment.tzinfo is None:
        raise ConfigurationError(f"{what} must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return moment.astimezone(dt.timezone.utc)


def check_days(valid_days: int) -> dt.timedelta:
    """A validity period of ``valid_days`` (a positive integer) days."""
    days = check_int(valid_days, "valid_days (a positive integer number of days)", minimum=1)
    return dt.timedelta(days=days)


def check_role(role: str) -> str:
    """Return ``role`` if it is one of :data:`ROLES`, else raise ConfigurationError."""
    return check_choice(role, "role", ROLES)


def check_name(name: str) -> str:
    """A participant name: a biofed id short enough for an X.509 common name."""
    check_id(name, what="participant name")
    if len(name) > _MAX_CN:
        raise ConfigurationError(f"participant name must be at most {_MAX_CN} characters: {name!r}")
    return name


def check_consortium(consortium: str) -> str:
    """A consortium name: printable text that fits an X.509 O and ``f"{name} CA"`` CN."""
    if (
        not isinstance(consortium, str)
        or not consortium.strip()
        or consortium != consortium.strip()
        or len(consortium) > _MAX_CN - 3
        or not consortium.isprintable()
    ):
        raise ConfigurationError(
            f"consortium name must be 1-{_MAX_CN - 3} printable characters without leading or "
            f"trailing spaces, got {consortium!r}"
        )
    return consortium


def subject_field(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    """The single string value of ``oid`` in ``name``, or None when absent or repeated."""
    attributes = name.get_attributes_for_oid(oid)
    if len(attributes) != 1 or not isinstance(attributes[0].value, str):
        return None
    return attributes[0].value


def subject_of(consortium: str, role: str, name: str) -> x509.Name:
    """The subject of a participant certificate: ``O=consortium, OU=role, CN=name``."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse a PEM or DER certificate; ValueError if it is neither."""
    if not isinstance(data, bytes):
        raise ValueError("a certificate must be bytes (PEM or DER)")
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """Parse a PEM or DER certificate revocation list; ValueError if it is neither."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def certificate_fingerprint(certificate: bytes | x509.Certificate) -> str:
    """Hex SHA-256 of a certificate's DER encoding (the form ``openssl x509 -fingerprint`` hashes).

    Parameters
    ----------
    certificate:
        The certificate as PEM bytes, DER bytes or a parsed ``cryptography`` certificate.

    Raises
    ------
    ConfigurationError
        If the bytes are not a certificate.
    """
    if not isinstance(certificate, x509.Certificate):
        try:
            certificate = load_certificate(certificate)
        except ValueError as exc:
            raise ConfigurationError("not a PEM or DER X.509 certificate") from exc
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    """``certificate`` as PEM."""
    return certificate.public_bytes(serialization.Encoding.PEM)


def same_public_key(key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> bool:
    """Whether ``certificate`` certifies the public half of ``key``."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, fmt) == certificate.public_key().public_bytes(
        der, fmt
    )


def check_private_mode(path: Path) -> None:
    """Refuse a private key file that group or others may read (POSIX modes only)."""
    if os.name == "nt":  # pragma: no cover - no POSIX modes
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"{path} is readable by group or others (mode {mode:04o}): a private key must be "
            f"readable by its owner only; run: chmod 600 {path}"
        )


def write_private(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a secret file readable by its owner only (mode 0600), never through a wider mode.

    Security notes
    --------------
    A private key must never exist on disk with group or world read permission, not even
    for a moment, and must never silently replace another key. The file is created with
    ``os.open(O_CREAT | O_EXCL, 0o600)`` (CWE-377/CWE-732: no pre-existing file or symlink is
    followed, no window with a wider mode). With ``overwrite`` the new key is written the same
    way under a temporary name and moved over the old one with ``os.replace`` (atomic on POSIX).
    """
    target = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp") if overwrite else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags, 0o600)
    except FileExistsError as exc:
        raise ConfigurationError(f"{path} already exists; refusing to overwrite a key") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


def write_public(path: Path, data: bytes) -> None:
    """Write a non-secret file atomically (temporary file, fsync, ``os.replace``), mode 0644."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) with the last level readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
