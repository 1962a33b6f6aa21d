"""OmopDatabase: read-only access, description and a fingerprint that sees any clinical change."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb
import pytest

from biofed.core import ConfigurationError, DataError
from biofed.data import OmopDatabase
from biofed.datasets import EUNOMIA_PERSONS, copy_cdm, eunomia_path


def test_describe_eunomia() -> None:
    with OmopDatabase.open(str(eunomia_path())) as db:
        first = db.describe()
    assert first.cdm_version == "v5.3.1"
    assert first.cdm_source["cdm_source_abbreviation"] == "Synthea"
    assert first.row_counts["person"] == EUNOMIA_PERSONS
    assert first.row_counts["condition_occurrence"] == 65332
    assert first.row_counts["drug_exposure"] == 67707
    assert first.row_counts["measurement"] == 44053
    assert len(first.fingerprint) == 64
    with OmopDatabase.open(f"duckdb:///{eunomia_path()}") as db:
        assert db.describe() == first  # same CDM, same description, however it is named


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE condition_occurrence SET condition_start_date = condition_start_date + 1 "
        "WHERE condition_occurrence_id = (SELECT min(condition_occurrence_id) "
        "FROM condition_occurrence)",
        "UPDATE person SET year_of_birth = year_of_birth + 1 WHERE person_id = 6",
        # swap two values between rows: row counts and column sums stay the same
        "UPDATE drug_exposure SET drug_concept_id = CASE drug_exposure_id WHEN 1 THEN "
        "(SELECT drug_concept_id FROM drug_exposure WHERE drug_exposure_id = 2) ELSE "
        "(SELECT drug_concept_id FROM drug_exposure WHERE drug_exposure_id = 1) END "
        "WHERE drug_exposure_id IN (1, 2)",
        "DELETE FROM observation_period WHERE observation_period_id = 1",
    ],
)
def test_fingerprint_changes_with_any_clinical_row(tmp_path: Path, change: str) -> None:
    path = copy_cdm(tmp_path / "cdm.duckdb")
    with OmopDatabase.open(str(path)) as db:
        before = db.describe()
    with duckdb.connect(str(path)) as con:
        con.execute(change)
    with OmopDatabase.open(str(path)) as db:
        after = db.describe()
    assert after.fingerprint != before.fingerprint
    assert after.cdm_version == before.cdm_version


def test_unchanged_copy_has_the_same_fingerprint(tmp_path: Path) -> None:
    with OmopDatabase.open(str(eunomia_path())) as db:
        original = db.describe().fingerprint
    with OmopDatabase.open(str(copy_cdm(tmp_path / "copy.duckdb"))) as db:
        assert db.describe().fingerprint == original


def test_connection_is_read_only_and_file_untouched() -> None:
    path = eunomia_path()
    stamp = path.stat().st_mtime_ns
    with OmopDatabase.open(str(path)) as db:
        for sql in (
            "DROP TABLE person",
            "CREATE TABLE x (a INT)",
            "UPDATE person SET person_id = 0",
        ):
            with pytest.raises(DataError, match="read-only"):
                db.query(sql)
        assert db.query("SELECT count(*) AS n FROM person WHERE person_id = ?", [6]).num_rows == 1
        # nor can any query read files beside the CDM, or switch that back on
        with pytest.raises(DataError, match="disabled by config"):
            db.query("SELECT * FROM read_csv(?)", [str(path.parent.parent / "__init__.py")])
        with pytest.raises(DataError, match="Cannot enable external access"):
            db.query("SET enable_external_access = true")
    assert path.stat().st_mtime_ns == stamp


def test_bad_urls_and_schemas(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no OMOP CDM database at"):
        OmopDatabase.open(str(tmp_path / "nope.duckdb"))
    assert not (tmp_path / "nope.duckdb").exists()  # never created by opening
    with pytest.raises(ConfigurationError, match="duckdb:///path"):
        OmopDatabase.open("duckdb://host/cdm.duckdb")
    with pytest.raises(ConfigurationError, match="schema must be an SQL identifier"):
        OmopDatabase.open(str(eunomia_path()), schema='main"; DROP TABLE person; --')
    with pytest.raises(ConfigurationError, match="non-empty string"):
        OmopDatabase.open("")
    with pytest.raises(ConfigurationError, match="cannot open OMOP database") as info:
        OmopDatabase.open("nosuchdialect://user:secret@host/db")
    assert "secret" not in str(info.value)


def test_sqlalchemy_url(tmp_path: Path) -> None:
    """Any SQLAlchemy URL works for description (SQLite here; PostgreSQL in deployments)."""
    path = tmp_path / "cdm.sqlite"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE person (person_id INTEGER, year_of_birth INTEGER)")
        con.executemany("INSERT INTO person VALUES (?, ?)", [(1, 1950), (2, 1960)])
        con.execute("CREATE TABLE cdm_source (cdm_source_name TEXT, cdm_version TEXT)")
        con.execute("INSERT INTO cdm_source VALUES ('test', 'v5.4')")
    with OmopDatabase.open(f"sqlite:///{path}") as db:
        first = db.describe()
        assert db.query(
            "SELECT year_of_birth FROM person WHERE person_id = ?", [2]
        ).to_pylist() == [{"year_of_birth": 1960}]
    assert first.cdm_version == "v5.4"
    assert first.row_counts == {"person": 2, "cdm_source": 1}
    with sqlite3.connect(path) as con:
        con.execute("UPDATE person SET year_of_birth = 1961 WHERE person_id = 2")
    with OmopDatabase.open(f"sqlite:///{path}") as db:
        assert db.describe().fingerprint != first.fingerprint
