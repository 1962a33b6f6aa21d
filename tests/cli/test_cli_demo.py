"""``biofed demo`` end to end: CA, signed study agreement, approved task bundle, coordinator
and six governed node processes over mTLS, a clean shutdown, and verified audit logs
(slow: about 20 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._demo import _table
from biofed.governance import read_agreement, verify, verify_log

pytestmark = pytest.mark.slow

SITES = [f"center-{k}" for k in range(6)]


def test_demo_trains_under_a_signed_agreement_and_verifies_the_audit_logs(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--workdir", str(tmp_path), "--rounds", "2", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "finished"
    assert report["rounds"] == 2
    assert set(report["processes"].values()) == {0}
    assert len(report["processes"]) == 7
    sites = report["summary"]["evaluation"]["sites"]
    assert set(sites) == set(SITES)
    assert all(0.0 <= s["c_index"] <= 1.0 for s in sites.values())
    consortium = tmp_path / "consortium"
    ca_pem = (consortium / "ca" / "ca.pem").read_bytes()

    # the agreement every party signed is in force, checked here from the file itself
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

    # each site approved the bundle, enforced the agreement and kept a verifiable log
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
    assert audit["reconcile"] == {"ok": True, "entries": (4 + 1) * 2 * len(SITES)}
    privacy = report["summary"]["privacy"]
    assert privacy["guarantee"]["mode"] == "sample"
    assert set(privacy["sites"]) == set(SITES)
    # each site's own ledger figure stays within the job's target ε over the 2 rounds
    assert all(0 < s["epsilon"] <= 8.0 for s in privacy["sites"].values())
    assert (tmp_path / "state.db").exists()

    # the per-site C-index table the demo prints
    console = Console(record=True, width=100)
    console.print(_table(report))
    table = console.export_text()
    assert "test C-index per site" in table
    for site in SITES:
        line = next(row for row in table.splitlines() if f" {site} " in row)
        assert f"{sites[site]['c_index']:.4f}" in line
    assert "mean of sites" in table
    # the governance steps were announced
    for text in ("packed the survival task", "drafted study agreement", "in force", "audit log"):
        assert text in result.stderr
