"""Signing a study agreement with a kit's key and checking that it is in force."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance._agreement._checks import check_hex64, no_extra, table
from biofed.governance._agreement._model import StudyAgreement, _name
from biofed.governance._agreement._schema import SIGNATURES
from biofed.governance._agreement._toml import HEADER, dumps, loads
from biofed.identity import Kit

_SIGNATURE_KEYS = SIGNATURES.ordered  # declared in the schema the reference renders


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ConfigurationError(f"now must be timezone-aware, got {now!r}")
    return now.astimezone(dt.timezone.utc)


@dataclass(frozen=True, slots=True, kw_only=True)
class Signature:
    """One party's signature over an agreement's canonical bytes.

    Attributes
    ----------
    fingerprint:
        Hex SHA-256 of the signer's certificate DER.
    signature:
        Base64 of the DER-encoded ECDSA P-256 / SHA-256 signature.
    signed_at:
        When it was made (UTC); informational, not covered by the signature.
    digest:
        Hex SHA-256 of the canonical bytes that were signed; informational, used to tell
        "the agreement changed after signing" from "the signature is corrupt".
    """

    fingerprint: str
    signature: str
    signed_at: dt.datetime
    digest: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "fingerprint", check_hex64(self.fingerprint, "fingerprint"))
        object.__setattr__(self, "digest", check_hex64(self.digest, "digest"))
        if not isinstance(self.signature, str) or not self.signature:
            raise ConfigurationError("signature must be non-empty base64 text")
        if not isinstance(self.signed_at, dt.datetime) or self.signed_at.utcoffset() is None:
            raise ConfigurationError(f"signed_at must be a UTC datetime, got {self.signed_at!r}")
        object.__setattr__(self, "signed_at", self.signed_at.astimezone(dt.timezone.utc))


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedAgreement:
    """An agreement with the signatures collected so far (none for a fresh draft).

    Stored as one TOML file: the agreement's tables plus a ``[signatures.<name>]`` table per
    signer (:meth:`to_toml`, :meth:`from_toml`).
    """

    agreement: StudyAgreement
    signatures: Mapping[str, Signature] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.agreement, StudyAgreement):
            raise ConfigurationError("agreement must be a StudyAgreement")
        signatures: dict[str, Signature] = {}
        for name in sorted(self.signatures):
            if not isinstance(self.signatures[name], Signature):
                raise ConfigurationError(f"signature of {name!r} must be a Signature")
            signatures[_name(name, "signer name")] = self.signatures[name]
        object.__setattr__(self, "signatures", MappingProxyType(signatures))

    def to_toml(self) -> str:
        """The agreement and its signatures as one deterministic TOML document."""
        data = self.agreement.to_data()
        if self.signatures:
            data["signatures"] = {
                name: {
                    "fingerprint": s.fingerprint,
                    "digest": s.digest,
                    "signed_at": s.signed_at,
                    "signature": s.signature,
                }
                for name, s in self.signatures.items()
            }
        return dumps(data, comments=HEADER)

    @classmethod
    def from_toml(cls, text: str, where: str = "agreement") -> SignedAgreement:
        """Parse an agreement file, signed or not; the signatures are not verified here."""
        data = loads(text, where)
        raw = data.pop("signatures", {})
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{where}: [signatures] must be a table of tables")
        signatures: dict[str, Signature] = {}
        for name in raw:
            entry = table(raw, name, f"{where} [signatures]")
            here = f"{where} [signatures.{name}]"
            no_extra(entry, _SIGNATURE_KEYS, here)
            missing = [key for key in _SIGNATURE_KEYS if key not in entry]
            if missing:
                raise ConfigurationError(f"{here}: {', '.join(missing)} missing")
            try:
                signatures[name] = Signature(**entry)  # type: ignore[arg-type]
            except (ConfigurationError, TypeError) as exc:
                raise ConfigurationError(f"{here}: {exc}") from exc
        return cls(agreement=StudyAgreement.from_data(data, where), signatures=signatures)


def sign(signed: SignedAgreement, kit: Kit, *, now: dt.datetime | None = None) -> SignedAgreement:
    """Add (or replace) the signature of ``kit``'s participant.

    Raises
    ------
    PolicyViolation
        If the kit's participant is not a party or the coordinator of the agreement, its role
        or certificate differs from the one listed, or the agreement has expired.
    ConfigurationError
        If the kit's key is not an ECDSA key.

    Security notes
    --------------
    ECDSA P-256 with SHA-256 (FIPS 186-4) over the canonical JSON bytes, which bind every
    field's value (RFC 8785-style canonicalisation: sorted keys, no whitespace, UTF-8), so a
    party signs what the agreement means, not how a file is laid out. Signing checks the
    kit's certificate fingerprint against the listed one so a party cannot sign with a key
    that verifiers would not accept.
    """
    agreement = signed.agreement
    party = agreement.signer(kit.name)
    if party is None:
        raise PolicyViolation(
            f"{kit.name!r} is not a party to agreement {agreement.agreement_id!r} and may not "
            f"sign it (signers: {', '.join(p.name for p in agreement.signers)})"
        )
    if party.role != kit.role:
        raise PolicyViolation(
            f"agreement lists {party.name!r} as {party.role}, but the kit is a {kit.role}'s"
        )
    if kit.fingerprint != party.fingerprint:
        raise PolicyViolation(
            f"the certificate in kit {kit.name!r} ({kit.fingerprint[:16]}…) is not the one the "
            f"agreement lists ({party.fingerprint[:16]}…): draft it again with the current "
            "certificates"
        )
    moment = _utc(now)
    if moment.date() > agreement.expires:
        raise PolicyViolation(
            f"agreement {agreement.agreement_id!r} expired on {agreement.expires}"
        )
    key = serialization.load_pem_private_key(kit.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError(f"the key of kit {kit.name!r} is not an ECDSA key")
    raw = key.sign(agreement.canonical_bytes(), ec.ECDSA(hashes.SHA256()))
    signature = Signature(
        fingerprint=kit.fingerprint,
        signature=base64.b64encode(raw).decode("ascii"),
        signed_at=moment,
        digest=agreement.digest(),
    )
    return replace(signed, signatures={**signed.signatures, kit.name: signature})
