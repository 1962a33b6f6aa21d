"""``biofed simulate`` with a job's ``[robust]`` section: the example job, and validation on
a trusted file given with ``--trusted`` (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.data import Dataset
from biofed.datasets import load_tcga_brca

runner = CliRunner(env={"COLUMNS": "160"})

EXAMPLE = Path(__file__).parents[2] / "examples" / "job-tcga-robust.toml"
#: Two rounds of the example job as it is (100 local steps: with very few, the first round's
#: models are too close to the untrained one for a C-index to judge them by).
SMALL = ["--rounds", "2", "--no-baselines", "--format", "json"]


def _report(output: str) -> dict[str, object]:
    report = json.loads(output.strip().splitlines()[-1])
    assert isinstance(report, dict)
    return report


def test_example_robust_job_runs_with_the_median() -> None:
    result = runner.invoke(app, ["simulate", "--job", str(EXAMPLE), *SMALL])
    assert result.exit_code == 0, result.output
    report = _report(result.stdout)
    assert report["settings"]["strategy"] == "robust-median(fedadam)"  # type: ignore[index]
    assert report["settings"]["max_weight"] == 400  # type: ignore[index]
    assert len(report["rounds"]) == 2  # type: ignore[arg-type]


def _trusted_csv(path: Path) -> Path:
    fed = load_tcga_brca()
    tests = [s.test for s in fed.sites.values() if s.test is not None]
    data = Dataset.concat(tests, name="trusted")
    columns = {n: data.features[:, j] for j, n in enumerate(data.feature_names)}
    columns.update({k: np.asarray(v) for k, v in data.targets.items()})
    pacsv.write_csv(pa.table(columns), path)
    return path


@pytest.mark.slow
def test_validation_with_a_trusted_file(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    text = EXAMPLE.read_text(encoding="utf-8").replace(
        'aggregator = "median"', 'aggregator = "median"\nvalidation = true\ntrusted_dataset = "ref"'
    )
    job.write_text(text, encoding="utf-8")
    trusted = _trusted_csv(tmp_path / "ref.csv")
    result = runner.invoke(app, ["simulate", "--job", str(job), "--trusted", str(trusted), *SMALL])
    assert result.exit_code == 0, result.output
    report = _report(result.stdout)
    events = [e for e in report["events"] if "update_" in e]  # type: ignore[union-attr]
    assert len(events) == 2 * 6, events  # every honest update judged in every round
    assert not any("update_rejected" in e for e in events)


def test_trusted_needs_a_job_and_validation_needs_trusted(tmp_path: Path) -> None:
    result = runner.invoke(app, ["simulate", "--trusted", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert "--trusted is for a --job" in result.output
    job = tmp_path / "job.toml"
    job.write_text(
        EXAMPLE.read_text(encoding="utf-8").replace(
            'aggregator = "median"',
            'aggregator = "median"\nvalidation = true\ntrusted_dataset = "ref"',
        ),
        encoding="utf-8",
    )
    result = runner.invoke(app, ["simulate", "--job", str(job), *SMALL])
    assert result.exit_code == 2
    assert "trusted" in result.output
