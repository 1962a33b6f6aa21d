"""The consortium's certificate authority: issue, re-issue and revoke participant certificates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from biofed.core import ConfigurationError
from biofed.identity._address import check_host
from biofed.identity._kit import refresh_crl
from biofed.identity._pki import (
    Credentials,
    as_utc,
    cert_pem,
    certificate_fingerprint,
    check_consortium,
    check_days,
    check_name,
    check_private_mode,
    check_role,
    generate_key,
    key_pem,
    make_private_dir,
    same_public_key,
    subject_field,
    utcnow,
    write_private,
    write_public,
)
from biofed.identity._profiles import ca_certificate, leaf_certificate, revocation_list
from biofed.identity._registry import IssuedCertificate, Registry, read_registry, write_registry

_KEY, _CERT, _CRL, _REGISTRY = "ca-key.pem", "ca.pem", "crl.pem", "registry.json"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between machines


class CertificateAuthority:
    """The consortium CA: one ECDSA P-256 key and self-signed certificate in a folder.

    The folder holds ``ca-key.pem`` (mode 0600), ``ca.pem``, ``crl.pem`` and ``registry.json``
    (every issued certificate: name, role, serial, SHA-256 fingerprint, expiry, revocation).
    Make one with :meth:`create`, open it again with :meth:`load`.

    Security notes
    --------------
    Whoever holds ``ca-key.pem`` can mint a certificate for any participant, so the folder
    belongs offline (it is needed only to add, re-issue or revoke participants). Profiles follow
    RFC 5280: the CA certificate has BasicConstraints ``cA=TRUE, pathLen=0`` and KeyUsage
    keyCertSign + cRLSign (both critical); leaf certificates have ``cA=FALSE``, KeyUsage
    digitalSignature, ExtendedKeyUsage clientAuth (plus serverAuth for the coordinator),
    SubjectAlternativeName, Subject/AuthorityKeyIdentifier and a random 159-bit serial
    (CA/Browser Forum BR 7.1: at least 64 bits of CSPRNG output). Keys are ECDSA P-256 with
    SHA-256 signatures (NIST SP 800-57 128-bit security).
    """

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate
    ) -> None:
        self._directory = directory
        self._key = key
        self._cert = certificate
        consortium = subject_field(certificate.subject, NameOID.ORGANIZATION_NAME)
        if consortium is None:
            raise ConfigurationError(f"{directory / _CERT} has no organization (O) in its subject")
        self._consortium = consortium

    def __repr__(self) -> str:
        return f"CertificateAuthority({self._consortium!r}, directory={str(self._directory)!r})"

    @property
    def directory(self) -> Path:
        """The CA folder."""
        return self._directory

    @property
    def consortium(self) -> str:
        """The consortium name (the CA subject's O)."""
        return self._consortium

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM (what every kit holds as ``ca.pem``)."""
        return cert_pem(self._cert)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the CA certificate DER."""
        return certificate_fingerprint(self._cert)

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], consortium: str, *, valid_days: int = 3650
    ) -> CertificateAuthority:
        """Make a new CA key, self-signed certificate, empty CRL and registry in ``directory``.

        Raises
        ------
        ConfigurationError
            If ``directory`` already holds (part of) a CA, or an argument is invalid.
        """
        folder = Path(directory)
        check_consortium(consortium)
        lifetime = check_days(valid_days)
        existing = [name for name in (_KEY, _CERT, _CRL, _REGISTRY) if (folder / name).exists()]
        if existing:
            raise ConfigurationError(
                f"{folder} already holds a CA ({', '.join(existing)}); refusing to overwrite it"
            )
        make_private_dir(folder)
        key = generate_key()
        write_private(folder / _KEY, key_pem(key))  # O_EXCL: loses no race to a second create
        now = utcnow()
        cert = ca_certificate(key, consortium, now - _BACKDATE, now + lifetime)
        write_public(folder / _CERT, cert_pem(cert))
        ca = cls(folder, key, cert)
        ca._publish(Registry(consortium=consortium, crl_number=0, certificates=()), now)
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        """Open the CA in ``directory`` (made by :meth:`create`) and check its key and files."""
        folder = Path(directory)
        key_path = folder / _KEY
        if key_path.is_file():
            check_private_mode(key_path)
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((folder / _CERT).read_bytes())
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"{folder} is not a biofed CA: {exc.filename} missing"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"{folder}: unreadable CA key or certificate") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_public_key(key, cert):
            raise ConfigurationError(f"{key_path} does not belong to {folder / _CERT}")
        ca = cls(folder, key, cert)
        registry = ca._registry()
        if registry.consortium != ca.consortium:
            raise ConfigurationError(f"{folder / _REGISTRY} belongs to another consortium")
        return ca

    def certificates(self) -> tuple[IssuedCertificate, ...]:
        """Every certificate this CA issued, oldest first, revoked ones included."""
        return self._registry().certificates

    def crl_pem(self) -> bytes:
        """The current certificate revocation list, PEM."""
        return (self._directory / _CRL).read_bytes()

    def issue(
        self,
        name: str,
        role: str,
        *,
        hosts: Iterable[str] = (),
        valid_days: int = 365,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        replace: bool = False,
    ) -> Credentials:
        """Issue a fresh key and certificate to participant ``name`` in ``role``.

        Parameters
        ----------
        name:
            A biofed id (:func:`biofed.core.check_id`, at most 64 characters): the subject CN.
        role:
            ``"coordinator"``, ``"site"``, ``"researcher"`` or ``"admin"``: the subject OU.
        hosts:
            Coordinator only: DNS names or IP addresses it is reached at (SubjectAltName;
            ``localhost`` and ``127.0.0.1`` are always added).
        valid_days:
            Validity period in days (capped at the CA certificate's expiry).
        not_before, not_after:
            Explicit validity period, overriding ``valid_days`` (tests use it for expired
            certificates).
        replace:
            Re-issue a name that holds a certificate already; the old one is revoked.

        Raises
        ------
        ConfigurationError
            If ``name`` already has a valid certificate and ``replace`` is false, or an
            argument is invalid.
        """
        check_name(name)
        check_role(role)
        host_list = [check_host(host) for host in hosts]
        if host_list and role != "coordinator":
            raise ConfigurationError("hosts are for the coordinator's certificate only")
        registry = self._registry()
        active = [c for c in registry.certificates if c.name == name and not c.revoked]
        if active and not replace:
            raise ConfigurationError(
                f"{name!r} already has a certificate (serial {active[-1].serial:x}); "
                "pass replace=True (CLI: --replace) to re-issue it and revoke the old one"
            )
        now = utcnow()
        start = now - _BACKDATE if not_before is None else as_utc(not_before, "not_before")
        if not_after is None:
            end = min(now + check_days(valid_days), self._cert.not_valid_after_utc)
        else:
            end = as_utc(not_after, "not_after")
        if end <= start:
            raise ConfigurationError(f"not_after ({end}) must be later than not_before ({start})")
        if now > self._cert.not_valid_after_utc:
            raise ConfigurationError("the CA certificate has expired; make a new consortium CA")
        key = generate_key()
        cert = leaf_certificate(
            self._key,
            self._cert,
            consortium=self.consortium,
            name=name,
            role=role,
            public_key=key.public_key(),
            start=start,
            end=end,
            hosts=host_list,
        )
        record = IssuedCertificate(
            name=name,
            role=role,
            serial=cert.serial_number,
            fingerprint=certificate_fingerprint(cert),
            not_after=cert.not_valid_after_utc,
        )
        registry = registry.revoking({c.serial for c in active}, now).adding(record)
        if active:
            self._publish(registry, now)
        else:
            write_registry(self._directory / _REGISTRY, registry)
        return Credentials(
            name=name,
            role=role,
            consortium=self.consortium,
            key_pem=key_pem(key),
            cert_pem=cert_pem(cert),
            ca_pem=self.ca_pem,
            serial=cert.serial_number,
            fingerprint=record.fingerprint,
            not_after=record.not_after,
        )

    def revoke(self, name: str) -> tuple[int, ...]:
        """Revoke every unrevoked certificate of ``name``; return the serials revoked now.

        The CA's ``crl.pem`` is re-signed, and so is the coordinator kit's copy when the
        ``provision init`` layout is found (``../coordinator/kit.toml`` next to this folder).
        Revoking a name whose certificates are all revoked already returns ``()``.

        Raises
        ------
        ConfigurationError
            If this CA never issued a certificate to ``name``.

        Security notes
        --------------
        An RFC 5280 §5 CRL (v2, CRLNumber and AuthorityKeyIdentifier extensions) signed by the
        CA key. Its nextUpdate is ``CRL_VALIDITY`` (30 days) ahead, but biofed's checks do not
        treat an older CRL as void: the CA is offline and the CRL travels by hand, so there is no
        fresher one to fetch, and refusing every peer would turn a missed chore into an
        outage. What the coordinator must get is *every* new CRL: copy it after each revoke.
        """
        registry = self._registry()
        if not any(c.name == name for c in registry.certificates):
            raise ConfigurationError(f"this CA never issued a certificate to {name!r}")
        now = utcnow()
        serials = tuple(c.serial for c in registry.certificates if c.name == name and not c.revoked)
        if serials:
            self._publish(registry.revoking(set(serials), now), now)
        return serials

    def _registry(self) -> Registry:
        return read_registry(self._directory / _REGISTRY)

    def _publish(self, registry: Registry, now: dt.datetime) -> None:
        """Save ``registry`` with the next CRL number and write the CRL it implies."""
        registry = dataclasses.replace(registry, crl_number=registry.crl_number + 1)
        crl = revocation_list(
            self._key,
            self._cert,
            number=registry.crl_number,
            revoked=[(c.serial, c.revoked_at or now) for c in registry.certificates if c.revoked],
            now=now,
        ).public_bytes(serialization.Encoding.PEM)
        write_registry(self._directory / _REGISTRY, registry)
        write_public(self._directory / _CRL, crl)
        refresh_crl(self._directory.parent / "coordinator", self.consortium, crl)
