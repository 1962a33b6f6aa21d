"""Kit folders: what write_kit writes, and everything load_kit refuses."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from biofed.core import ConfigurationError
from biofed.identity import (
    CertificateAuthority,
    Kit,
    certificate_fingerprint,
    load_kit,
    write_kit,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", "Acme Oncology")


@pytest.fixture
def site_kit(ca: CertificateAuthority, tmp_path: Path) -> Kit:
    return write_kit(tmp_path / "site-a", ca.issue("site-a", "site"), coordinator="fl.example.org")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_site_kit_files_and_modes(site_kit: Kit) -> None:
    folder = site_kit.directory
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "cert.pem", "key.pem", "kit.toml"]
    assert _mode(folder / "key.pem") == 0o600
    assert _mode(folder) == 0o700
    config = tomllib.loads((folder / "kit.toml").read_text())
    assert config == {
        "name": "site-a",
        "role": "site",
        "consortium": "Acme Oncology",
        "coordinator": "fl.example.org:7443",
        "files": {"key": "key.pem", "cert": "cert.pem", "ca": "ca.pem"},
    }
    assert "# [datasets]" in (folder / "kit.toml").read_text()
    assert site_kit.name == "site-a"
    assert site_kit.role == "site"
    assert site_kit.coordinator == "fl.example.org:7443"
    assert site_kit.crl_pem is None
    assert site_kit.listen is None
    assert site_kit.state is None
    assert site_kit.key_pem == (folder / "key.pem").read_bytes()
    assert "key_pem" not in repr(site_kit)
    der = x509.load_pem_x509_certificate(site_kit.cert_pem).public_bytes(serialization.Encoding.DER)
    assert site_kit.fingerprint == hashlib.sha256(der).hexdigest()
    assert certificate_fingerprint(der) == certificate_fingerprint(site_kit.cert_pem)


def test_coordinator_kit(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.issue("coordinator", "coordinator", hosts=["fl.example.org"])
    with pytest.raises(ConfigurationError, match="needs crl_pem"):
        write_kit(tmp_path / "c", creds, coordinator="fl.example.org")
    kit = write_kit(
        tmp_path / "c",
        creds,
        coordinator="fl.example.org:9000",
        crl_pem=ca.crl_pem(),
        listen="0.0.0.0:9000",
        state="sqlite:////srv/biofed/state.db",
    )
    assert kit.crl_pem == ca.crl_pem()
    assert kit.crl_path == tmp_path / "c" / "crl.pem"
    assert kit.listen == "0.0.0.0:9000"
    assert kit.state == "sqlite:////srv/biofed/state.db"
    config = tomllib.loads((tmp_path / "c" / "kit.toml").read_text())
    assert config["files"]["crl"] == "crl.pem"


def test_write_kit_refuses_a_non_empty_folder(ca: CertificateAuthority, site_kit: Kit) -> None:
    key_before = (site_kit.directory / "key.pem").read_bytes()
    creds = ca.issue("site-a", "site", replace=True)
    with pytest.raises(ConfigurationError, match="not empty"):
        write_kit(site_kit.directory, creds, coordinator="h")
    assert (site_kit.directory / "key.pem").read_bytes() == key_before
    kit = write_kit(site_kit.directory, creds, coordinator="h", overwrite=True)
    assert kit.key_pem == creds.key_pem
    assert _mode(site_kit.directory / "key.pem") == 0o600
    assert not [p for p in site_kit.directory.iterdir() if p.name.endswith(".tmp")]


def test_crl_and_listen_only_for_the_coordinator(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.issue("site-b", "site")
    with pytest.raises(ConfigurationError, match="coordinator's kit only"):
        write_kit(tmp_path / "b", creds, coordinator="h", crl_pem=ca.crl_pem())


def test_load_kit_detects_key_certificate_mismatch(
    ca: CertificateAuthority, site_kit: Kit, tmp_path: Path
) -> None:
    other = write_kit(tmp_path / "site-b", ca.issue("site-b", "site"), coordinator="h")
    os.chmod(site_kit.directory / "key.pem", 0o600)
    (site_kit.directory / "key.pem").write_bytes(other.key_pem)
    with pytest.raises(ConfigurationError, match="does not belong to"):
        load_kit(site_kit.directory)


def test_load_kit_detects_a_certificate_from_another_ca(site_kit: Kit, tmp_path: Path) -> None:
    # Same consortium name, different CA key: only the signature tells them apart.
    impostor = CertificateAuthority.create(tmp_path / "other-ca", "Acme Oncology")
    (site_kit.directory / "ca.pem").write_bytes(impostor.ca_pem)
    with pytest.raises(ConfigurationError, match="not issued by the CA"):
        load_kit(site_kit.directory)


def test_load_kit_refuses_a_readable_key(site_kit: Kit) -> None:
    key = site_kit.directory / "key.pem"
    for mode in (0o644, 0o640, 0o604):
        os.chmod(key, mode)
        with pytest.raises(ConfigurationError, match=f"chmod 600 {key}"):
            load_kit(site_kit.directory)
    os.chmod(key, 0o400)
    assert load_kit(site_kit.directory).name == "site-a"


def test_load_kit_missing_file_and_folder(site_kit: Kit, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"kit\.toml not found"):
        load_kit(tmp_path / "nowhere")
    (site_kit.directory / "cert.pem").unlink()
    with pytest.raises(ConfigurationError, match=r"cert\.pem is missing"):
        load_kit(site_kit.directory)


def test_load_kit_refuses_file_names_outside_the_folder(site_kit: Kit) -> None:
    toml = site_kit.directory / "kit.toml"
    toml.write_text(toml.read_text().replace('key = "key.pem"', 'key = "../../etc/key.pem"'))
    with pytest.raises(ConfigurationError, match="file name inside the kit folder"):
        load_kit(site_kit.directory)


def test_load_kit_refuses_a_subject_that_disagrees(site_kit: Kit) -> None:
    toml = site_kit.directory / "kit.toml"
    toml.write_text(toml.read_text().replace('name = "site-a"', 'name = "site-z"'))
    with pytest.raises(ConfigurationError, match="certificate is for CN=site-a"):
        load_kit(site_kit.directory)


def test_load_kit_refuses_bad_toml(site_kit: Kit) -> None:
    (site_kit.directory / "kit.toml").write_text("name = ")
    with pytest.raises(ConfigurationError, match="not readable TOML"):
        load_kit(site_kit.directory)


def test_load_kit_refuses_an_expired_certificate(ca: CertificateAuthority, tmp_path: Path) -> None:
    start = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
    creds = ca.issue("old", "site", not_before=start, not_after=start + dt.timedelta(days=1))
    folder = tmp_path / "old"
    with pytest.raises(ConfigurationError, match="ask the operator for a new kit"):
        write_kit(folder, creds, coordinator="h")
    kit = load_kit(folder, now=start + dt.timedelta(hours=1))
    assert kit.name == "old"


def test_load_kit_refuses_a_crl_from_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    creds = ca.issue("coordinator", "coordinator")
    kit = write_kit(tmp_path / "c", creds, coordinator="h", crl_pem=ca.crl_pem())
    impostor = CertificateAuthority.create(tmp_path / "other-ca", "Acme Oncology")
    assert kit.crl_path is not None
    kit.crl_path.write_bytes(impostor.crl_pem())
    with pytest.raises(ConfigurationError, match="not signed by this kit's CA"):
        load_kit(kit.directory)
    kit.crl_path.unlink()
    with pytest.raises(ConfigurationError, match=r"crl\.pem is missing"):
        load_kit(kit.directory)


def test_kit_folder_can_move(site_kit: Kit, tmp_path: Path) -> None:
    moved = shutil.copytree(site_kit.directory, tmp_path / "elsewhere" / "site-a")
    assert load_kit(moved).fingerprint == site_kit.fingerprint


def test_max_concurrent_runs_in_the_coordinator_kit(
    ca: CertificateAuthority, tmp_path: Path, site_kit: Kit
) -> None:
    creds = ca.issue("coordinator", "coordinator")
    kit = write_kit(tmp_path / "c", creds, coordinator="h", crl_pem=ca.crl_pem())
    assert kit.max_concurrent_runs is None  # the coordinator's default (4)
    toml = kit.directory / "kit.toml"
    original = toml.read_text()
    toml.write_text("max_concurrent_runs = 2\n" + original)
    assert load_kit(kit.directory).max_concurrent_runs == 2
    for bad, message in [
        ("0", "between 1 and 256, got 0"),
        ("1000", "between 1 and 256, got 1000"),
        ("true", "must be an integer"),
        ('"4"', "must be an integer"),
    ]:
        toml.write_text(f"max_concurrent_runs = {bad}\n" + original)
        with pytest.raises(ConfigurationError, match=message):
            load_kit(kit.directory)
    site_toml = site_kit.directory / "kit.toml"
    site_toml.write_text("max_concurrent_runs = 2\n" + site_toml.read_text())
    with pytest.raises(ConfigurationError, match="belongs to the coordinator"):
        load_kit(site_kit.directory)
