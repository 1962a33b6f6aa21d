"""``biofed report heterogeneity`` through Typer's runner: a file study, Eunomia CDM sites,
and a networked run's summaries read through the real control API."""

from __future__ import annotations

import csv
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "80"})
K = 10

STUDY = """
[study]
name = "shift"
source = "file"
test_fraction = 0.2
seed = 1

[columns]
id = "pid"
features = ["age", "bmi", "smoker", "sex"]
categorical = ["sex"]

[outcome]
kind = "binary"
label = "y"
"""


def write_table(path: Path, *, shift: float = 2.0, tiny: bool = True) -> Path:
    """Four sites of 700 rows (site c's age moved by ``shift`` sd), and a 6-row site."""
    rng = np.random.default_rng(5)
    rows: list[dict[str, Any]] = []
    sizes = {"a": 700, "b": 700, "c": 700, "d": 700} | ({"tiny": 6} if tiny else {})
    for site, n in sizes.items():
        age = rng.normal(60, 10, n) + (10 * shift if site == "c" else 0)
        bmi = rng.normal(27, 4, n)
        smoker = rng.random(n) < 0.3
        sex = rng.choice(["female", "male"], n)
        if site == "a":
            sex[:3] = "intersex"  # a category three people hold
        y = rng.random(n) < 0.25
        for i in range(n):
            rows.append(
                {
                    "pid": len(rows),
                    "hospital": site,
                    "age": f"{age[i]:.2f}",
                    "bmi": f"{bmi[i]:.2f}",
                    "smoker": int(smoker[i]),
                    "sex": sex[i],
                    "y": int(y[i]),
                }
            )
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "study.toml"
    spec.write_text(STUDY)
    return spec, write_table(tmp_path / "table.csv")


def simulate(spec: Path, table: Path, *extra: str) -> Any:
    return runner.invoke(
        app,
        [
            "report",
            "heterogeneity",
            "--spec",
            str(spec),
            "--data",
            str(table),
            "--site-column",
            "hospital",
            "--min-cell",
            str(K),
            *extra,
        ],
    )


def test_json_flags_the_planted_shift_and_nothing_else(study: tuple[Path, Path]) -> None:
    result = simulate(*study, "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    flagged = {(f["site"], f["feature"], f["measure"]) for f in data["findings"] if f["flagged"]}
    assert flagged == {("c", "age", "smd"), ("c", "age", "wasserstein"), ("c", "age", "ks")}
    assert data["min_cell"] == K
    assert "tiny left out" in result.stderr  # it has fewer training rows than min_cell
    assert "tiny" not in result.stdout
    assert "intersex" not in result.stdout  # three people: only inside "other"
    smoker = [f for f in data["findings"] if f["feature"] == "smoker"]
    assert {f["measure"] for f in smoker} == {"smd", "missing"}  # a 0/1 covariate


def test_table_fits_80_columns_with_flags_first(study: tuple[Path, Path]) -> None:
    result = simulate(*study)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    start = next(i for i, line in enumerate(lines) if "each site against the others" in line)
    rows = [line for line in lines[start:] if re.match(r"\s*(⚑\s+)?[a-d]\s", line)]
    flagged = [line for line in rows if "⚑" in line]
    assert len(flagged) == 3
    assert rows[: len(flagged)] == flagged  # flags first
    assert all(" c " in line and "age" in line for line in flagged)


class _Checker(HTMLParser):
    """Tags balanced (void elements aside), and every URL the page would load."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.doctype = False

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action") and value is not None:
                self.urls.append(value)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_valid_self_contained_and_disclosure_controlled(
    study: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    result = simulate(*study, "--html", str(out), "--format", "json")
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.doctype
    assert checker.errors == []
    assert checker.stack == []
    assert checker.urls  # the figures …
    assert all(u.startswith("data:image/png;base64,") for u in checker.urls)  # … inline
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "http" not in without_images
    assert "<script" not in page.lower()
    text = " ".join(checker.text)
    assert "intersex" not in text
    assert "tiny" not in text
    # every record count shown is 0 or ≥ min_cell
    for count in re.findall(r"<td class='n'>(\d+)</td>", page):
        assert int(count) == 0 or int(count) >= K, count
    assert len(re.findall(r"<img ", page)) >= 3  # bars, SMD dots, a histogram per feature


def test_names_from_the_data_are_escaped_in_the_html(tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(STUDY)
    table = write_table(tmp_path / "t.csv", tiny=False)
    evil = "<img src=https://x.example/a.png>"
    table.write_text(table.read_text().replace(",female,", f",{evil},"))
    out = tmp_path / "r.html"
    result = simulate(spec, table, "--html", str(out))
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert evil not in page
    assert html.escape(evil) in page  # shown as text, never as markup

    bad = table.read_text().replace(",a,", ",x<b>y,")
    table.write_text(bad)
    refused = simulate(spec, table)
    assert refused.exit_code == 2  # a site name must be an identifier: refused in one line
    assert "site name" in refused.output
    assert "Traceback" not in refused.output


def test_usage_errors_are_one_line(study: tuple[Path, Path], tmp_path: Path) -> None:
    spec, table = study
    for args, message in [
        ([], "give RUN_ID --kit KIT"),
        (["--spec", str(spec)], "give --data TABLE --site-column COL"),
        (["--spec", str(spec), "--data", str(table), "--site-column", "nope"], "'nope'"),
        (["--spec", str(spec), "--omop", "x=y.duckdb"], "reads a file"),
        (
            [
                "--spec",
                str(spec),
                "--data",
                str(table),
                "--site-column",
                "hospital",
                "--format",
                "yaml",
            ],
            "--format must be table or json",
        ),
        (
            [
                "--spec",
                str(spec),
                "--data",
                str(table),
                "--site-column",
                "hospital",
                "--min-cell",
                "0",
            ],
            "min_cell must be an integer ≥ 1",
        ),
        (["run-1", "--spec", str(spec)], "not both"),
    ]:
        result = runner.invoke(app, ["report", "heterogeneity", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


# -- real OMOP CDMs -----------------------------------------------------------------------------


@pytest.mark.slow
def test_eunomia_sites_with_a_planted_age_shift(tmp_path: Path) -> None:
    """The GI-bleed study on four Eunomia CDM sites; one site's persons aged by 2 sd."""
    import duckdb

    from biofed.data import extract
    from biofed.datasets import gi_bleed_study, write_eunomia_sites

    sites = write_eunomia_sites(tmp_path / "sites", 4, seed=0)
    study = gi_bleed_study()
    spec = tmp_path / "study.json"
    spec.write_text(study.to_json())
    ages = np.concatenate([extract(study, p).columns["age"] for p in sites.values()])
    shift = round(2 * float(np.std(ages)))
    args = [
        "report",
        "heterogeneity",
        "--spec",
        str(spec),
        "--min-cell",
        str(K),
        "--format",
        "json",
    ]
    for name, path in sites.items():
        args += ["--omop", f"{name}={path}"]

    def flags() -> set[tuple[str, str, str]]:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        return {(f["site"], f["feature"], f["measure"]) for f in data["findings"] if f["flagged"]}

    before = flags()  # Eunomia's sites differ in age by design (write_eunomia_sites)
    assert not {f for f in before if f[:2] == ("site-2", "age")}
    with duckdb.connect(str(sites["site-2"])) as con:  # our own copy, not the packaged file
        con.execute("UPDATE person SET year_of_birth = year_of_birth - ?", [shift])
    after = flags()
    assert {("site-2", "age", m) for m in ("smd", "wasserstein", "ks")} <= after
    assert {f for f in after - before if f[1] != "age"} == set()  # only age was moved
