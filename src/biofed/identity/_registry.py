"""The CA's registry of issued certificates (``registry.json``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biofed.core import ConfigurationError
from biofed.identity._pki import write_public

REGISTRY_FORMAT = "biofed-ca-registry/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    """One certificate the consortium CA issued, as recorded in its registry.

    Attributes
    ----------
    name, role:
        The participant (subject CN) and its role (subject OU).
    serial:
        The certificate serial number.
    fingerprint:
        Hex SHA-256 of the certificate DER.
    not_after:
        End of the validity period (UTC).
    revoked:
        Whether the serial is on the CA's CRL.
    revoked_at:
        When it was revoked (UTC), or None.
    """

    name: str
    role: str
    serial: int
    fingerprint: str
    not_after: dt.datetime
    revoked: bool = False
    revoked_at: dt.datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (serial as lowercase hex, times as ISO 8601)."""
        return {
            "name": self.name,
            "role": self.role,
            "serial": format(self.serial, "x"),
            "fingerprint": self.fingerprint,
            "not_after": self.not_after.isoformat(),
            "revoked": self.revoked,
            "revoked_at": None if self.revoked_at is None else self.revoked_at.isoformat(),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Registry:
    """The whole registry file: consortium, last CRL number and the issued certificates."""

    consortium: str
    crl_number: int
    certificates: tuple[IssuedCertificate, ...]

    def adding(self, record: IssuedCertificate) -> Registry:
        """This registry with ``record`` appended."""
        return dataclasses.replace(self, certificates=(*self.certificates, record))

    def revoking(self, serials: Set[int], when: dt.datetime) -> Registry:
        """This registry with the certificates of ``serials`` marked revoked at ``when``."""
        certificates = tuple(
            dataclasses.replace(c, revoked=True, revoked_at=when)
            if c.serial in serials and not c.revoked
            else c
            for c in self.certificates
        )
        return dataclasses.replace(self, certificates=certificates)


def _time(value: object, path: Path) -> dt.datetime:
    if not isinstance(value, str):
        raise ConfigurationError(f"{path}: times must be ISO 8601 strings")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigurationError(f"{path}: bad time {value!r}") from exc
    if moment.tzinfo is None:
        raise ConfigurationError(f"{path}: time {value!r} has no time zone")
    return moment.astimezone(dt.timezone.utc)


def _record(item: object, path: Path) -> IssuedCertificate:
    if not isinstance(item, dict):
        raise ConfigurationError(f"{path}: each certificate must be an object")
    try:
        name, role, serial = item["name"], item["role"], item["serial"]
        fingerprint, revoked, revoked_at = item["fingerprint"], item["revoked"], item["revoked_at"]
        not_after = item["not_after"]
    except KeyError as exc:
        raise ConfigurationError(f"{path}: a certificate lacks {exc.args[0]!r}") from exc
    if not (
        isinstance(name, str)
        and isinstance(role, str)
        and isinstance(serial, str)
        and isinstance(fingerprint, str)
        and isinstance(revoked, bool)
    ):
        raise ConfigurationError(f"{path}: malformed certificate record {item!r}")
    try:
        serial_int = int(serial, 16)
    except ValueError as exc:
        raise ConfigurationError(f"{path}: serial {serial!r} is not hexadecimal") from exc
    return IssuedCertificate(
        name=name,
        role=role,
        serial=serial_int,
        fingerprint=fingerprint,
        not_after=_time(not_after, path),
        revoked=revoked,
        revoked_at=None if revoked_at is None else _time(revoked_at, path),
    )


def read_registry(path: Path) -> Registry:
    """Parse and check ``registry.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{path} not found: is {path.parent} a biofed CA?") from exc
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise ConfigurationError(f"{path} is not a {REGISTRY_FORMAT} file")
    consortium, crl_number, items = (
        data.get("consortium"),
        data.get("crl_number"),
        data.get("certificates"),
    )
    if (
        not isinstance(consortium, str)
        or not isinstance(crl_number, int)
        or not isinstance(items, list)
    ):
        raise ConfigurationError(f"{path}: needs consortium, crl_number and certificates")
    return Registry(
        consortium=consortium,
        crl_number=crl_number,
        certificates=tuple(_record(item, path) for item in items),
    )


def write_registry(path: Path, registry: Registry) -> None:
    """Write ``registry.json`` atomically."""
    data = {
        "format": REGISTRY_FORMAT,
        "consortium": registry.consortium,
        "crl_number": registry.crl_number,
        "certificates": [record.to_dict() for record in registry.certificates],
    }
    write_public(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
