"""``biofed simulate --job job.toml --site NAME=CDM …``: a job with a ``[study]`` spec runs
its preprocessing phase over virtual sites that each hold their own OMOP CDM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.datasets import gi_bleed_study, write_eunomia_sites

runner = CliRunner(env={"COLUMNS": "160"})

JOB = """
[run]
name = "gi-bleed"
dataset = "cdm"
rounds = 2
min_nodes = 2
min_replies = 2

[study]
spec = "gi_bleed.json"

[task]
name = "logistic_regression"

[train]
local_steps = 10
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-study")
    write_eunomia_sites(root / "cdm", 2)
    (root / "gi_bleed.json").write_text(gi_bleed_study().to_json(), encoding="utf-8")
    (root / "job.toml").write_text(JOB, encoding="utf-8")
    return root


@pytest.mark.slow
def test_a_study_job_simulates_over_site_cdms_and_lists_the_fitted_features(folder: Path) -> None:
    sites = [f"--site=site-{k}={folder / 'cdm' / f'site-{k}.duckdb'}" for k in range(2)]
    result = runner.invoke(
        app, ["simulate", "--job", str(folder / "job.toml"), *sites, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "age" in report["features"]
    assert len(report["rounds"]) == 2
    assert {b["method"] for b in report["baselines"]} >= {"pooled", "local:site-0"}
    assert any("preprocessing_fitted" in e for e in report["events"])
    table = runner.invoke(app, ["simulate", "--job", str(folder / "job.toml"), *sites])
    assert table.exit_code == 0, table.output
    assert "features (" in table.stdout


def test_sites_and_study_jobs_go_together(folder: Path) -> None:
    result = runner.invoke(app, ["simulate", "--job", str(folder / "job.toml")])
    assert result.exit_code == 2
    assert "needs its sites: --site NAME=SOURCE" in result.output
    bad = runner.invoke(app, ["simulate", "--job", str(folder / "job.toml"), "--site", "x"])
    assert bad.exit_code == 2
    assert "--site must be NAME=SOURCE" in bad.output
    stray = runner.invoke(app, ["simulate", "--site", "a=b.duckdb", "--rounds", "1"])
    assert stray.exit_code == 2
    assert "needs a --job with [study]" in stray.output
