"""``biofed simulate --job``: the job file ``biofed run submit`` takes, over real site nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "160"})

EXAMPLE = Path(__file__).parents[2] / "examples" / "job-tcga-dp-secagg.toml"
SITES = {f"center-{k}" for k in range(6)}
#: The example job made small by the command-line shortcuts.
SMALL = ["--rounds", "1", "--local-steps", "2", "--no-baselines"]


@pytest.mark.slow
def test_example_job_runs_dp_and_secagg_over_six_sites_json() -> None:
    result = runner.invoke(
        app, ["simulate", "--job", str(EXAMPLE), *SMALL, "--seed", "9", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["secure_aggregation"] is True
    assert report["seed"] == 9
    assert len(report["rounds"]) == 1  # --rounds replaced the job's 5
    assert report["rounds"][0]["train_metrics"]["secagg.survivors"] == 6.0
    sites = report["privacy"]["sites"]
    assert set(sites) == SITES
    assert all(s["guarantee"] == "exact" and 0 < s["epsilon"] <= 8.0 for s in sites.values())
    assert report["task"] == "pem_torch"


@pytest.mark.slow
def test_example_job_table_prints_each_sites_epsilon() -> None:
    result = runner.invoke(app, ["simulate", "--job", str(EXAMPLE), *SMALL])
    assert result.exit_code == 0, result.output
    assert "privacy spent so far" in result.stdout
    for site in SITES:
        assert site in result.stdout
    assert "exact" in result.stdout
    assert "target ε=8" in result.stdout


@pytest.mark.slow
def test_node_config_caps_and_ledger_dir(tmp_path: Path) -> None:
    node = tmp_path / "node.toml"
    node.write_text("[privacy.caps.tcga-brca]\nepsilon = 1.0\ndelta = 1e-4\n", encoding="utf-8")
    ledgers = tmp_path / "ledgers"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--job",
            str(EXAMPLE),
            *SMALL,
            "--node-config",
            f"center-2={node}",
            "--ledger-dir",
            str(ledgers),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["privacy"]["sites"]) == SITES - {"center-2"}  # its cap refused the job
    assert any("center-2" in e for e in report["events"])
    assert sorted(p.name for p in ledgers.glob("*.db")) == sorted(f"{s}.db" for s in SITES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job", "missing.toml"], "cannot read missing.toml"),
        (["--job", str(EXAMPLE), "--backend", "dask"], "backend must be one of"),
        (["--node-config", "center-0"], "SITE=node.toml"),
        (["--job", str(EXAMPLE), "--dataset", "nope"], "unknown dataset"),
        (["--job", str(EXAMPLE), "--agreement", "a.toml"], "needs both"),
    ],
)
def test_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output, result.output
