"""``biofed simulate --data`` with text columns and missing values: --one-hot and --impute."""

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


def _table(path: Path, *, split: bool = True) -> Path:
    """300 rows over sites A-C: x1 (some NaN), x2 (some NaN), a stage and a smoker column
    (text; stage 'IV' is rare, a few stages missing, and 'V' only in test rows), x3, y."""
    rng = np.random.default_rng(0)
    rows = []
    stages = ["I", "II", "III"]
    for i in range(300):
        site = _SITES[i % 3]
        x1, x2, x3 = rng.standard_normal(3)
        stage = stages[i % 3 if i % 7 else (i // 7) % 3]
        is_test = (i // 3) % 5 == 0
        if i in (10, 20):
            stage = "IV"
        if i == 15:
            stage = "V" if is_test else stage
        y = int(rng.random() < 1 / (1 + np.exp(-(2 * x1 - x2 + (stage == "III")))))
        row: list[Any] = [site, "" if i % 11 == 0 else f"{x1:.4f}"]
        row += ["" if i % 13 == 1 else f"{x2:.4f}", "" if i == 40 else stage]
        row += ["yes" if i % 2 else "no", f"{x3:.4f}", y]
        if split:
            row.append("test" if is_test else "train")
        rows.append(row)
    header = ["hospital", "x1", "x2", "stage", "smoker", "x3", "y"] + (["split"] if split else [])
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _classify(path: Path, *extra: str) -> Any:
    base = ["--data", str(path), "--site-column", "hospital", "--target", "label=y"]
    return runner.invoke(app, ["simulate", *base, *_FAST, *extra])


def _refused(result: Any, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


def test_table_with_text_and_missing_values_trains_with_both_flags(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    args = ["--split-column", "split", "--impute", "mean", "--one-hot", "--format", "json"]
    result = _classify(path, *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["features"] == [
        "x3",
        "x1",
        "x1__missing",
        "x2",
        "x2__missing",
        "stage=I",
        "stage=II",
        "stage=III",
        "stage=other",
        "smoker=no",
        "smoker=yes",
        "smoker=other",
    ]


def test_random_split_and_median_keep_every_site_aligned(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv", split=False)
    options = TableOptions(
        path=path,
        site_column="hospital",
        targets=("label=y",),
        test_fraction=0.25,
        impute="median",
        one_hot=True,
        min_category_count=10,
    )
    fed = load_user_federation(options, seed=3)
    names = {d.feature_names for s in fed.sites.values() for d in (s.train, s.test) if d}
    assert len(names) == 1
    for site in fed.sites.values():
        assert site.test is not None
        assert "__row__" not in site.train.targets
        assert np.isfinite(site.train.features).all()
    assert sum(len(s.train) + len(s.test or ()) for s in fed.sites.values()) == 300


def test_unseen_test_category_maps_to_other(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    options = TableOptions(
        path=path,
        site_column="hospital",
        targets=("label=y",),
        test_fraction=0.25,
        split_column="split",
        impute="zero",
        one_hot=True,
        min_category_count=1,
    )
    fed = load_user_federation(options, seed=0)
    names = fed.sites["A"].train.feature_names
    assert "stage=V" not in names  # only in a test row: not in the training vocabulary
    assert "stage=IV" in names  # min count 1 keeps the rare training category
    for site in fed.sites.values():
        assert site.test is not None
        onehot = [j for j, n in enumerate(names) if n.startswith("stage=")]
        np.testing.assert_array_equal(site.test.features[:, onehot].sum(axis=1), 1.0)


def test_refusal_lists_every_text_column_and_suggests_one_hot(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    _refused(_classify(path, "--split-column", "split"), "'stage'", "'smoker'", "--one-hot")


def test_refusal_lists_every_missing_column_and_suggests_impute(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    line = _refused(
        _classify(path, "--split-column", "split", "--one-hot"), "'x1'", "'x2'", "--impute"
    )
    assert "x3" not in line


def test_refusal_names_text_and_missing_columns_together(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    _refused(_classify(path), "'stage'", "'smoker'", "--one-hot", "'x1'", "'x2'", "--impute")


def test_bad_impute_and_min_count_are_refused(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    _refused(_classify(path, "--one-hot", "--impute", "mode"), "--impute must be one of")
    _refused(
        _classify(path, "--one-hot", "--impute", "mean", "--min-category-count", "0"),
        "--min-category-count",
    )


def test_flags_without_data_are_refused() -> None:
    result = runner.invoke(app, ["simulate", *_FAST, "--one-hot"])
    _refused(result, "--one-hot is for a table given with --data")


def test_a_table_whose_only_feature_is_text_trains(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["hospital", "c", "y"])
        writer.writerows([s, "ab"[i % 2], (i // 2) % 2] for i in range(60) for s in _SITES)
    result = _classify(path, "--one-hot", "--format", "json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["features"] == ["c=a", "c=b", "c=other"]


def test_unknown_feature_is_still_refused_with_the_flags(tmp_path: Path) -> None:
    path = _table(tmp_path / "t.csv")
    args = ["--one-hot", "--impute", "mean", "--features", "x1,stage,nope"]
    _refused(_classify(path, *args), "nope")
