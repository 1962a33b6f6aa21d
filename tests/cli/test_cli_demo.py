"""``biofed demo`` end to end: CA, signed study agreement, approved task bundle, coordinator
and six governed node processes over mTLS, a clean shutdown, verified audit logs, and the
summary a person reads at 80 columns (slow: the demo runs once for the module)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.governance import read_agreement, verify, verify_log

pytestmark = pytest.mark.slow

SITES = [f"center-{k}" for k in range(6)]


@dataclass(frozen=True)
class Demo:
    workdir: Path
    exit_code: int
    stdout: str
    stderr: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One demo run for every test here, of one round (each round adds a training and an
    evaluation worker process per site): the table format at 80 columns, kept in a folder
    (its JSON report is ``demo.json`` there, what ``--format json`` prints)."""
    workdir = tmp_path_factory.mktemp("demo")
    result = CliRunner(env={"COLUMNS": "80"}).invoke(
        app, ["demo", "--workdir", str(workdir), "--rounds", "1"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "demo.json").read_text())
    return Demo(workdir, result.exit_code, result.stdout, result.stderr, report)


def test_the_run_finishes_at_every_site_and_every_process_stops_cleanly(demo: Demo) -> None:
    report = demo.report
    assert report["status"] == "finished"
    assert report["rounds"] == 1
    assert set(report["processes"].values()) == {0}
    assert len(report["processes"]) == 7
    assert report["workdir"] == str(demo.workdir)
    sites = report["summary"]["evaluation"]["sites"]
    assert set(sites) == set(SITES)
    assert all(0.0 <= s["c_index"] <= 1.0 for s in sites.values())
    assert (demo.workdir / "state.db").exists()
    # the governance steps were announced
    for text in ("packed the survival task", "drafted study agreement", "in force", "audit log"):
        assert text in demo.stderr


def test_every_party_signed_the_agreement_the_job_ran_under(demo: Demo) -> None:
    report = demo.report
    consortium = demo.workdir / "consortium"
    ca_pem = (consortium / "ca" / "ca.pem").read_bytes()
    agreement = report["agreement"]
    signed = read_agreement(agreement["file"])
    parties = {p.name for p in signed.agreement.signers}
    assert parties == {*SITES, "researcher", "coordinator"}
    certificates = {name: (consortium / name / "cert.pem").read_bytes() for name in parties}
    status = verify(signed, certificates, ca_pem)
    assert status.in_force, status.reasons
    assert set(status.signed_by) == parties
    assert agreement["in_force"]
    assert agreement["digest"] == status.digest
    assert signed.agreement.approved_bundles == (report["bundle"],)
    assert "c_index" in signed.agreement.outputs.metrics


def test_each_site_approved_enforced_and_kept_a_verifiable_audit_log(demo: Demo) -> None:
    report = demo.report
    consortium = demo.workdir / "consortium"
    ca_pem = (consortium / "ca" / "ca.pem").read_bytes()
    audit = report["audit"]
    assert set(SITES) <= set(audit)
    for site in SITES:
        kit = consortium / site
        assert (kit / "data" / "tcga-brca.csv").exists()
        assert (kit / "key.pem").stat().st_mode & 0o077 == 0
        assert "[governance]" in (kit / "node.toml").read_text()
        assert (kit / "bundles" / f"{report['bundle']}.zip").is_file()
        log = verify_log(kit / "audit.jsonl", (kit / "cert.pem").read_bytes(), ca_pem)
        assert log.ok, log.reason
        assert log.entries >= 4
        assert audit[site] == {"ok": True, "entries": log.entries}
        events = [json.loads(line)["event"] for line in (kit / "audit.jsonl").open()]
        for event in (
            "dataset.registered",
            "bundle.approved",
            "job.accepted",
            "round.sent",
            "budget.debited",
        ):
            assert event in events, (site, event)
        assert "job.refused" not in events
    assert all(entry["ok"] for entry in audit.values())
    # what every site says it sent is what the coordinator says it received
    # per site and round: the 4 secure-aggregation stages' messages and 1 evaluation
    assert audit["reconcile"] == {"ok": True, "entries": (4 + 1) * 1 * len(SITES)}


def test_each_sites_ledger_stays_within_the_target_epsilon(demo: Demo) -> None:
    privacy = demo.report["summary"]["privacy"]
    assert privacy["guarantee"]["mode"] == "sample"
    assert set(privacy["sites"]) == set(SITES)
    # each site's own ledger figure stays within the job's target ε over the run
    assert all(0 < s["epsilon"] <= 8.0 for s in privacy["sites"].values())


def test_the_nodes_logs_hold_no_library_warnings(demo: Demo) -> None:
    """dp-accounting's "failed to converge" warnings were 45 of 47 lines of a node's log."""
    for site in SITES:
        log = (demo.workdir / "logs" / f"{site}.log").read_text(errors="replace")
        assert "node: connected" in log, site
        assert "failed to converge" not in log, site
        assert "WARNING:absl" not in log, site
        # started once the coordinator listens: no refused connection before the first one
        assert "Connection refused" not in log, site
    coordinator = (demo.workdir / "logs" / "coordinator.log").read_text(errors="replace")
    assert "andshake" not in coordinator  # the demo's wait for its port is not a TLS failure


def _line(lines: list[str], start: str) -> str:
    return next(line for line in lines if line.startswith(start))


def test_the_last_screen_is_a_summary_that_fits_80_columns(demo: Demo) -> None:
    report = demo.report
    lines = demo.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, demo.stdout
    assert "{" not in demo.stdout  # no Python dict, no JSON
    assert lines[0].startswith("biofed demo: finished · 1 of 1 round · 6 sites")
    # the ids whole, each on its own line
    assert _line(lines, "run id").split() == ["run", "id", report["run_id"]]
    assert _line(lines, "bundle").split() == ["bundle", report["bundle"]]
    assert "tcga-brca-survival: in force, signed by 8 parties" in _line(lines, "agreement")
    # per site: its test C-index and the ε its own ledger recorded
    scores = report["summary"]["evaluation"]["sites"]
    spent = report["summary"]["privacy"]["sites"]
    for site in SITES:
        row = _line(lines, site).split()
        assert f"{scores[site]['c_index']:.4f}" in row
        assert f"{spent[site]['epsilon']:.2f}" in row
        assert row[-3:] == ["·", str(report["audit"][site]["entries"]), "entries"]
    mean = sum(s["c_index"] for s in scores.values()) / len(SITES)
    assert _line(lines, "mean").split() == ["mean", f"{mean:.4f}"]
    assert "a guarantee" in demo.stdout
    assert _line(lines, "audit").startswith("audit      verified: 7 signed logs")
    reconciled = _line(lines, "reconciled")
    assert f"ok: {report['audit']['reconcile']['entries']} payloads" in reconciled
    assert "stopped cleanly" in _line(lines, "processes")
    # what to run next: the kept folder, the coordinator with its dashboard, the run, the docs
    hint = demo.stdout[demo.stdout.index("What next") :]
    assert f"$ cd {demo.workdir}" in hint
    assert "--dashboard 127.0.0.1:8765" in hint
    assert f"$ biofed run status {report['run_id']} --kit consortium/researcher" in hint
    assert "demo.json" in hint
    assert "docs" in hint
