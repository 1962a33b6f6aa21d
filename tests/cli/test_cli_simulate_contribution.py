"""``biofed simulate --job`` with a ``[contribution]`` section and ``--trusted``: the example
job rehearsed, its contributions table printed at 80 columns and its ledger in the JSON
report (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from typer.testing import CliRunner

from biofed.cli import app
from biofed.data import Dataset
from biofed.datasets import load_tcga_brca

runner = CliRunner(env={"COLUMNS": "80"})
EXAMPLE = Path(__file__).parents[2] / "examples" / "job-tcga-contribution.toml"
SMALL = ["--rounds", "2", "--local-steps", "20", "--no-baselines"]


def _trusted_csv(path: Path) -> Path:
    fed = load_tcga_brca()
    data = Dataset.concat([s.test for s in fed.sites.values() if s.test is not None], name="t")
    columns = {n: data.features[:, j] for j, n in enumerate(data.feature_names)}
    columns.update({k: np.asarray(v) for k, v in data.targets.items()})
    pacsv.write_csv(pa.table(columns), path)
    return path


def test_the_example_job_prints_its_contributions(tmp_path: Path) -> None:
    trusted = _trusted_csv(tmp_path / "reference.csv")
    args = ["simulate", "--job", str(EXAMPLE), "--trusted", str(trusted), *SMALL]
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "contributions (simulated run)" in table.stdout
    rows = [line for line in table.stdout.splitlines() if line.startswith("│ center-")]
    assert len(rows) == 6
    assert max(len(line) for line in table.stdout.splitlines()) <= 80
    assert "2 rounds measured by shapley" in table.stdout
    report = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    ledger = report["contributions"]["ledger"]
    assert [r["server_round"] for r in ledger["rounds"]] == [1, 2]
    assert set(ledger["totals"]) == {f"center-{i}" for i in range(6)}
    missing = runner.invoke(app, ["simulate", "--job", str(EXAMPLE), *SMALL])
    assert missing.exit_code == 2
    assert "[contribution] trusted_dataset" in missing.output
