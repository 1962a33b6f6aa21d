"""identify_peer and RevocationList: what the transport asks of every connection."""

from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from biofed.core import ConfigurationError, PolicyViolation
from biofed.identity import (
    CertificateAuthority,
    Credentials,
    PeerIdentity,
    RevocationList,
    identify_peer,
)

UTC = dt.timezone.utc


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", "Acme Oncology")


@pytest.fixture
def site(ca: CertificateAuthority) -> Credentials:
    return ca.issue("site-a", "site")


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_accepts_a_good_certificate(ca: CertificateAuthority, site: Credentials) -> None:
    peer = identify_peer(site.cert_pem, ca.ca_pem, crl_pem=ca.crl_pem())
    assert peer == PeerIdentity(
        name="site-a",
        role="site",
        consortium="Acme Oncology",
        fingerprint=site.fingerprint,
        serial=site.serial,
    )
    assert identify_peer(_der(site.cert_pem), _der(ca.ca_pem)) == peer


def test_accepts_the_coordinator_and_filters_roles(
    ca: CertificateAuthority, site: Credentials
) -> None:
    coordinator = ca.issue("coordinator", "coordinator", hosts=["fl.example.org"])
    peer = identify_peer(coordinator.cert_pem, ca.ca_pem, roles={"coordinator"})
    assert peer.role == "coordinator"
    with pytest.raises(PolicyViolation, match="has role 'site'; expected coordinator"):
        identify_peer(site.cert_pem, ca.ca_pem, roles={"coordinator"})


def test_rejects_a_certificate_of_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    # Same consortium name and subject, different key: an impostor CA.
    impostor = CertificateAuthority.create(tmp_path / "evil", "Acme Oncology")
    forged = impostor.issue("site-a", "site")
    with pytest.raises(PolicyViolation, match="not issued by this consortium's CA"):
        identify_peer(forged.cert_pem, ca.ca_pem)


def test_rejects_an_expired_certificate(ca: CertificateAuthority) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=UTC)
    old = ca.issue("old", "site", not_before=start, not_after=start + dt.timedelta(days=1))
    with pytest.raises(PolicyViolation, match="certificate of 'old' expired on 2020-01-02"):
        identify_peer(old.cert_pem, ca.ca_pem)


def test_rejects_a_certificate_not_yet_valid(ca: CertificateAuthority, site: Credentials) -> None:
    with pytest.raises(PolicyViolation, match="not valid before"):
        identify_peer(site.cert_pem, ca.ca_pem, now=dt.datetime(2001, 1, 1, tzinfo=UTC))


def test_rejects_a_revoked_certificate(ca: CertificateAuthority, site: Credentials) -> None:
    other = ca.issue("site-b", "site")
    crl_before = ca.crl_pem()
    ca.revoke("site-a")
    with pytest.raises(PolicyViolation, match="certificate of 'site-a' was revoked"):
        identify_peer(site.cert_pem, ca.ca_pem, crl_pem=ca.crl_pem())
    assert identify_peer(other.cert_pem, ca.ca_pem, crl_pem=ca.crl_pem()).name == "site-b"
    # An older CRL does not know yet: the coordinator must be handed every new one.
    assert identify_peer(site.cert_pem, ca.ca_pem, crl_pem=crl_before).name == "site-a"


def test_rejects_a_crl_signed_by_another_key(
    ca: CertificateAuthority, site: Credentials, tmp_path: Path
) -> None:
    impostor = CertificateAuthority.create(tmp_path / "evil", "Acme Oncology")
    with pytest.raises(PolicyViolation, match="CRL is not signed by this consortium's CA"):
        identify_peer(site.cert_pem, ca.ca_pem, crl_pem=impostor.crl_pem())


def test_rejects_the_ca_certificate_itself(ca: CertificateAuthority) -> None:
    with pytest.raises(PolicyViolation, match="is a CA certificate"):
        identify_peer(ca.ca_pem, ca.ca_pem)


def test_bad_bytes(ca: CertificateAuthority, site: Credentials) -> None:
    with pytest.raises(PolicyViolation, match=r"not an X\.509 certificate"):
        identify_peer(b"garbage", ca.ca_pem)
    with pytest.raises(ConfigurationError, match="ca_pem"):
        identify_peer(site.cert_pem, b"garbage")
    with pytest.raises(ConfigurationError, match="ca_pem is not a consortium CA"):
        identify_peer(site.cert_pem, site.cert_pem)
    with pytest.raises(ConfigurationError, match="crl_pem"):
        identify_peer(site.cert_pem, ca.ca_pem, crl_pem=b"garbage")
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        identify_peer(site.cert_pem, ca.ca_pem, now=dt.datetime(2030, 1, 1))


def _bump_mtime(path: Path) -> None:
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))


def test_revocation_list_reloads_when_the_file_changes(
    ca: CertificateAuthority, site: Credentials, tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(ca.crl_pem())
    crl = RevocationList(path, ca.ca_pem)
    assert crl.path == path
    assert not crl.is_revoked(site.serial)
    ca.revoke("site-a")
    assert not crl.is_revoked(site.serial)  # not copied yet
    path.write_bytes(ca.crl_pem())
    _bump_mtime(path)
    assert crl.is_revoked(site.serial)
    assert crl.pem() == ca.crl_pem()


def test_revocation_list_fails_closed(
    ca: CertificateAuthority, site: Credentials, tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(ca.crl_pem())
    crl = RevocationList(path, ca.ca_pem)
    impostor = CertificateAuthority.create(tmp_path / "evil", "Acme Oncology")
    path.write_bytes(impostor.crl_pem())
    _bump_mtime(path)
    for _ in range(2):  # keeps refusing, never falls back to the old list
        with pytest.raises(PolicyViolation, match="not signed"):
            crl.is_revoked(site.serial)
    path.write_bytes(b"half a fi")
    _bump_mtime(path)
    with pytest.raises(ConfigurationError, match="not a PEM or DER"):
        crl.is_revoked(site.serial)
    path.unlink()
    with pytest.raises(ConfigurationError, match="cannot read the CRL"):
        crl.is_revoked(site.serial)
    path.write_bytes(ca.crl_pem())
    assert not crl.is_revoked(site.serial)
    with pytest.raises(ConfigurationError):
        RevocationList(tmp_path / "missing.pem", ca.ca_pem)


def test_revocation_list_is_thread_safe(
    ca: CertificateAuthority, site: Credentials, tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(ca.crl_pem())
    crl = RevocationList(path, ca.ca_pem)
    errors: list[BaseException] = []

    def check() -> None:
        try:
            for _ in range(50):
                crl.is_revoked(site.serial)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=check) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
