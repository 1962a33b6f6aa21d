"""``biofed audit verify`` and ``biofed audit reconcile`` through Typer's runner."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from biofed.cli import _audit
from biofed.governance._audit import AuditLog
from biofed.governance._audit._reconcile import RECEIVED_EVENT, SENT_EVENT
from biofed.governance._audit._signer import AuditSigner
from biofed.identity import Consortium, load_kit

runner = CliRunner(env={"COLUMNS": "200"})
app = typer.Typer()
app.add_typer(_audit.app, name="audit")


@app.callback()
def _root() -> None:
    """Test root (stands in for biofed.cli.app until it registers the audit group)."""


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    root = tmp_path_factory.mktemp("fed")
    return Consortium.create(
        root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"]
    )


def _log(fed: Consortium, name: str) -> AuditLog:
    """A log inside the participant's kit folder (cert.pem and ca.pem next to it)."""
    kit = load_kit(fed.kit_directory(name))
    path = kit.directory / "audit.jsonl"
    path.unlink(missing_ok=True)
    return AuditLog(path, AuditSigner.from_kit(kit))


def test_verify_ok_and_tampered(fed: Consortium) -> None:
    log = _log(fed, "a")
    for i in range(4):
        log.append("dataset.registered", {"name": f"d{i}"})
    result = runner.invoke(app, ["audit", "verify", str(log.path)])
    assert result.exit_code == 0, result.output
    assert "OK: 4 entries" in result.stdout
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(lines[0] + lines[2] + lines[1] + lines[3])
    result = runner.invoke(app, ["audit", "verify", str(log.path)])
    assert result.exit_code == 1
    assert "FAILED at entry 2: seq is 3, expected 2" in result.stdout


def test_verify_foreign_cert_and_usage_errors(fed: Consortium, tmp_path: Path) -> None:
    log = _log(fed, "a")
    log.append("job.accepted", {"run_id": "r1"})
    b_cert = fed.kit_directory("b") / "cert.pem"
    result = runner.invoke(app, ["audit", "verify", str(log.path), "--cert", str(b_cert)])
    assert result.exit_code == 1
    assert "FAILED at entry 1" in result.stdout
    other = Consortium.create(
        tmp_path / "o", consortium="t", coordinator="127.0.0.1:7443", sites=["a"]
    )
    foreign_ca = other.kit_directory("a") / "ca.pem"
    result = runner.invoke(app, ["audit", "verify", str(log.path), "--ca", str(foreign_ca)])
    assert result.exit_code == 1
    assert "not issued by this consortium" in " ".join(result.stderr.split())
    result = runner.invoke(app, ["audit", "verify", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2
    assert "no audit log" in result.stderr
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "audit.jsonl").write_bytes(log.path.read_bytes())
    result = runner.invoke(app, ["audit", "verify", str(lone / "audit.jsonl")])
    assert result.exit_code == 2
    assert "--cert" in result.stderr


def _transfer(log: AuditLog, event: str, node: str, payload: bytes) -> None:
    data = {"run_id": "r1", "round": 1, "kind": "train", "bytes": len(payload)}
    data["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    if event == RECEIVED_EVENT:
        data["node_id"] = node
    else:  # a governed node decides before it sends
        log.append("job.accepted", {"run_id": "r1", "round": 1, "kind": "train"})
    log.append(event, data)


def test_reconcile_table_json_and_exit_codes(fed: Consortium) -> None:
    coord, a, b = _log(fed, "coordinator"), _log(fed, "a"), _log(fed, "b")
    _transfer(a, SENT_EVENT, "a", b"update-a")
    _transfer(coord, RECEIVED_EVENT, "a", b"update-a")
    _transfer(b, SENT_EVENT, "b", b"update-b")
    _transfer(coord, RECEIVED_EVENT, "b", b"update-b")
    args = ["audit", "reconcile", str(coord.path), str(a.path), str(b.path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "OK; 2 payload(s) matched across 2 node(s)" in result.stdout
    _transfer(b, SENT_EVENT, "b", b"second")  # sent, never received
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "NOT RECEIVED" in result.stdout
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert len(report["sent_not_received"]) == 1
    assert report["sent_not_received"][0]["node_id"] == "b"
    result = runner.invoke(app, [*args, "--format", "xml"])
    assert result.exit_code == 2
    b.path.write_bytes(b.path.read_bytes()[:-5])
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "FAILED at entry 4" in " ".join(result.stderr.split())
