"""``biofed simulate --data``: the flags that prepare a user's table (issue 13's friction list)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._simulate_table import TableOptions, load_user_federation

# Wide enough that a one-line message is never wrapped by Rich.
runner = CliRunner(env={"COLUMNS": "400"})
_FAST = ["--rounds", "2", "--local-steps", "10", "--no-baselines"]
_SITES = ("A", "B", "C")


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _classification(path: Path, *, one_class_test_at: str | None = None) -> Path:
    """300 rows over sites A-C: an id, a 0/1 flag, x1-x3, a label and a train/test split.

    With ``one_class_test_at``, that site's test rows all have label 0.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        site = _SITES[i % 3]
        x1, x2, x3 = rng.standard_normal(3)
        y = int(rng.random() < 1 / (1 + np.exp(-(2 * x1 - x2))))
        split = "test" if (i // 3) % 5 == 0 else "train"
        if site == one_class_test_at and split == "test":
            y = 0
        rows.append([1000 + i, int(split == "test"), site, f"{x1:.4f}", f"{x2:.4f}", x3, y, split])
    header = ["patient_id", "is_test", "hospital", "x1", "x2", "x3", "y", "split"]
    return _write(path, header, rows)


def _survival(path: Path, *, coding: tuple[Any, Any] = (0, 1)) -> Path:
    """Survival rows over sites A-C with the event coded ``coding`` (censored, event)."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(240):
        x1, x2 = rng.standard_normal(2)
        time = rng.exponential(np.exp(-(x1 - 0.5 * x2)))
        event = coding[int(rng.random() < 0.7)]
        rows.append([_SITES[i % 3], f"{x1:.4f}", f"{x2:.4f}", f"{time:.4f}", event])
    return _write(path, ["site", "x1", "x2", "T", "status"], rows)


def _run(*args: str) -> Any:
    return runner.invoke(app, ["simulate", *args])


def _json(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def _refused(result: Any, *needles: str) -> None:
    """Exit 2, one line, no traceback, and the message names the problem."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output


def _classify(path: Path, *extra: str) -> Any:
    base = ["--data", str(path), "--site-column", "hospital", "--target", "label=y"]
    return _run(*base, *_FAST, *extra)


# 1. --split-column


def test_split_column_is_used_and_does_not_change_with_seed(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    options = TableOptions(
        path=path,
        site_column="hospital",
        targets=("label=y",),
        test_fraction=0.2,
        split_column="split",
        features="x1,x2",
    )
    one, two = load_user_federation(options, seed=1), load_user_federation(options, seed=2)
    for site in _SITES:
        test_one, test_two = one.sites[site].test, two.sites[site].test
        assert test_one is not None
        assert test_two is not None
        assert len(test_one) == 20
        assert len(one.sites[site].train) == 80
        np.testing.assert_array_equal(test_one.features, test_two.features)
    for seed in ("1", "2"):
        report = _json(
            _classify(
                path,
                "--split-column",
                "split",
                "--features",
                "x1,x2",
                "--seed",
                seed,
                "--format",
                "json",
            )
        )
        assert report["features"] == ["x1", "x2"]
        assert report["federated"]["mean_site_metric"] > 0.7


def test_split_column_with_other_values_is_refused(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    x = ["--features", "x1,x2"]
    _refused(_classify(path, *x, "--split-column", "x3"), "split column 'x3'", "train")
    text = path.read_text().replace(",test\n", ",validation\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(text)
    _refused(_classify(bad, *x, "--split-column", "split"), "validation")


# 2. --features, --exclude, --id-column


def test_features_names_exactly_the_columns_used(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    report = _json(_classify(path, "--features", "x1,x2", "--format", "json"))
    assert report["features"] == ["x1", "x2"]
    assert "look like ids" not in _classify(path, "--features", "x1,x2").output


def test_id_and_excluded_columns_never_become_features(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    result = _classify(
        path, "--id-column", "patient_id", "--exclude", "is_test,x3", "--split-column", "split"
    )
    assert result.exit_code == 0, result.output
    assert "features (2): x1, x2" in result.stdout
    args = ["--id-column", "patient_id", "--exclude", "is_test,split", "--format", "json"]
    assert _json(_classify(path, *args))["features"] == ["x1", "x2", "x3"]


def test_id_like_columns_used_by_default_are_named(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        ["hospital", "patient_id", "is_test", "x1", "y"],
        [[_SITES[i % 3], i, i % 2, (i * 7) % 11 - 5, (i * 7) % 11 > 5] for i in range(120)],
    )
    result = _classify(path)
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "look like ids" in line]
    assert len(warning) == 1
    assert "patient_id, is_test" in warning[0]
    assert "features (3): patient_id, is_test, x1" in result.stdout


def test_unknown_feature_column_is_refused(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    _refused(_classify(path, "--features", "x1,nope"), "nope")
    _refused(_classify(path, "--features", "x1,y"), "must not name a target")


# 3. event coding and targets


def _survive(path: Path, *extra: str) -> Any:
    base = ["--data", str(path), "--site-column", "site", "--target", "time=T"]
    return _run(*base, *_FAST, *extra)


def test_event_coded_0_1_or_boolean_is_accepted(tmp_path: Path) -> None:
    for name, coding in (("int", (0, 1)), ("bool", ("false", "true"))):
        path = _survival(tmp_path / f"{name}.csv", coding=coding)
        report = _json(_survive(path, "--target", "event=status", "--format", "json"))
        assert report["task"] == "cox_ph"
        assert report["features"] == ["x1", "x2"]
        assert report["federated"]["mean_site_metric"] > 0.6


def test_event_coded_1_2_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = _survival(tmp_path / "r.csv", coding=(1, 2))
    _refused(_survive(path, "--target", "event=status"), "coded 1/2", "status - 1")
    other = _survival(tmp_path / "o.csv", coding=(0, 3))
    _refused(_survive(other, "--target", "event=status"), "must be 0/1 or booleans")


def test_label_must_be_binary(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "t.csv",
        ["hospital", "x1", "y"],
        [[_SITES[i % 3], i % 7, i % 4] for i in range(90)],
    )
    _refused(_classify(path), "label column 'y' must be 0/1")


def test_unknown_or_unused_targets_are_refused(tmp_path: Path) -> None:
    surv = _survival(tmp_path / "s.csv")
    _refused(
        _survive(surv, "--target", "event=status", "--target", "weight=x1"),
        "unknown --target key 'weight'",
    )
    _refused(
        _survive(surv, "--target", "event=status", "--target", "label=x1"),
        "cannot be combined",
    )
    _refused(_survive(surv), "both --target event=COL and --target time=COL")
    cls = _classification(tmp_path / "c.csv")
    _refused(
        _classify(cls, "--features", "x1", "--task", "cox_ph"),
        "--task cox_ph uses --target event and time",
    )


# 4. --standardise and the scale warning


def _unscaled(path: Path) -> Path:
    rng = np.random.default_rng(2)
    rows = []
    for i in range(300):
        x1, x2 = rng.standard_normal(2)
        y = int(rng.random() < 1 / (1 + np.exp(-(2 * x1 - x2))))
        rows.append([_SITES[i % 3], f"{x1:.4f}", f"{5000 * x2 + 20000:.2f}", y])
    return _write(path, ["hospital", "x1", "income", "y"], rows)


def test_scale_warning_without_standardise(tmp_path: Path) -> None:
    path = _unscaled(tmp_path / "t.csv")
    result = _classify(path)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "pass --standardise" in line]
    assert len(warnings) == 1
    assert "'income'" in warnings[0]
    assert "'x1'" in warnings[0]
    assert "pass --standardise" not in result.stdout  # stderr only


def test_standardise_uses_pooled_statistics_and_helps(tmp_path: Path) -> None:
    path = _unscaled(tmp_path / "t.csv")
    result = _classify(path, "--standardise", "--format", "json")
    assert "pass --standardise" not in result.output
    report = _json(result)
    assert report["features"] == ["x1", "income"]
    assert report["federated"]["mean_site_metric"] > 0.75


# 5. --metric and sites that cannot produce it


def test_metric_accuracy(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    report = _json(
        _classify(path, "--features", "x1,x2", "--metric", "accuracy", "--format", "json")
    )
    assert report["metric"] == "accuracy"
    assert 0.6 < report["federated"]["mean_site_metric"] <= 1.0
    default = _json(_classify(path, "--features", "x1,x2", "--format", "json"))
    assert default["metric"] == "roc_auc"


def test_bad_metric_is_refused(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    _refused(_classify(path, "--features", "x1", "--metric", "c_index"), "roc_auc, accuracy")
    surv = _survival(tmp_path / "s.csv")
    _refused(_survive(surv, "--target", "event=status", "--metric", "accuracy"), "--metric is for")


def test_site_without_a_defined_metric_is_named(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv", one_class_test_at="C")
    args = ["--split-column", "split", "--features", "x1,x2"]
    report = _json(_classify(path, *args, "--format", "json"))
    metrics = report["federated"]["site_metrics"]
    assert metrics["C"] is None
    assert report["federated"]["mean_site_metric"] == np.mean([metrics["A"], metrics["B"]])
    named = [e for e in report["events"] if e.startswith("site C:")]
    assert len(named) == 1
    assert "one class" in named[0]
    assert "left out of the mean" in named[0]
    table = _classify(path, *args)
    assert "site C: test roc_auc undefined" in table.output
    accuracy = _json(_classify(path, *args, "--metric", "accuracy", "--format", "json"))
    assert accuracy["federated"]["site_metrics"]["C"] is not None
    assert not [e for e in accuracy["events"] if e.startswith("site C:")]


def test_table_flags_without_data_are_refused() -> None:
    _refused(_run("--split-column", "split"), "--split-column is for a table given with --data")
    _refused(_run("--features", "a,b"), "--features is for a table")


def test_metric_flag_reaches_a_job_file(tmp_path: Path) -> None:
    path = _classification(tmp_path / "t.csv")
    job = tmp_path / "job.toml"
    job.write_text(
        '[run]\nname = "t"\ndataset = "t"\nrounds = 1\nmin_nodes = 1\nmin_replies = 1\n'
        '[task]\nname = "logistic_regression"\nnum_features = 2\n'
        '[strategy]\nname = "fedavg"\n[train]\nlocal_steps = 5\n[evaluate]\nsplit = "test"\n'
    )
    result = _run(
        "--job",
        str(job),
        "--data",
        str(path),
        "--site-column",
        "hospital",
        "--target",
        "label=y",
        "--features",
        "x1,x2",
        "--metric",
        "accuracy",
        "--no-baselines",
        "--format",
        "json",
    )
    assert _json(result)["metric"] == "accuracy"
