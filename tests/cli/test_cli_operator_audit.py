"""What a site's operator does from the command line lands in the site's signed audit log."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from biofed.cli import app
from biofed.governance import pack_bundle, verify_log
from biofed.identity import Consortium

runner = CliRunner(env={"COLUMNS": "200"})


def test_dataset_and_bundle_decisions_are_audited_in_the_kit(tmp_path: Path) -> None:
    consortium = Consortium.create(
        tmp_path / "c", consortium="t", coordinator="127.0.0.1:7443", sites=["a"]
    )
    kit = consortium.kit_directory("a")
    data = tmp_path / "cohort.csv"
    data.write_text("age,E,T\n" + "".join(f"{50 + i},{i % 2},{10 + i}\n" for i in range(20)))
    added = runner.invoke(
        app, ["node", "dataset", "add", "icu", "--path", str(data), "--node-dir", str(kit)]
    )
    assert added.exit_code == 0, added.output
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.py").write_text("def make_task(**options):\n    raise NotImplementedError\n")
    digest = pack_bundle(task, tmp_path / "t.zip").digest
    store = ["--store", str(kit / "approvals.json")]
    assert runner.invoke(app, ["node", "approve", digest, *store]).exit_code == 0
    assert runner.invoke(app, ["node", "revoke", digest, *store]).exit_code == 0
    events = [json.loads(line)["event"] for line in (kit / "audit.jsonl").open()]
    assert events == ["dataset.registered", "bundle.approved", "bundle.revoked"]
    report = verify_log(
        kit / "audit.jsonl", (kit / "cert.pem").read_bytes(), (kit / "ca.pem").read_bytes()
    )
    assert report.ok, report.reason


def test_a_hand_edited_approvals_file_stops_node_start_with_one_line(tmp_path: Path) -> None:
    consortium = Consortium.create(
        tmp_path / "c", consortium="t", coordinator="127.0.0.1:1", sites=["a"]
    )
    kit = consortium.kit_directory("a")
    (kit / "icu.csv").write_text("age,E\n" + "".join(f"{50 + i},{i % 2}\n" for i in range(20)))
    (kit / "node.toml").write_text(
        '[datasets.icu]\npath = "icu.csv"\nformat = "csv"\n\n[governance]\n'
        'agreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
        'approvals = "approvals.json"\nregistry = "datasets.json"\nbundles_dir = "bundles"\n'
    )
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.py").write_text("def make_task(**options):\n    raise NotImplementedError\n")
    digest = pack_bundle(task, tmp_path / "t.zip").digest
    store = ["--store", str(kit / "approvals.json")]
    assert runner.invoke(app, ["node", "approve", digest, *store]).exit_code == 0
    doc = json.loads((kit / "approvals.json").read_text())
    doc["approvals"]["ee" * 32] = {"by": "mallory", "note": "", "approved_at": ""}
    (kit / "approvals.json").write_text(json.dumps(doc))
    start = ["node", "start", "--kit", str(kit), "--config", str(kit / "node.toml")]
    result = runner.invoke(app, start)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"approves bundle {'ee' * 8}… but the site's signed audit log has no approval" in message
    assert "Traceback" not in result.output
