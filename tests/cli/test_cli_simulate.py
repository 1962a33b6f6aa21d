"""``biofed simulate`` end to end through Typer's runner."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "160"})


def test_bundled_dataset_json() -> None:
    result = runner.invoke(
        app,
        [
            "simulate",
            "--strategy",
            "fedavg",
            "--rounds",
            "2",
            "--local-steps",
            "10",
            "--seed",
            "3",
            "--format",
            "json",
            "--no-baselines",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["dataset"] == "tcga-brca"
    assert report["strategy"] == "fedavg"
    assert len(report["rounds"]) == 2
    assert set(report["federated"]["site_metrics"]) == {f"center-{k}" for k in range(6)}


def test_table_output_lists_every_method() -> None:
    result = runner.invoke(app, ["simulate", "--rounds", "1", "--local-steps", "5"])
    assert result.exit_code == 0, result.output
    for label in ("fedadam", "local 0", "local 5", "pooled", "mean", "center-"):
        assert label in result.stdout


def _write_table(path: Path) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["hospital", "x1", "x2", "y"])
        for i in range(300):
            x1, x2 = rng.standard_normal(2)
            y = int(rng.random() < 1 / (1 + np.exp(-(2 * x1 - x2))))
            writer.writerow([["Hôpital Nord", "Clinic B", "C"][i % 3], f"{x1:.4f}", f"{x2:.4f}", y])


def test_own_csv_with_site_column(tmp_path: Path) -> None:
    path = tmp_path / "trial.csv"
    _write_table(path)
    result = runner.invoke(
        app,
        [
            "simulate",
            "--data",
            str(path),
            "--site-column",
            "hospital",
            "--target",
            "label=y",
            "--strategy",
            "fedprox",
            "--rounds",
            "3",
            "--local-steps",
            "20",
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["task"] == "logistic_regression"
    assert set(report["federated"]["site_metrics"]) == {"Hopital-Nord", "Clinic-B", "C"}
    assert report["federated"]["mean_site_metric"] > 0.75


def test_errors_are_clear_and_exit_2(tmp_path: Path) -> None:
    cases = [
        (["simulate", "--strategy", "fedmagic"], "unknown strategy"),
        (["simulate", "--dataset", "nope"], "unknown dataset"),
        (
            [
                "simulate",
                "--data",
                str(tmp_path / "missing.csv"),
                "--site-column",
                "s",
                "--target",
                "label=y",
            ],
            "missing.csv",
        ),
        (["simulate", "--data", "x.csv", "--site-column", "s", "--target", "oops"], "KEY=COLUMN"),
        (["simulate", "--lr", "-1", "--rounds", "1"], "learning_rate must be > 0"),
        (["simulate", "--format", "xml"], "--format"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
