"""``biofed analyze`` through a study spec (``--spec`` with ``--data --site-column`` or
``--site NAME=SOURCE``): text columns become categorical, agreed levels enter the design,
and the answers equal pandas/statsmodels on the pooled table; and ``biofed agreement draft
--allow-query/--query-rule`` writes the agreement's ``[analytics]`` table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "80"})

STUDY = """
[study]
name = "cohort"
source = "file"
test_fraction = 0.2
seed = 1

[columns]
id = "pid"
features = ["age", "sex"]
categorical = ["sex"]

[outcome]
kind = "binary"
label = "y"
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    rng = np.random.default_rng(11)
    folder = tmp_path_factory.mktemp("study")
    n = 600
    hospital = np.repeat(["a", "b", "c"], n // 3)
    age = np.round(rng.normal(60, 10, n), 2)
    sex = rng.choice(["female", "male"], n)
    logit = -1 + 0.04 * (age - 60) + 0.7 * (sex == "male")
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    table = folder / "table.csv"
    with table.open("w") as f:
        f.write("pid,hospital,age,sex,y\n")
        for i in range(n):
            f.write(f"{i},{hospital[i]},{age[i]},{sex[i]},{y[i]}\n")
    spec = folder / "study.toml"
    spec.write_text(STUDY)
    return spec, table, {"age": age, "sex": sex, "y": y}


def run_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["analyze", *args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_a_crosstab_of_a_text_column_through_the_spec(study: tuple[Path, Path, Any]) -> None:
    spec, table, cols = study
    data = run_json(
        "crosstab", "--spec", str(spec), "--data", str(table), "--site-column", "hospital",
        "--rows", "sex", "--row-levels", "female,male", "--cols", "label", "--col-levels", "0,1",
    )  # fmt: skip
    expected = [
        [int(((cols["sex"] == s) & (cols["y"] == v)).sum()) for v in (0, 1)]
        for s in ("female", "male")
    ]
    assert data["counts"] == expected
    assert data["total"] == len(cols["y"])


@pytest.mark.slow
def test_a_logistic_glm_with_an_agreed_level_equals_statsmodels(
    study: tuple[Path, Path, Any],
) -> None:
    sm = pytest.importorskip("statsmodels.api")
    spec, table, cols = study
    folder = table.parent / "sites"
    folder.mkdir(exist_ok=True)
    sites = []
    for name in ("a", "b", "c"):  # --site NAME=SOURCE: one file per site
        lines = table.read_text().splitlines()
        rows = [lines[0]] + [r for r in lines[1:] if r.split(",")[1] == name]
        (folder / f"{name}.csv").write_text("\n".join(rows) + "\n")
        sites += ["--site", f"{name}={folder / f'{name}.csv'}"]
    data = run_json(
        "glm", "--spec", str(spec), *sites, "--outcome", "label", "--covariate", "age,sex",
        "--level", "sex=female,male", "--family", "binomial",
    )  # fmt: skip
    X = sm.add_constant(np.column_stack([cols["age"], cols["sex"] == "male"]).astype(float))
    ref = sm.GLM(cols["y"], X, family=sm.families.Binomial()).fit()
    assert data["names"][1] == "age"
    assert np.allclose(data["coef"], ref.params, atol=1e-8)


# -- the agreement's [analytics] ----------------------------------------------------------------


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biofed.identity import Consortium

    root = tmp_path_factory.mktemp("consortium") / "fed"
    Consortium.create(
        root,
        consortium="analytics",
        coordinator="127.0.0.1:1",
        sites=["a", "b"],
        researchers=["alice"],
    )
    return root


def _draft(fed: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(
        app,
        [
            "agreement", "draft", "--out", str(out), "--title", "Counts",
            "--consortium-dir", str(fed), "--sites", "a,b", "--researchers", "alice",
            "--expires", "2030-01-01", "--legal-basis", "consent", "--purpose", "counts",
            "--dataset", "ds", *extra,
        ],
    )  # fmt: skip


def test_draft_writes_the_analytics_table(consortium: Path, tmp_path: Path) -> None:
    from biofed.governance import read_agreement

    out = tmp_path / "agreement.toml"
    result = _draft(
        consortium, out, "--allow-query", "count,km", "--allow-query", "cox",
        "--query-rule", "min_cell=20", "--query-rule", "dominance=0.4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    analytics = read_agreement(out).agreement.analytics
    assert analytics.allowed == ("count", "cox", "km")
    assert dict(analytics.rules) == {"min_cell": 20, "dominance": 0.4}
    assert "[analytics]" in out.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--allow-query", "regress"], "is not a query kind"),
        (["--allow-query", "count", "--query-rule", "min_cell"], "KEY=VALUE"),
        (["--allow-query", "count", "--query-rule", "min_cell=x"], "must be a number"),
        (["--allow-query", "count", "--query-rule", "nope=3"], "unknown key"),
        (["--query-rule", "min_cell=20"], "needs --allow-query"),
    ],
)
def test_draft_analytics_errors_are_one_line(
    consortium: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = _draft(consortium, tmp_path / "a.toml", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "a.toml").exists()


@pytest.mark.slow
def test_a_rehearsed_agreement_allows_only_its_kinds(tmp_path: Path) -> None:
    from biofed.identity import Consortium

    sites = [f"center-{i}" for i in range(6)]
    Consortium.create(
        tmp_path / "fed", consortium="tcga", coordinator="127.0.0.1:1", sites=sites,
        researchers=["alice"],
    )  # fmt: skip
    out = tmp_path / "agreement.toml"
    args = [
        "agreement", "draft", "--out", str(out), "--title", "Counts",
        "--consortium-dir", str(tmp_path / "fed"), "--sites", ",".join(sites),
        "--researchers", "alice", "--expires", "2030-01-01", "--legal-basis", "consent",
        "--purpose", "counts", "--allow-query", "count",
    ]  # fmt: skip
    wrong = runner.invoke(app, [*args, "--dataset", "ds"])
    assert wrong.exit_code == 0, wrong.output
    misnamed = runner.invoke(app, ["analyze", "count", "--tcga", "--agreement", str(out)])
    assert misnamed.exit_code == 2
    assert "draft it with --dataset analysis" in misnamed.stderr
    right = runner.invoke(app, [*args, "--dataset", "analysis", "--force"])
    assert right.exit_code == 0, right.output
    counted = run_json("count", "--tcga", "--agreement", str(out))
    assert counted["count"] == 1088
    refused = runner.invoke(
        app, ["analyze", "describe", "--column", "time", "--tcga", "--agreement", str(out)]
    )
    assert refused.exit_code == 1, refused.output
    assert "does not allow describe queries" in refused.stderr
