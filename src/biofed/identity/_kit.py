"""A participant's kit: the folder with its key, certificate, the CA certificate and kit.toml."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from biofed.core import ConfigurationError
from biofed.identity._address import format_address, parse_address
from biofed.identity._kitfile import (
    DEFAULT_FILES,
    KIT_FILE,
    KitConfig,
    read_kit_config,
    render_kit_config,
)
from biofed.identity._pki import (
    Credentials,
    as_utc,
    certificate_fingerprint,
    check_private_mode,
    load_certificate,
    load_crl,
    make_private_dir,
    same_public_key,
    subject_field,
    utcnow,
    write_private,
    write_public,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kit:
    """A participant's verified kit, as :func:`load_kit` returns it.

    Attributes
    ----------
    name, role, consortium:
        Who the kit belongs to (the certificate's CN, OU and O).
    coordinator:
        The coordinator's address, ``"host:port"``.
    key_pem, cert_pem, ca_pem:
        Private key (hidden from ``repr``), certificate and CA certificate, PEM.
    crl_pem, crl_path:
        The CA's revocation list and where it lies (coordinator kits only, else None).
    directory:
        The kit folder.
    fingerprint:
        Hex SHA-256 of the certificate DER.
    listen, state:
        Coordinator kits only: the address to listen on and the state store URL.
    max_concurrent_runs:
        Coordinator kits only: runs executed at the same time (``None``: the default, 4).
    """

    name: str
    role: str
    consortium: str
    coordinator: str
    key_pem: bytes = field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    crl_pem: bytes | None = None
    crl_path: Path | None = None
    directory: Path
    fingerprint: str
    listen: str | None = None
    state: str | None = None
    max_concurrent_runs: int | None = None

    @staticmethod
    def reference() -> str:
        """The Markdown reference of every ``kit.toml`` key (``docs/reference/kit-toml.md``)."""
        from biofed.identity._kit_schema import render_kit_reference

        return render_kit_reference()


def load_kit(directory: str | os.PathLike[str], *, now: dt.datetime | None = None) -> Kit:
    """Load a kit folder and check that it is complete, consistent and private.

    Parameters
    ----------
    directory:
        The kit folder (the one holding ``kit.toml``).
    now:
        The time to check the certificate's validity at (default: the current UTC time).

    Raises
    ------
    ConfigurationError
        If a file is missing or unreadable, the key file is readable by group or others, the
        key does not match the certificate, the certificate was not issued by ``ca.pem``, the
        certificate's subject disagrees with ``kit.toml``, the certificate is outside its
        validity period, or the CRL is not signed by the CA.

    Security notes
    --------------
    Guards against a leaked or swapped key and a kit assembled from the wrong consortium
    before any connection is made (the TLS handshake would otherwise fail with a far less
    helpful message, or not at all for a group-readable key). The chain check is the RFC 5280
    §6.1 signature and issuer-name check for a one-level chain; the key-file rule mirrors
    OpenSSH's refusal of private keys with permissions wider than 0600.
    """
    folder = Path(directory)
    config = read_kit_config(folder)
    paths = {key: folder / value for key, value in config.files.items()}
    for what, path in paths.items():
        if not path.is_file():
            raise ConfigurationError(f"kit file {path} is missing (files.{what} in {KIT_FILE})")
    check_private_mode(paths["key"])
    raw = {what: path.read_bytes() for what, path in paths.items()}
    try:
        key = serialization.load_pem_private_key(raw["key"], password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{paths['key']} is not an unencrypted PEM private key") from exc
    try:
        cert = load_certificate(raw["cert"])
        ca = load_certificate(raw["ca"])
    except ValueError as exc:
        raise ConfigurationError(f"{folder}: cert or CA file is not a certificate") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigurationError(
            f"{paths['cert']} was not issued by the CA in {paths['ca']}: the kit mixes files "
            "from different consortia"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not same_public_key(key, cert):
        raise ConfigurationError(
            f"{paths['key']} does not belong to {paths['cert']}: the key and certificate "
            "are from different participants or issues"
        )
    subject = (
        subject_field(cert.subject, NameOID.COMMON_NAME),
        subject_field(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        subject_field(cert.subject, NameOID.ORGANIZATION_NAME),
    )
    if subject != (config.name, config.role, config.consortium):
        raise ConfigurationError(
            f"{KIT_FILE} says {config.role} {config.name!r} of {config.consortium!r} but the "
            f"certificate is for CN={subject[0]}, OU={subject[1]}, O={subject[2]}"
        )
    moment = utcnow() if now is None else as_utc(now, "now")
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise ConfigurationError(
            f"the certificate of {config.name!r} is valid from {cert.not_valid_before_utc:%Y-%m-%d}"
            f" to {cert.not_valid_after_utc:%Y-%m-%d}, not now: ask the operator for a new kit"
        )
    if "crl" in raw:
        _check_crl(raw["crl"], ca, paths["crl"])
    return Kit(
        name=config.name,
        role=config.role,
        consortium=config.consortium,
        coordinator=config.coordinator,
        key_pem=raw["key"],
        cert_pem=raw["cert"],
        ca_pem=raw["ca"],
        crl_pem=raw.get("crl"),
        crl_path=paths.get("crl"),
        directory=folder,
        fingerprint=certificate_fingerprint(cert),
        listen=config.listen,
        state=config.state,
        max_concurrent_runs=config.max_concurrent_runs,
    )


def _check_crl(data: bytes, ca: x509.Certificate, path: Path) -> None:
    try:
        crl = load_crl(data)
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not a certificate revocation list") from exc
    public = ca.public_key()
    if (
        not isinstance(public, ec.EllipticCurvePublicKey)
        or crl.issuer != ca.subject
        or not crl.is_signature_valid(public)
    ):
        raise ConfigurationError(f"{path} is not signed by this kit's CA")


def write_kit(
    directory: str | os.PathLike[str],
    credentials: Credentials,
    *,
    coordinator: str,
    crl_pem: bytes | None = None,
    listen: str | None = None,
    state: str | None = None,
    overwrite: bool = False,
) -> Kit:
    """Write a participant's kit folder and return it loaded back through :func:`load_kit`.

    Parameters
    ----------
    directory:
        The kit folder; created with mode 0700. It must be empty unless ``overwrite``.
    credentials:
        What :meth:`CertificateAuthority.issue` returned for the participant.
    coordinator:
        The coordinator's address, ``HOST[:PORT]`` (default port 7443).
    crl_pem:
        The CA's current CRL; required for (and only written to) a coordinator kit.
    listen, state:
        Coordinator kits only: the listen address and the state store URL for kit.toml.
    overwrite:
        Replace the files of an existing kit (re-issued certificates).

    Security notes
    --------------
    ``key.pem`` is created with mode 0600 by ``os.open(O_CREAT | O_EXCL)`` (or written under a
    temporary name that way and moved into place), so the key is never readable by others.
    """
    folder = Path(directory)
    is_coordinator = credentials.role == "coordinator"
    if is_coordinator and crl_pem is None:
        raise ConfigurationError("a coordinator kit needs crl_pem (the CA's current CRL)")
    if not is_coordinator and (crl_pem is not None or listen is not None or state is not None):
        raise ConfigurationError("crl_pem, listen and state belong to the coordinator's kit only")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise ConfigurationError(f"{folder} is not empty; refusing to overwrite a kit")
    files = {k: v for k, v in DEFAULT_FILES.items() if k != "crl" or is_coordinator}
    config = KitConfig(
        name=credentials.name,
        role=credentials.role,
        consortium=credentials.consortium,
        coordinator=format_address(*parse_address(coordinator)),
        files=files,
        listen=format_address(*parse_address(listen)) if listen is not None else None,
        state=state,
    )
    make_private_dir(folder)
    write_private(folder / files["key"], credentials.key_pem, overwrite=overwrite)
    write_public(folder / files["cert"], credentials.cert_pem)
    write_public(folder / files["ca"], credentials.ca_pem)
    if crl_pem is not None:
        write_public(folder / files["crl"], crl_pem)
    write_public(folder / KIT_FILE, render_kit_config(config).encode("utf-8"))
    return load_kit(folder)


def refresh_crl(directory: Path, consortium: str, crl_pem: bytes) -> bool:
    """Replace the CRL in the coordinator kit at ``directory`` if there is one of ``consortium``.

    Returns whether a kit was found and refreshed.
    """
    if not (directory / KIT_FILE).is_file():
        return False
    try:
        config = read_kit_config(directory)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"the CA's crl.pem is updated but not the copy in {directory} ({exc}); "
            "copy it there by hand"
        ) from exc
    if config.role != "coordinator" or config.consortium != consortium:
        return False
    write_public(directory / config.files["crl"], crl_pem)
    return True
