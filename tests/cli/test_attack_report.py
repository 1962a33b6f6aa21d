"""Attacks on ``biofed report heterogeneity`` (issue 13): a hostile ``data_summaries`` run
event (what ``RUN_ID --kit`` reads from the coordinator), and hostile category names in the
``--html`` report (XSS, matplotlib mathtext) and the terminal table (Rich markup)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._report import summaries_from_json
from biofed.core import BiofedError

runner = CliRunner(env={"COLUMNS": "120"})

EVIL = (
    "<script>alert(1)</script>",
    'a"><img src=x onerror=alert(1)>',
    "$\\undefinedcommand$",
    "$x^{$",
    "[bold red]markup[/]",
)

STUDY = """
[study]
name = "evil"
source = "file"
test_fraction = 0.0

[columns]
features = ["age", "group"]
categorical = ["group"]

[outcome]
kind = "binary"
label = "y"
"""


def good_event() -> dict[str, dict[str, object]]:
    return {"site-a": {"records": 100, "outcome/n": 100.0, "outcome/positives": 30.0}}


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"site-a": {"records": ' + "[" * 100_000 + "]" * 100_000 + "}}",
        '{"site-a": {"records": ' + "9" * 5000 + "}}",
        '{"<script>": {"records": 100}}',
        '{"site-a": {"records": "100"}}',
        '{"site-a": {"records": 100.7}}',
        '{"site-a": {"records": true}}',
        '{"site-a": {"records": null}}',
        '{"site-a": {"records": 100, "numeric/age/edges": [1, [2]]}}',
        '{"site-a": {"records": 100, "outcome/n": NaN}}',
        '{"site-a": {"records": 100, "rows": [1, 2, 3]}}',
        "[]",
        "not json",
    ],
    ids=lambda t: t[:30],
)
def test_a_hostile_data_summaries_event_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(BiofedError) as info:
        summaries_from_json(text)
    assert "\n" not in str(info.value)


def test_an_honest_event_still_parses() -> None:
    parsed = summaries_from_json(json.dumps(good_event()))
    assert parsed["site-a"].records == 100


@pytest.fixture
def evil_table(tmp_path: Path) -> tuple[Path, Path]:
    spec = tmp_path / "study.toml"
    spec.write_text(STUDY, encoding="utf-8")
    rng = np.random.default_rng(3)
    table = tmp_path / "table.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["hospital", "age", "group", "y"])
        for site, shift in (("a", 0.0), ("b", 20.0)):
            for i in range(40 * len(EVIL)):
                age = rng.normal(50 + shift, 10)
                writer.writerow([site, f"{age:.1f}", EVIL[i % len(EVIL)], int(i % 3 == 0)])
    return spec, table


def test_hostile_category_names_are_escaped_in_html_and_never_break_the_figures(
    evil_table: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, table = evil_table
    page = tmp_path / "report.html"
    result = runner.invoke(
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
            "10",
            "--html",
            str(page),
        ],
    )
    assert result.exit_code == 0, result.output
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text
    assert "<img src=x" not in text
    assert "&lt;script&gt;" in text
    assert "group=$\\undefinedcommand$" in text  # a category's own name, escaped only
