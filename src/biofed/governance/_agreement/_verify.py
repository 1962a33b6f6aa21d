"""Checking that a signed study agreement is in force: every signature, every party, the date."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import PolicyViolation
from biofed.governance._agreement._model import Party, StudyAgreement
from biofed.governance._agreement._sign import Signature, SignedAgreement, _utc
from biofed.identity import identify_peer


@dataclass(frozen=True, slots=True, kw_only=True)
class AgreementStatus:
    """The outcome of :func:`verify`.

    Attributes
    ----------
    agreement_id, digest:
        Which agreement (and the hex SHA-256 of its canonical bytes).
    in_force:
        True only if every party and the coordinator signed validly, nothing else signed,
        and the agreement has not expired.
    reasons:
        Why it is not in force, most serious first (empty when in force).
    signed_by:
        Signers whose signature verified.
    missing:
        Parties (or the coordinator) with no signature in the file.
    """

    agreement_id: str
    digest: str
    in_force: bool
    reasons: tuple[str, ...]
    signed_by: tuple[str, ...]
    missing: tuple[str, ...]


def _check_one(
    party: Party,
    sig: Signature,
    agreement: StudyAgreement,
    cert_pem: bytes | None,
    ca_pem: bytes,
    crl_pem: bytes | None,
    moment: dt.datetime,
) -> str | None:
    who = f"{party.role} {party.name!r}"
    if cert_pem is None:
        return f"no certificate of {who} to check its signature with"
    try:
        peer = identify_peer(cert_pem, ca_pem, crl_pem=crl_pem, now=moment)
    except PolicyViolation as exc:
        return f"signature of {who} refused: {exc}"
    if (peer.name, peer.role) != (party.name, party.role):
        return f"signature of {who} refused: the certificate given is {peer.role} {peer.name!r}'s"
    if peer.consortium != agreement.consortium:
        return f"signature of {who} refused: certificate of consortium {peer.consortium!r}"
    if peer.fingerprint != party.fingerprint or sig.fingerprint != party.fingerprint:
        return (
            f"signature of {who} refused: made with certificate {sig.fingerprint[:16]}…, checked "
            f"against {peer.fingerprint[:16]}…, but the agreement lists {party.fingerprint[:16]}…"
        )
    try:
        raw = base64.b64decode(sig.signature, validate=True)
        public = _certificate(cert_pem).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            return f"signature of {who} refused: the certificate holds no ECDSA key"
        public.verify(raw, agreement.canonical_bytes(), ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, InvalidSignature, ValueError):
        digest = agreement.digest()
        if sig.digest != digest:
            return (
                f"signature of {who} is invalid: the agreement was edited after {party.name!r} "
                f"signed it (content digest then {sig.digest[:16]}…, now {digest[:16]}…)"
            )
        return f"signature of {who} is invalid: corrupt, or not made with its certificate's key"
    return None


def _certificate(data: bytes) -> x509.Certificate:
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def verify(
    signed: SignedAgreement,
    certificates: Mapping[str, bytes],
    ca_pem: bytes,
    *,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    crl_pem: bytes | None = None,
) -> AgreementStatus:
    """Check every signature and say whether the agreement is in force.

    Parameters
    ----------
    signed:
        The agreement with its signatures.
    certificates:
        Signer name → certificate PEM; a signer without one counts as not validly signed.
    ca_pem:
        The consortium CA certificate every signer's certificate must chain to.
    today:
        The date (UTC) to check the expiry against (default: today, from ``now``).
    now:
        The time to check certificate validity at (default: the current UTC time).
    crl_pem:
        The CA's revocation list, if at hand: a revoked signer's signature is refused.

    Returns
    -------
    AgreementStatus
        ``in_force`` only if the coordinator and every party signed with the listed
        certificate, nobody else signed, and ``today`` ≤ ``expires``.

    Raises
    ------
    ConfigurationError
        If ``ca_pem`` or ``crl_pem`` is not usable (a broken local kit, not a bad agreement).

    Security notes
    --------------
    Threat: an agreement edited after signing (a wider metric list, a larger ε, a later
    expiry), a signature by someone outside the agreement, or a certificate swapped for
    another. Each signature is an ECDSA P-256/SHA-256 signature (FIPS 186-4) over the
    canonical bytes of the current content, verified with the signer's certificate after
    RFC 5280 path validation against the consortium CA (:func:`~biofed.identity.identify_peer`)
    and a match of its SHA-256 fingerprint with the one the agreement lists, so editing any
    field invalidates every signature and a certificate from another CA or another issue
    is refused. Fails closed: anything unverifiable is a reason not to be in force.
    """
    moment = _utc(now)
    day = moment.date() if today is None else today
    agreement = signed.agreement
    invalid: list[str] = []
    foreign: list[str] = []
    signed_by: list[str] = []
    for name, sig in signed.signatures.items():
        party = agreement.signer(name)
        if party is None:
            foreign.append(
                f"signature by {name!r} refused: {name!r} is not a party to the agreement"
            )
            continue
        problem = _check_one(party, sig, agreement, certificates.get(name), ca_pem, crl_pem, moment)
        if problem is None:
            signed_by.append(name)
        else:
            invalid.append(problem)
    missing = [p.name for p in agreement.signers if p.name not in signed.signatures]
    reasons = [*invalid, *foreign]
    reasons += [f"not signed by {agreement.signer(m).role} {m!r}" for m in missing]  # type: ignore[union-attr]
    if day > agreement.expires:
        reasons.append(f"expired on {agreement.expires} (today is {day})")
    return AgreementStatus(
        agreement_id=agreement.agreement_id,
        digest=agreement.digest(),
        in_force=not reasons,
        reasons=tuple(reasons),
        signed_by=tuple(signed_by),
        missing=tuple(missing),
    )


def require_in_force(
    signed: SignedAgreement,
    certificates: Mapping[str, bytes],
    ca_pem: bytes,
    *,
    party: str | None = None,
    today: dt.date | None = None,
    now: dt.datetime | None = None,
    crl_pem: bytes | None = None,
) -> AgreementStatus:
    """:func:`verify`, raising PolicyViolation unless the agreement is in force.

    Parameters
    ----------
    party:
        If given (a node passes its own name), that participant must be a signer too.

    Raises
    ------
    PolicyViolation
        Naming the agreement and the first rule that failed.

    Security notes
    --------------
    For a node's checks before every round: the site trusts only an agreement that it
    signed itself, checked locally, never the coordinator's word (see :func:`verify`).
    """
    agreement = signed.agreement
    if party is not None and agreement.signer(party) is None:
        raise PolicyViolation(
            f"study agreement {agreement.agreement_id!r}: {party!r} is not a party to it"
        )
    status = verify(signed, certificates, ca_pem, today=today, now=now, crl_pem=crl_pem)
    if not status.in_force:
        raise PolicyViolation(
            f"study agreement {agreement.agreement_id!r} is not in force: {status.reasons[0]}"
        )
    return status
