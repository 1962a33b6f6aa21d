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
