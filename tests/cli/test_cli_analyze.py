"""``biofed analyze KIND`` in simulation through Typer's runner: each kind's ``--format json``
equals the statistic computed on the pooled data (numpy, lifelines, statsmodels), tables fit
80 columns without cutting a number, bad flags are one line (exit 2), a failed run exits 1,
and ``--plot``/``--html`` write real files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.analytics import result_from_json
from biofed.cli import app
from biofed.cli._analyze import parse_where

runner = CliRunner(env={"COLUMNS": "80"})
SITES = ("north", "south", "east")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A generated table with a known truth: three hospitals, 900 patients."""
    rng = np.random.default_rng(7)
    n = 900
    site = np.repeat(SITES, n // 3)
    age = np.round(rng.normal(60, 10, n), 1)
    bmi = np.round(rng.normal(27, 4, n), 2)
    group = rng.integers(0, 2, n)
    logit = -1 + 0.05 * (age - 60) + 0.8 * group
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    hazard = 0.01 * np.exp(0.03 * (age - 60) + 0.5 * group)
    t_event = rng.exponential(1 / hazard)
    t_censor = rng.uniform(0, 150, n)
    time = np.round(np.minimum(t_event, t_censor), 1) + 0.1
    event = (t_event <= t_censor).astype(int)
    path = tmp_path_factory.mktemp("analyze") / "cohort.csv"
    with path.open("w") as f:
        f.write("hospital,age,bmi,grp,y,time,event\n")
        for row in zip(site, age, bmi, group, y, time, event, strict=True):
            f.write(",".join(str(v) for v in row) + "\n")
    columns = {
        "site": site, "age": age, "bmi": bmi, "grp": group, "y": y, "time": time, "event": event
    }  # fmt: skip
    return path, columns


def run(*args: str) -> Any:
    result = runner.invoke(app, ["analyze", *args])
    return result


def run_json(*args: str) -> dict[str, Any]:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)  # nothing else on stdout
    return data


def data_args(table: tuple[Path, Any]) -> list[str]:
    return ["--data", str(table[0]), "--site-column", "hospital"]


# -- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("age>60", ("age", ">", 60)),
        ("age >= 60.5", ("age", ">=", 60.5)),
        ("sex == 'F'", ("sex", "==", "F")),
        ("sex = F", ("sex", "==", "F")),
        ('"smoking status" != "never smoked"', ("smoking status", "!=", "never smoked")),
        ("stage in I,II,'III, a'", ("stage", "in", ("I", "II", "III, a"))),
        ("stage not in 1, 2", ("stage", "not_in", (1, 2))),
        ("bmi missing", ("bmi", "missing", None)),
        ("bmi present", ("bmi", "present", None)),
    ],
)
def test_where_parses_column_op_value(text: str, expected: tuple[Any, ...]) -> None:
    f = parse_where(text)
    assert (f.column, f.op, f.value) == expected


# -- each kind against the pooled data ----------------------------------------------------------


def test_count_with_a_filter_equals_numpy(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = run_json("count", *data_args(table), "--where", "age>60", "--where", "grp == 1")
    cols = table[1]
    assert data["kind"] == "count"
    assert data["count"] == int(((cols["age"] > 60) & (cols["grp"] == 1)).sum())
    assert data["sites"] == 3


def test_describe_equals_numpy(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = run_json("describe", *data_args(table), "--column", "age,bmi")
    for stat, name in zip(data["stats"], ("age", "bmi"), strict=True):
        x = table[1][name]
        assert stat["column"] == name
        assert stat["n"] == len(x)
        assert stat["mean"] == pytest.approx(x.mean(), rel=1e-12)
        assert stat["variance"] == pytest.approx(x.var(ddof=1), rel=1e-9)


def test_histogram_equals_numpy(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    # no value outside the edges, every bin ≥ 10 at every site: nothing is withheld
    data = run_json("histogram", *data_args(table), "--column", "age", "--edges", "0,50,60,70,200")
    age = table[1]["age"]
    assert data["counts"] == np.histogram(age, bins=[0, 50, 60, 70, 200])[0].tolist()
    assert (data["below"], data["above"], data["total"]) == (0, 0, len(age))


def test_quantiles_within_their_error_bound(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    args = ["quantile", *data_args(table), "--column", "bmi", "--probs", "0.25,0.5,0.75"]
    args += ["--bounds", "0,60", "--tolerance", "0.01"]
    expected = np.quantile(table[1]["bmi"], [0.25, 0.5, 0.75])
    plain = run_json(*args)  # each site withholds its small bins: the bound says how far
    secure = run_json(*args, "--secure")  # rules on the totals: refined to the tolerance
    for data in (plain, secure):
        for got, bound, want in zip(data["values"], data["errors"], expected, strict=True):
            assert abs(got - want) <= bound + 1e-12
    assert max(secure["errors"]) < 0.1


def test_crosstab_equals_numpy(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = run_json(
        "crosstab", *data_args(table), "--rows", "grp", "--row-levels", "0,1",
        "--cols", "y", "--col-levels", "0,1",
    )  # fmt: skip
    cols = table[1]
    expected = [
        [int(((cols["grp"] == g) & (cols["y"] == v)).sum()) for v in (0, 1)] for g in (0, 1)
    ]
    assert data["counts"] == expected  # every cell large at every site: nothing withheld
    assert data["total"] == len(cols["y"])


def test_correlation_equals_numpy(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    data = run_json("correlation", *data_args(table), "--column", "age", "--column", "bmi")
    expected = np.corrcoef(table[1]["age"], table[1]["bmi"])
    assert np.allclose(np.asarray(data["correlation"], float), expected, atol=1e-12)


@pytest.mark.slow
def test_glm_equals_statsmodels(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    sm = pytest.importorskip("statsmodels.api")
    data = run_json(
        "glm", *data_args(table), "--outcome", "y", "--covariate", "age,grp", "--family", "binomial"
    )
    cols = table[1]
    X = sm.add_constant(np.column_stack([cols["age"], cols["grp"]]))
    ref = sm.GLM(cols["y"], X, family=sm.families.Binomial()).fit()
    assert data["names"][1:] == ["age", "grp"]
    assert np.allclose(data["coef"], ref.params, atol=1e-8)
    assert np.allclose(data["se"], ref.bse, atol=1e-8)


@pytest.mark.slow
def test_logrank_and_nelson_aalen_equal_lifelines(
    table: tuple[Path, dict[str, np.ndarray]],
) -> None:
    lifelines = pytest.importorskip("lifelines")
    from lifelines.statistics import logrank_test

    cols = table[1]
    g = cols["grp"] == 1
    grid = ["--grid-step", "1", "--grid-stop", "200"]
    data = run_json(
        "logrank", *data_args(table), "--time", "time", "--event", "event",
        "--group", "grp", "--levels", "0,1", *grid,
    )  # fmt: skip
    ref = logrank_test(cols["time"][~g], cols["time"][g], cols["event"][~g], cols["event"][g])
    if data["exact"]:
        assert data["statistic"] == pytest.approx(ref.test_statistic, rel=1e-9)
    assert data["p"] < 0.05  # the generated truth: hazard ratio e^0.5 between the groups
    na = run_json("nelson-aalen", *data_args(table), "--time", "time", "--event", "event")
    fitter = lifelines.NelsonAalenFitter().fit(cols["time"], cols["event"])
    curve = na["curves"][0]
    expected = fitter.cumulative_hazard_at_times(curve["times"]).to_numpy()
    assert np.allclose(curve["estimate"], expected, atol=1e-10)


def test_km_on_tcga_equals_lifelines_and_draws(tmp_path: Path) -> None:
    lifelines = pytest.importorskip("lifelines")
    from biofed.datasets import load_tcga_brca

    png, svg, page = tmp_path / "km.png", tmp_path / "km.svg", tmp_path / "km.html"
    result = run(
        "km", "--tcga", "--time", "time", "--event", "event", "--format", "json",
        "--plot", str(png), "--html", str(page),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    pooled = load_tcga_brca().pooled("train")
    fed = load_tcga_brca()
    times = np.concatenate([np.asarray(s.train.targets["time"]) for s in fed.sites.values()])
    events = np.concatenate([np.asarray(s.train.targets["event"]) for s in fed.sites.values()])
    for s in fed.sites.values():
        if s.test is not None:
            times = np.concatenate([times, s.test.targets["time"]])
            events = np.concatenate([events, s.test.targets["event"]])
    assert data["records"] == len(times)
    assert len(pooled) <= len(times)
    kmf = lifelines.KaplanMeierFitter().fit(times, events)
    curve = data["curves"][0]
    expected = kmf.survival_function_at_times(curve["times"]).to_numpy()
    assert np.allclose(curve["estimate"], expected, atol=1e-12)
    assert png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    assert (
        run("km", "--tcga", "--time", "time", "--event", "event", "--plot", str(svg)).exit_code == 0
    )
    assert svg.stat().st_size > 0
    assert "<svg" in svg.read_text()


@pytest.mark.slow
def test_cox_on_tcga_equals_lifelines_and_its_table_fits_80_columns() -> None:
    lifelines = pytest.importorskip("lifelines")
    import pandas as pd

    from biofed.datasets import load_tcga_brca

    covs = ["age_at_index", "ajcc_pathologic_stage_Stage IIA"]
    args = ["cox", "--tcga", "--time", "time", "--event", "event", "--penalizer", "0.1"]
    args += [a for c in covs for a in ("--covariate", c)]
    data = run_json(*args)
    fed = load_tcga_brca()
    frames = []
    for s in fed.sites.values():
        for part in (s.train, s.test):
            if part is None:
                continue
            frame = pd.DataFrame(np.asarray(part.features, np.float64), columns=part.feature_names)
            frames.append(
                frame[covs].assign(time=part.targets["time"], event=part.targets["event"])
            )
    ref = lifelines.CoxPHFitter(penalizer=0.1).fit(
        pd.concat(frames), duration_col="time", event_col="event"
    )
    assert np.allclose(data["coef"], ref.params_.to_numpy(), atol=1e-6)
    # the table: every line within 80 columns, every number whole
    shown = run(*args)
    assert shown.exit_code == 0, shown.output
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    _, rows = result_from_json(json.dumps(data)).table()
    flat = shown.stdout
    for row in rows:
        for cell in row[1:]:
            if cell:
                assert re.search(rf"(?<![\d.]){re.escape(cell)}(?![\d.])", flat), cell


def test_describe_table_keeps_numbers_whole(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    json_out = run_json("describe", *data_args(table), "--column", "age,bmi,time")
    shown = run("describe", *data_args(table), "--column", "age,bmi,time")
    assert shown.exit_code == 0, shown.output
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    _, rows = result_from_json(json.dumps(json_out)).table()
    for row in rows:
        for cell in row:
            assert cell in shown.stdout


def test_histogram_plot_and_html(tmp_path: Path, table: tuple[Path, Any]) -> None:
    png, page = tmp_path / "h.png", tmp_path / "h.html"
    args = ["histogram", *data_args(table), "--column", "age", "--edges", "30,50,60,70,90"]
    result = run(*args, "--plot", str(png), "--html", str(page))
    assert result.exit_code == 0, result.output
    assert png.stat().st_size > 0
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert "<svg" in text
    assert "[60, 70)" in text


def test_secure_count_equals_plain(table: tuple[Path, dict[str, np.ndarray]]) -> None:
    plain = run_json("count", *data_args(table), "--where", "age < 50")
    secure = run_json("count", *data_args(table), "--where", "age < 50", "--secure")
    assert secure["count"] == plain["count"] == int((table[1]["age"] < 50).sum())


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["count"], "say where the data is"),
        (["count", "--tcga", "--where", "age_at_index >> 3"], "compares with a number"),
        (["count", "--tcga", "--where", "age_at_index"], "is not COLUMN OP VALUE"),
        (["count", "--tcga", "--where", "x in"], "needs a value"),
        (["count", "--tcga", "--format", "xml"], "--format must be table or json"),
        (["count", "--tcga", "--plot", "x.png"], "--plot draws km curves and histograms"),
        (["km", "--tcga", "--time", "time", "--event", "event", "--plot", "k.pdf"], ".png or .svg"),
        (["count", "--tcga", "--dp-delta", "0.1"], "need --dp-epsilon"),
        (["count", "--tcga", "--dp-epsilon", "1", "--dp-mechanism", "gaussian"], "delta"),
        (["describe", "--tcga", "--column", "age"], "has no column 'age'"),
        (["km", "--tcga", "--time", "time", "--event", "event", "--group", "x"], "go together"),
        (
            [
                "cox",
                "--tcga",
                "--time",
                "time",
                "--event",
                "event",
                "--covariate",
                "age_at_index",
                "--ties",
                "exact",
            ],
            "ties",
        ),
        (["count", "--tcga", "--split", "holdout"], "--split must be one of"),
        (["histogram", "--tcga", "--column", "time", "--edges", "1,x"], "--edges takes numbers"),
        (["km", "--tcga", "--time", "time", "--event", "event", "--secure"], "grid"),
        (["count", "--tcga", "--data", "x.csv"], "say where the data is"),
        (["count", "--kit", "/nonexistent", "--dataset", "d", "--tcga"], "for a simulation"),
    ],
)
def test_bad_flags_are_one_line_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert message in lines[0]


def test_text_column_without_a_spec_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("site,sex,age\n" + "".join(f"s{i % 3},F,{i}\n" for i in range(60)))
    result = run("crosstab", "--data", str(path), "--site-column", "site", "--rows", "sex",
                 "--row-levels", "F,M", "--cols", "age", "--col-edges", "0,30,60")  # fmt: skip
    assert result.exit_code == 2
    assert "is text" in result.stderr
    assert "--spec" in result.stderr


def test_a_run_the_sites_refuse_exits_1_with_their_reason() -> None:
    result = run(
        "cox", "--tcga", "--time", "time", "--event", "event",
        "--covariate", "age_at_index", "--records-per-parameter", "1000",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "failed:" in result.stderr
    assert "records_per_parameter" in result.stderr
    # one line per distinct reason, not one per site
    assert result.stderr.count("records_per_parameter × parameters") == 1


@pytest.mark.slow
def test_secure_cox_on_a_grid_equals_the_plain_fit() -> None:
    args = ["cox", "--tcga", "--time", "time", "--event", "event", "--covariate", "age_at_index"]
    args += ["--grid-step", "30", "--grid-stop", "9000"]
    plain = run_json(*args)
    secure = run_json(*args, "--secure")  # the coordinator sees only the sums
    assert np.allclose(secure["coef"], plain["coef"], atol=1e-6)
    assert np.allclose(secure["se"], plain["se"], atol=1e-6)


def test_dp_answers_are_marked_and_near_the_truth(
    table: tuple[Path, dict[str, np.ndarray]],
) -> None:
    truth = int((table[1]["age"] > 50).sum())
    data = run_json("count", *data_args(table), "--where", "age > 50", "--dp-epsilon", "1")
    assert data["dp"] is True
    # three sites' Laplace(1) noise: beyond 40 has probability < 1e-15
    assert abs(data["count"] - truth) < 40
    gaussian = run_json(
        "describe", *data_args(table), "--column", "age", "--bounds", "age=0,120",
        "--dp-epsilon", "2", "--dp-delta", "1e-6",
    )  # fmt: skip
    assert gaussian["dp"] is True
    assert abs(gaussian["stats"][0]["mean"] - table[1]["age"].mean()) < 5


def test_a_long_header_wraps_and_its_numbers_stay_whole() -> None:
    """A column name wider than the terminal beside the labels: the header wraps, the
    numbers under it stay whole (a column name with a comma is quoted in --column)."""
    names = [
        "age_at_index",
        "ajcc_pathologic_stage_Stage IIA",
        "primary_diagnosis_Infiltrating duct carcinoma, NOS",
    ]
    flag = ",".join(f"'{n}'" if "," in n else n for n in names)
    data = run_json("correlation", "--tcga", "--column", flag)
    assert data["columns"] == names
    shown = run("correlation", "--tcga", "--column", flag)
    assert shown.exit_code == 0, shown.output
    assert all(len(line) <= 80 for line in shown.stdout.splitlines())
    _, rows = result_from_json(json.dumps(data)).table()
    for row in rows:
        for cell in row[1:]:
            if cell:
                assert re.search(rf"(?<![\d.]){re.escape(cell)}(?![\d.])", shown.stdout), cell
