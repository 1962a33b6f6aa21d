"""Certificate and CRL profiles of the consortium PKI (what goes into each one, per RFC 5280)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from biofed.identity._address import is_ip
from biofed.identity._pki import subject_of

CRL_VALIDITY = dt.timedelta(days=30)
"""How far ahead a CRL's nextUpdate lies; informational, see :meth:`CertificateAuthority.revoke`."""

LOCAL_HOSTS = ("localhost", "127.0.0.1")
"""Always in the coordinator certificate's SubjectAltName, for single-machine federations."""


def _key_usage(*, digital_signature: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _general_name(host: str) -> x509.GeneralName:
    if is_ip(host):
        return x509.IPAddress(ipaddress.ip_address(host))
    return x509.DNSName(host)


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def ca_certificate(
    key: ec.EllipticCurvePrivateKey, consortium: str, start: dt.datetime, end: dt.datetime
) -> x509.Certificate:
    """The self-signed CA certificate: ``O=consortium, CN=<consortium> CA``, cA=TRUE, pathLen=0."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} CA"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def leaf_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    consortium: str,
    name: str,
    role: str,
    public_key: ec.EllipticCurvePublicKey,
    start: dt.datetime,
    end: dt.datetime,
    hosts: Sequence[str] = (),
) -> x509.Certificate:
    """A participant certificate signed by the CA.

    The coordinator's has ExtendedKeyUsage serverAuth + clientAuth and a SubjectAltName with
    ``hosts`` plus :data:`LOCAL_HOSTS`; every other role has clientAuth and ``DNS:<name>``.
    """
    if role == "coordinator":
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        sans = list(dict.fromkeys([*hosts, *LOCAL_HOSTS]))
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        sans = [name]
    return (
        x509.CertificateBuilder()
        .subject_name(subject_of(consortium, role, name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in sans]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def revocation_list(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    number: int,
    revoked: Iterable[tuple[int, dt.datetime]],
    now: dt.datetime,
) -> x509.CertificateRevocationList:
    """A v2 CRL (CRLNumber, AuthorityKeyIdentifier) listing ``(serial, revocation date)``."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())
