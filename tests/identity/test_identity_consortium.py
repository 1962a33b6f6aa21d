"""Consortium: the folder layout that `biofed provision` creates and maintains."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from biofed.core import ConfigurationError, PolicyViolation
from biofed.identity import Consortium, identify_peer, load_kit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _create(folder: Path) -> Consortium:
    return Consortium.create(
        folder,
        consortium="Acme Oncology",
        coordinator="fl.example.org",
        sites=["hosp-a", "hosp-b"],
        researchers=["alice"],
    )


@pytest.fixture
def fed(tmp_path: Path) -> Consortium:
    """A fresh consortium, for tests that change it."""
    return _create(tmp_path / "fed")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    """One consortium for the tests that only read it."""
    return _create(tmp_path_factory.mktemp("shared") / "fed")


def test_layout(shared: Consortium) -> None:
    fed = shared
    folder = fed.directory
    assert sorted(p.name for p in folder.iterdir()) == [
        "admin",
        "alice",
        "ca",
        "consortium.toml",
        "coordinator",
        "hosp-a",
        "hosp-b",
    ]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert fed.coordinator == "fl.example.org:7443"
    roles = {c.name: c.role for c in fed.participants()}
    assert roles == {
        "coordinator": "coordinator",
        "hosp-a": "site",
        "hosp-b": "site",
        "alice": "researcher",
        "admin": "admin",
    }
    for name, role in roles.items():
        kit = load_kit(folder / name)
        assert (kit.name, kit.role, kit.consortium) == (name, role, "Acme Oncology")
        assert kit.coordinator == "fl.example.org:7443"
        assert stat.S_IMODE((folder / name / "key.pem").stat().st_mode) == 0o600


def test_coordinator_kit_toml(shared: Consortium) -> None:
    fed = shared
    config = tomllib.loads((fed.directory / "coordinator" / "kit.toml").read_text())
    state_db = (fed.directory / "coordinator" / "state.db").resolve()
    assert config == {
        "name": "coordinator",
        "role": "coordinator",
        "consortium": "Acme Oncology",
        "coordinator": "fl.example.org:7443",
        "listen": "0.0.0.0:7443",
        "state": f"sqlite:///{state_db}",
        "files": {"key": "key.pem", "cert": "cert.pem", "ca": "ca.pem", "crl": "crl.pem"},
    }
    kit = load_kit(fed.directory / "coordinator")
    assert kit.crl_pem == fed.ca.crl_pem()
    peer = identify_peer(kit.cert_pem, kit.ca_pem, roles={"coordinator"})
    assert peer.name == "coordinator"


def test_load_and_add(fed: Consortium) -> None:
    again = Consortium.load(fed.directory)
    assert again.name == "Acme Oncology"
    kit = again.add("hosp-c", "site")
    assert kit.directory == fed.directory / "hosp-c"
    with pytest.raises(ConfigurationError, match="exists already"):
        again.add("hosp-c", "site")
    with pytest.raises(ConfigurationError, match="is a site"):
        again.add("hosp-c", "researcher", replace=True)
    with pytest.raises(ConfigurationError, match="taken"):
        again.add("HOSP-C", "site")
    with pytest.raises(ConfigurationError, match="reserved"):
        again.add("ca", "site")
    with pytest.raises(ConfigurationError, match="only the participant named"):
        again.add("boss", "coordinator")


def test_revoke_refreshes_the_coordinator_crl(fed: Consortium) -> None:
    site = load_kit(fed.directory / "hosp-a")
    serials = fed.revoke("hosp-a")
    coordinator = load_kit(fed.directory / "coordinator")
    assert coordinator.crl_pem == fed.ca.crl_pem()
    assert coordinator.crl_pem is not None
    with pytest.raises(PolicyViolation, match="was revoked"):
        identify_peer(site.cert_pem, coordinator.ca_pem, crl_pem=coordinator.crl_pem)
    assert serials == (next(c.serial for c in fed.participants() if c.name == "hosp-a"),)


def test_replace_reissues_and_revokes(fed: Consortium) -> None:
    old = load_kit(fed.directory / "hosp-a")
    new = fed.add("hosp-a", "site", replace=True)
    assert new.fingerprint != old.fingerprint
    crl = load_kit(fed.directory / "coordinator").crl_pem
    assert crl is not None
    with pytest.raises(PolicyViolation, match="was revoked"):
        identify_peer(old.cert_pem, new.ca_pem, crl_pem=crl)
    assert identify_peer(new.cert_pem, new.ca_pem, crl_pem=crl).name == "hosp-a"
    renewed = fed.add("coordinator", "coordinator", replace=True)
    assert renewed.listen == "0.0.0.0:7443"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sites": []}, "at least one site"),
        ({"sites": ["a", "A"]}, "taken"),
        ({"sites": ["a"], "researchers": ["a"]}, "taken"),
        ({"sites": ["coordinator"]}, "reserved"),
        ({"sites": ["a b"]}, "participant name"),
        ({"sites": ["a"], "coordinator": "host:99999"}, "port"),
        ({"sites": ["a"], "consortium": ""}, "consortium name"),
    ],
)
def test_create_validates_before_writing(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    args: dict[str, object] = {"consortium": "C", "coordinator": "h", **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        Consortium.create(tmp_path / "fed", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "fed").exists()


def test_create_refuses_a_non_empty_folder(shared: Consortium) -> None:
    fed = shared
    with pytest.raises(ConfigurationError, match="not empty"):
        Consortium.create(fed.directory, consortium="C", coordinator="h", sites=["a"])


def test_load_refuses_other_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"consortium\.toml missing"):
        Consortium.load(tmp_path)


def test_ipv6_coordinator(tmp_path: Path) -> None:
    fed = Consortium.create(tmp_path / "f", consortium="C", coordinator="[::1]:9000", sites=["a"])
    assert fed.coordinator == "[::1]:9000"
    assert load_kit(tmp_path / "f" / "coordinator").listen == "0.0.0.0:9000"
