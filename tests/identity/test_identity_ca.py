"""The consortium CA: certificate profiles, registry, re-issue and revocation."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from biofed.core import ConfigurationError
from biofed.identity import CRL_VALIDITY, CertificateAuthority, certificate_fingerprint


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", "Acme Oncology")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_pem())


def test_create_writes_a_ca_folder(ca: CertificateAuthority) -> None:
    files = sorted(p.name for p in ca.directory.iterdir())
    assert files == ["ca-key.pem", "ca.pem", "crl.pem", "registry.json"]
    assert _mode(ca.directory / "ca-key.pem") == 0o600
    assert _mode(ca.directory) == 0o700
    cert = x509.load_pem_x509_certificate(ca.ca_pem)
    assert cert.subject.rfc4514_string() == "CN=Acme Oncology CA,O=Acme Oncology"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.fingerprint == certificate_fingerprint(ca.ca_pem)
    crl = _crl(ca)
    assert len(crl) == 0
    assert crl.is_signature_valid(cert.public_key())
    assert json.loads((ca.directory / "registry.json").read_text())["certificates"] == []


def test_create_refuses_to_overwrite(ca: CertificateAuthority) -> None:
    key_before = (ca.directory / "ca-key.pem").read_bytes()
    with pytest.raises(ConfigurationError, match="already holds a CA"):
        CertificateAuthority.create(ca.directory, "Other")
    assert (ca.directory / "ca-key.pem").read_bytes() == key_before


def test_load_round_trip_and_refuses_readable_key(ca: CertificateAuthority) -> None:
    ca.issue("site-a", "site")
    again = CertificateAuthority.load(ca.directory)
    assert again.consortium == "Acme Oncology"
    assert again.ca_pem == ca.ca_pem
    assert [c.name for c in again.certificates()] == ["site-a"]
    os.chmod(ca.directory / "ca-key.pem", 0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        CertificateAuthority.load(ca.directory)


def test_load_of_a_non_ca_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a biofed CA"):
        CertificateAuthority.load(tmp_path)


def test_coordinator_certificate_profile(ca: CertificateAuthority) -> None:
    creds = ca.issue("coordinator", "coordinator", hosts=["fl.example.org", "10.0.0.7"])
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == (
        "coordinator"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.7"),
        ipaddress.ip_address("127.0.0.1"),
    ]
    ca_cert = x509.load_pem_x509_certificate(ca.ca_pem)
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 0 < cert.serial_number < 2**159
    cert.verify_directly_issued_by(ca_cert)


def test_site_certificate_profile(ca: CertificateAuthority) -> None:
    creds = ca.issue("site-a", "site", valid_days=30)
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.subject.rfc4514_string() == "CN=site-a,OU=site,O=Acme Oncology"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["site-a"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=6)
    assert creds.serial == cert.serial_number
    assert creds.fingerprint == certificate_fingerprint(cert)
    assert "PRIVATE KEY" not in repr(creds)


@pytest.mark.parametrize(
    ("name", "role", "hosts", "match"),
    [
        ("site-a", "nurse", (), "role must be one of"),
        ("bad name", "site", (), "participant name"),
        ("x" * 65, "site", (), "at most 64"),
        ("site-a", "site", ("h.example",), "coordinator's certificate only"),
        ("coordinator", "coordinator", ("not a host",), "DNS name"),
    ],
)
def test_issue_validates_arguments(
    ca: CertificateAuthority, name: str, role: str, hosts: tuple[str, ...], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ca.issue(name, role, hosts=hosts)


def test_reissue_requires_replace_and_revokes_the_old_serial(ca: CertificateAuthority) -> None:
    first = ca.issue("site-a", "site")
    with pytest.raises(ConfigurationError, match="replace=True"):
        ca.issue("site-a", "site")
    second = ca.issue("site-a", "site", replace=True)
    assert second.serial != first.serial
    crl = _crl(ca)
    assert crl.get_revoked_certificate_by_serial_number(first.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(second.serial) is None
    records = ca.certificates()
    assert [(r.serial, r.revoked) for r in records] == [
        (first.serial, True),
        (second.serial, False),
    ]


def test_revoke_updates_crl_and_registry(ca: CertificateAuthority) -> None:
    a = ca.issue("site-a", "site")
    b = ca.issue("site-b", "site")
    number_before = _crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert ca.revoke("site-a") == (a.serial,)
    assert ca.revoke("site-a") == ()
    crl = _crl(ca)
    assert crl.get_revoked_certificate_by_serial_number(a.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(b.serial) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == number_before + 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == CRL_VALIDITY
    ca_cert = x509.load_pem_x509_certificate(ca.ca_pem)
    assert crl.issuer == ca_cert.subject
    registry = json.loads((ca.directory / "registry.json").read_text())
    entry = next(c for c in registry["certificates"] if c["name"] == "site-a")
    assert entry["revoked"] is True
    assert entry["serial"] == format(a.serial, "x")
    assert entry["fingerprint"] == a.fingerprint
    assert set(entry) == {
        "name",
        "role",
        "serial",
        "fingerprint",
        "not_after",
        "revoked",
        "revoked_at",
    }


def test_revoke_unknown_name(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigurationError, match="never issued"):
        ca.revoke("ghost")


def test_validity_overrides(ca: CertificateAuthority) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    creds = ca.issue("old", "site", not_before=start, not_after=start + dt.timedelta(days=1))
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.not_valid_before_utc == start
    assert creds.not_after == start + dt.timedelta(days=1)
    with pytest.raises(ConfigurationError, match="later than"):
        ca.issue("neg", "site", not_before=start, not_after=start)
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        ca.issue("naive", "site", not_after=dt.datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="positive integer"):
        ca.issue("zero", "site", valid_days=0)


def test_certificate_lifetime_capped_at_ca_expiry(tmp_path: Path) -> None:
    short = CertificateAuthority.create(tmp_path / "ca", "Short", valid_days=10)
    creds = short.issue("site-a", "site", valid_days=365)
    ca_cert = x509.load_pem_x509_certificate(short.ca_pem)
    assert creds.not_after <= ca_cert.not_valid_after_utc
