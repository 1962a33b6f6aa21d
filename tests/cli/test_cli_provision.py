"""``biofed provision`` end to end through Typer's runner."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.core import PolicyViolation
from biofed.identity import identify_peer, load_kit

runner = CliRunner(env={"COLUMNS": "200"})


def _init(out: Path, *extra: str) -> None:
    result = runner.invoke(
        app,
        [
            "provision",
            "init",
            "--consortium",
            "Acme Oncology",
            "--coordinator",
            "fl.example.org:9443",
            "--sites",
            "hosp-a, hosp-b",
            "--researchers",
            "alice",
            "--out",
            str(out),
            *extra,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "move it offline" in result.stderr
    for name in ("coordinator", "hosp-a", "hosp-b", "alice", "admin"):
        assert name in result.stdout


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A fresh consortium folder, for tests that change it."""
    folder = tmp_path / "fed"
    _init(folder, "--valid-days", "30")
    return folder


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One consortium folder for the tests that only read it."""
    folder = tmp_path_factory.mktemp("shared") / "fed"
    _init(folder, "--valid-days", "30")
    return folder


def test_init_creates_every_kit(shared: Path) -> None:
    out = shared
    assert sorted(p.name for p in out.iterdir()) == [
        "admin",
        "alice",
        "ca",
        "consortium.toml",
        "coordinator",
        "hosp-a",
        "hosp-b",
    ]
    coordinator = load_kit(out / "coordinator")
    assert coordinator.coordinator == "fl.example.org:9443"
    assert coordinator.listen == "0.0.0.0:9443"
    assert coordinator.state == f"sqlite:///{(out / 'coordinator' / 'state.db').resolve()}"
    site = load_kit(out / "hosp-a")
    assert stat.S_IMODE((out / "hosp-a" / "key.pem").stat().st_mode) == 0o600
    assert identify_peer(site.cert_pem, coordinator.ca_pem).role == "site"
    assert "# [datasets]" in (out / "hosp-a" / "kit.toml").read_text()
    assert load_kit(out / "admin").role == "admin"


def test_init_refuses_a_non_empty_folder(shared: Path) -> None:
    out = shared
    result = runner.invoke(
        app,
        [
            "provision",
            "init",
            "--consortium",
            "X",
            "--coordinator",
            "h",
            "--sites",
            "a",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {out} exists and is not empty; pick a new folder"
    ]
    assert "Traceback" not in result.output


def test_add_site_and_researcher(out: Path) -> None:
    result = runner.invoke(app, ["provision", "add-site", "hosp-c", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_kit(out / "hosp-c").role == "site"
    result = runner.invoke(app, ["provision", "add-researcher", "bob", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_kit(out / "bob").role == "researcher"
    again = runner.invoke(app, ["provision", "add-site", "hosp-c", "--out", str(out)])
    assert again.exit_code == 2
    assert "--replace" in again.stderr
    bad = runner.invoke(app, ["provision", "add-site", "no/slash", "--out", str(out)])
    assert bad.exit_code == 2
    assert "participant name" in bad.stderr


def test_add_site_replace(out: Path) -> None:
    old = load_kit(out / "hosp-a")
    result = runner.invoke(app, ["provision", "add-site", "hosp-a", "--replace", "--out", str(out)])
    assert result.exit_code == 0, result.output
    new = load_kit(out / "hosp-a")
    assert new.fingerprint != old.fingerprint
    crl = load_kit(out / "coordinator").crl_pem
    with pytest.raises(PolicyViolation, match="revoked"):
        identify_peer(old.cert_pem, new.ca_pem, crl_pem=crl)


def test_revoke_then_list(out: Path) -> None:
    site = load_kit(out / "hosp-b")
    result = runner.invoke(app, ["provision", "revoke", "hosp-b", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "revoked 'hosp-b'" in result.stdout
    assert "crl.pem" in result.stderr
    crl = load_kit(out / "coordinator").crl_pem
    with pytest.raises(PolicyViolation, match="certificate of 'hosp-b' was revoked"):
        identify_peer(site.cert_pem, site.ca_pem, crl_pem=crl)

    listed = runner.invoke(app, ["provision", "list", "--out", str(out), "--format", "json"])
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert set(rows) == {"coordinator", "hosp-a", "hosp-b", "alice", "admin"}
    assert rows["hosp-b"]["revoked"] is True
    assert rows["hosp-a"]["revoked"] is False
    assert rows["hosp-a"]["fingerprint"] == load_kit(out / "hosp-a").fingerprint

    table = runner.invoke(app, ["provision", "list", "--out", str(out)])
    assert table.exit_code == 0, table.output
    for word in ("name", "role", "fingerprint", "expires", "revoked", "hosp-b", "yes"):
        assert word in table.stdout
    assert site.fingerprint[:16] in table.stdout

    again = runner.invoke(app, ["provision", "revoke", "hosp-b", "--out", str(out)])
    assert again.exit_code == 0
    assert "nothing to do" in again.stderr


def test_errors_exit_2_with_one_line(shared: Path, tmp_path: Path) -> None:
    out = shared
    cases = [
        ["provision", "revoke", "ghost", "--out", str(out)],
        ["provision", "list", "--out", str(tmp_path / "nowhere")],
        ["provision", "list", "--out", str(out), "--format", "xml"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0].startswith("error: ")


def test_init_makes_an_admin_kit_and_add_admin_another(out: Path) -> None:
    assert load_kit(out / "admin").role == "admin"
    result = runner.invoke(app, ["provision", "add-admin", "ops", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert load_kit(out / "ops").role == "admin"
    clash = runner.invoke(app, ["provision", "add-admin", "alice", "--out", str(out)])
    assert clash.exit_code == 2
    assert "is a researcher" in clash.stderr
