"""``biofed node dataset add/list/show/check/remove``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


def test_dataset_commands(tmp_path: Path) -> None:
    data = tmp_path / "cohort.csv"
    data.write_text("age,E,T\n" + "".join(f"{50 + i},{i % 2},{10 + i}\n" for i in range(20)))
    node = ["--node-dir", str(tmp_path / "node")]
    result = runner.invoke(
        app,
        [
            "node",
            "dataset",
            "add",
            "icu",
            "--path",
            str(data),
            *node,
            "--target",
            "event=E",
            "--target",
            "time=T",
            "--min-cohort",
            "15",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "20 rows" in result.output
    listed = runner.invoke(app, ["node", "dataset", "list", *node, "--format", "json"])
    entries = json.loads(listed.stdout)
    assert entries[0]["name"] == "icu"
    assert entries[0]["state"] == "ok"
    assert entries[0]["min_cohort"] == 15
    assert runner.invoke(app, ["node", "dataset", "show", "icu", *node]).exit_code == 0
    assert runner.invoke(app, ["node", "dataset", "check", "icu", *node]).exit_code == 0
    data.write_text(data.read_text() + "99,1,1\n")
    changed = runner.invoke(app, ["node", "dataset", "check", "icu", *node])
    assert changed.exit_code == 1
    assert "changed" in changed.output
    again = runner.invoke(app, ["node", "dataset", "add", "icu", "--path", str(data), *node])
    assert again.exit_code == 2
    assert "already registered" in again.output
    assert runner.invoke(app, ["node", "dataset", "remove", "icu", *node]).exit_code == 0
    missing = runner.invoke(app, ["node", "dataset", "show", "icu", *node])
    assert missing.exit_code == 2
