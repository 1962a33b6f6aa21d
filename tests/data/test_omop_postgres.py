"""The OMOP CDM read from PostgreSQL gives what the same CDM gives from DuckDB.

The real Eunomia CDM is loaded (once per module, psycopg COPY) into a fresh schema of the
scratch PostgreSQL database that ``BIOFED_TEST_POSTGRES_URL`` names (``scripts/with_postgres.sh``
starts one), with the types a PostgreSQL CDM has: lower-case names, dates as DATE, ids as
BIGINT, numeric fields as NUMERIC. Then the description, the study extraction (person by
person), the quality checks (clean and with planted errors) and the node registry's password
handling are compared with, or checked against, DuckDB reading the packaged file read-only.
Skipped without a PostgreSQL server.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.csv as pacsv
import pytest
import sqlalchemy as sa

from biofed.core import ConfigurationError, DataError
from biofed.data import ExtractedTable, OmopDatabase, QualityReport, extract, run_quality_checks
from biofed.datasets import eunomia_path, gi_bleed_study
from biofed.governance import DatasetRegistry

PG_URL = os.environ.get("BIOFED_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.skipif(PG_URL is None, reason="BIOFED_TEST_POSTGRES_URL is not set"),
    pytest.mark.slow,
]
TODAY = dt.date(2026, 12, 6)
HAEMOGLOBIN, G_PER_DL = 3000963, 8713
#: CDM fields that are NUMERIC in the OHDSI PostgreSQL DDL (Eunomia stores some as VARCHAR).
NUMERIC_FIELDS = frozenset(
    {
        "value_as_number",
        "range_low",
        "range_high",
        "quantity",
        "total_charge",
        "total_cost",
        "total_paid",
        "paid_by_payer",
        "paid_by_patient",
        "paid_patient_copay",
        "paid_patient_coinsurance",
        "paid_patient_deductible",
        "paid_by_primary",
        "paid_ingredient_cost",
        "paid_dispensing_fee",
        "amount_allowed",
        "amount_value",
        "numerator_value",
        "denominator_value",
    }
)
#: The group role whose members ``scripts/with_postgres.sh`` makes log in by password.
PASSWORD_GROUP = "biofed_password_auth"


def _pg_type(table: str, column: str, duck_type: str) -> tuple[str, str]:
    """(PostgreSQL type, DuckDB expression producing it) for one Eunomia column."""
    name = column.lower()
    quoted = f'"{column}"'
    if column.startswith("column"):  # a placeholder table (Eunomia's empty tables)
        return "TEXT", quoted
    if name in NUMERIC_FIELDS:
        return "NUMERIC", f"CAST({quoted} AS DOUBLE)"
    if (
        name.endswith("_id")
        and name != "vocabulary_id"
        and not name.endswith(("domain_id", "class_id", "relationship_id"))
    ):
        return "BIGINT", f"CAST({quoted} AS BIGINT)"
    if duck_type == "DATE":
        return "DATE", quoted
    if duck_type in ("BIGINT", "INTEGER"):
        return "BIGINT", quoted
    if duck_type == "DOUBLE":
        return "DOUBLE PRECISION", quoted
    assert duck_type == "VARCHAR", (table, column, duck_type)
    return "TEXT", quoted


def _load_eunomia(engine: sa.Engine, schema: str) -> dict[str, int]:
    """Copy every Eunomia table into ``schema``; returns the rows loaded per table."""
    loaded: dict[str, int] = {}
    with duckdb.connect(str(eunomia_path()), read_only=True) as duck:
        rows = duck.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE database_name = current_database() AND schema_name = 'main' "
            "ORDER BY table_name, column_index"
        ).fetchall()
        tables: dict[str, list[tuple[str, str]]] = {}
        for table, column, dtype in rows:
            tables.setdefault(str(table), []).append((str(column), str(dtype)))
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for table, columns in tables.items():
                typed = [(c.lower(), *_pg_type(table, c, t)) for c, t in columns]
                cur.execute(
                    f'CREATE TABLE "{schema}".{table.lower()} ('
                    + ", ".join(f"{name} {pgtype}" for name, pgtype, _ in typed)
                    + ")"
                )
                data = duck.sql(
                    f'SELECT {", ".join(expr for _, _, expr in typed)} FROM "{table}"'
                ).to_arrow_table()
                buffer = io.BytesIO()
                pacsv.write_csv(data, buffer, pacsv.WriteOptions(include_header=False))
                names = ", ".join(name for name, _, _ in typed)
                with cur.copy(
                    f'COPY "{schema}".{table.lower()} ({names}) FROM STDIN WITH (FORMAT csv)'
                ) as copy:
                    copy.write(buffer.getvalue())
                loaded[table.lower()] = data.num_rows
            raw.commit()
        finally:
            raw.close()
    return loaded


@pytest.fixture(scope="module")
def admin() -> Iterator[sa.Engine]:
    assert PG_URL is not None
    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_schema(admin: sa.Engine) -> Iterator[str]:
    """A fresh schema holding the whole Eunomia CDM (dropped at the end)."""
    schema = f"omop_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        loaded = _load_eunomia(admin, schema)
        assert loaded["person"] == 2694
        yield schema
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def duck() -> Iterator[OmopDatabase]:
    with OmopDatabase.open(str(eunomia_path())) as db:
        yield db


@pytest.fixture
def pg(pg_schema: str) -> Iterator[OmopDatabase]:
    assert PG_URL is not None
    with OmopDatabase.open(PG_URL, schema=pg_schema) as db:
        yield db


# -- (1) description and read-only connection ---------------------------------------------
def test_describe_matches_duckdb(pg: OmopDatabase, duck: OmopDatabase) -> None:
    assert pg.dialect == "postgresql"
    got, want = pg.describe(), duck.describe()
    assert got.cdm_version == want.cdm_version == "v5.3.1"
    assert dict(got.row_counts) == dict(want.row_counts)
    assert got.row_counts["person"] == 2694
    assert got.row_counts["drug_exposure"] == 67707
    # the source row: the same text (DuckDB and PostgreSQL render dates alike)
    assert dict(got.cdm_source) == dict(want.cdm_source)
    assert got.cdm_source["cdm_source_abbreviation"] == "Synthea"
    assert len(got.fingerprint) == 64
    assert pg.describe().fingerprint == got.fingerprint  # stable


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE biofed_write_probe (a INTEGER)",
        "INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id, "
        "ethnicity_concept_id) VALUES (999999999, 8507, 1970, 0, 0)",
        "DELETE FROM person",
        "UPDATE person SET year_of_birth = 1900",
        "DROP TABLE person",
    ],
)
def test_connection_is_read_only(
    pg: OmopDatabase, pg_schema: str, admin: sa.Engine, statement: str
) -> None:
    with pytest.raises(DataError, match="read-only"):
        pg.query(statement)
    # still usable, still on the CDM's schema, still read-only after the failed statement
    assert pg.query("SELECT COUNT(*) AS n FROM person").column(0)[0].as_py() == 2694
    with pytest.raises(DataError, match="read-only"):
        pg.query(statement)
    with admin.connect() as conn:
        count = conn.exec_driver_sql(f'SELECT COUNT(*) FROM "{pg_schema}".person').scalar()
    assert count == 2694


def test_failed_query_keeps_schema_and_read_only(pg: OmopDatabase) -> None:
    """A refused statement rolls the transaction back; the session settings survive it."""
    with pytest.raises(DataError, match="OMOP query failed"):
        pg.query("SELECT * FROM no_such_table")
    assert pg.query("SELECT COUNT(*) FROM person").column(0)[0].as_py() == 2694
    assert pg.query("SHOW transaction_read_only").column(0)[0].as_py() == "on"


def test_connection_is_not_left_in_a_transaction(pg: OmopDatabase, admin: sa.Engine) -> None:
    """A node keeps its CDM connection between jobs; it must not sit "idle in transaction"
    (holding back VACUUM, cut by idle_in_transaction_session_timeout)."""
    pid = pg.query("SELECT pg_backend_pid()").column(0)[0].as_py()
    extract(gi_bleed_study("binary"), pg)
    with admin.connect() as conn:
        state = conn.exec_driver_sql(
            "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).scalar()
    assert state == "idle"


# -- (2) extraction ------------------------------------------------------------------------
def _assert_same(got: ExtractedTable, want: ExtractedTable) -> None:
    assert len(want) > 100
    np.testing.assert_array_equal(got.ids, want.ids)
    assert list(got.columns) == list(want.columns)
    assert dict(got.kinds) == dict(want.kinds)
    for name, column in want.columns.items():
        if want.kinds[name] == "categorical":
            assert got.columns[name].tolist() == column.tolist(), name
        else:
            assert got.columns[name].dtype == np.float64
            np.testing.assert_array_equal(got.columns[name], column, err_msg=name)
    assert got.outcome_kind == want.outcome_kind
    assert set(got.targets) == set(want.targets)
    for key, target in want.targets.items():
        np.testing.assert_array_equal(got.targets[key], target, err_msg=key)
    np.testing.assert_array_equal(got.is_test, want.is_test)


@pytest.mark.parametrize("kind", ["binary", "time_to_event"])
def test_extract_matches_duckdb(pg: OmopDatabase, duck: OmopDatabase, kind: str) -> None:
    spec = gi_bleed_study(kind)
    got, want = extract(spec, pg), extract(spec, duck)
    _assert_same(got, want)
    if kind == "binary":
        assert 0 < want.targets["label"].sum() < len(want)
    else:
        assert 0 < want.targets["event"].sum() < len(want)
        assert (got.targets["time"] > 0).all()


def test_extract_from_url_with_schema_in_search_path(pg_schema: str, duck: OmopDatabase) -> None:
    """``extract`` given a URL opens it itself; a URL's ``options`` may set the schema."""
    assert PG_URL is not None
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={pg_schema}"})
    spec = gi_bleed_study("binary")
    got = extract(spec, url.render_as_string(hide_password=False))
    _assert_same(got, extract(spec, duck))


# -- (3) quality checks --------------------------------------------------------------------
def _summary(report: QualityReport) -> dict[str, tuple[bool, bool, int, int]]:
    return {c.key: (c.passed, c.fatal, c.violated, c.total) for c in report.checks}


def test_quality_checks_match_duckdb(pg: OmopDatabase, duck: OmopDatabase) -> None:
    got = run_quality_checks(pg, today=TODAY)
    want = run_quality_checks(duck, today=TODAY)
    assert _summary(got) == _summary(want)
    assert got.passed == want.passed
    assert [c.key for c in got.failures] == [c.key for c in want.failures]
    assert len(got.checks) > 50


#: Planted in both copies ({s}: the schema prefix): 2 deaths 400 days before birth, 5 persons
#: without a gender, haemoglobin values in g/dL (Eunomia stores none) with one 1e11 too big.
_DEATH_DDL = (
    "CREATE TABLE {s}death (person_id BIGINT, death_date DATE, death_datetime TIMESTAMP, "
    "death_type_concept_id BIGINT, cause_concept_id BIGINT, cause_source_value TEXT, "
    "cause_source_concept_id BIGINT)"
)
_PLANT = (
    "INSERT INTO {s}death (person_id, death_date, death_type_concept_id) SELECT person_id, "
    "CAST(birth_datetime AS DATE) - 400, 0 FROM {s}person ORDER BY person_id DESC LIMIT 2",
    "UPDATE {s}person SET gender_concept_id = NULL WHERE person_id IN "
    "(SELECT person_id FROM {s}person ORDER BY person_id LIMIT 5)",
    "UPDATE {s}measurement SET value_as_number = 11.0 + MOD(person_id, 50) / 10.0, "
    f"unit_concept_id = {G_PER_DL} WHERE measurement_concept_id = {HAEMOGLOBIN}",
    "UPDATE {s}measurement SET value_as_number = value_as_number * 1e11 WHERE measurement_id = "
    f"(SELECT MIN(measurement_id) FROM {{s}}measurement WHERE measurement_concept_id = "
    f"{HAEMOGLOBIN})",
)


def _plant_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE death")
        con.execute(_DEATH_DDL.format(s=""))
        con.execute("ALTER TABLE measurement ALTER COLUMN value_as_number SET DATA TYPE DOUBLE")
        for statement in _PLANT:
            con.execute(statement.format(s=""))


def test_planted_errors_counted_on_postgres(
    pg_schema: str, admin: sa.Engine, tmp_path: Path
) -> None:
    """Errors planted through a separate, writable connection in a PostgreSQL copy (views
    over the loaded CDM, copies of the tables planted in) are counted exactly as in a DuckDB
    copy with the same errors."""
    assert PG_URL is not None
    planted = f"{pg_schema}_planted"
    copied = ("person", "measurement")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{planted}"')
        try:
            names = conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (pg_schema,),
            ).scalars()
            for name in names:
                if name in copied:
                    conn.exec_driver_sql(
                        f'CREATE TABLE "{planted}".{name} AS SELECT * FROM "{pg_schema}".{name}'
                    )
                elif name != "death":
                    conn.exec_driver_sql(
                        f'CREATE VIEW "{planted}".{name} AS SELECT * FROM "{pg_schema}".{name}'
                    )
            conn.exec_driver_sql(_DEATH_DDL.format(s=f'"{planted}".'))
            for statement in _PLANT:
                conn.exec_driver_sql(statement.format(s=f'"{planted}".'))
            with OmopDatabase.open(PG_URL, schema=planted) as db:
                got = run_quality_checks(db, today=TODAY)
        finally:
            conn.exec_driver_sql(f'DROP SCHEMA "{planted}" CASCADE')
    copy = tmp_path / "planted.duckdb"
    shutil.copyfile(eunomia_path(), copy)
    _plant_duckdb(copy)
    with OmopDatabase.open(str(copy)) as db:
        want = run_quality_checks(db, today=TODAY)
    death = got.get("plausibleAfterBirth:death.death_date")
    assert (death.violated, death.total, death.passed, death.fatal) == (2, 2, False, True)
    assert death in got.fatal_failures
    gender = got.get("isRequired:person.gender_concept_id")
    assert (gender.violated, gender.total, gender.passed) == (5, 2694, False)
    magnitude = got.get("plausibleMagnitude:measurement.value_as_number")
    assert (magnitude.violated, magnitude.passed) == (1, False)
    assert magnitude.total > 100
    high = got.get(f"plausibleValueHigh:measurement.value_as_number[unit={G_PER_DL}]@{HAEMOGLOBIN}")
    assert (high.violated, high.passed) == (1, False)
    assert _summary(got) == _summary(want)


# -- (4) the node registry -----------------------------------------------------------------
@pytest.fixture
def password_role(admin: sa.Engine, pg_schema: str) -> Iterator[tuple[str, str, bool]]:
    """A login role with a password and read access to the CDM schema: (name, password,
    whether the server checks its password)."""
    name = f"biofed_reader_{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(16)
    with admin.connect() as conn:
        enforced = (
            conn.exec_driver_sql(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (PASSWORD_GROUP,)
            ).first()
            is not None
        )
        assert password.replace("-", "").replace("_", "").isalnum()  # safe in a literal
        conn.exec_driver_sql(  # CREATE ROLE takes no bound parameters
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"
            + (f" IN ROLE {PASSWORD_GROUP}" if enforced else "")
        )
        conn.exec_driver_sql(f'GRANT USAGE ON SCHEMA "{pg_schema}" TO {name}')
        conn.exec_driver_sql(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{pg_schema}" TO {name}')
    try:
        yield name, password, enforced
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {name}")
            conn.exec_driver_sql(f"DROP ROLE {name}")


def test_registry_reads_password_from_environment(
    tmp_path: Path,
    pg_schema: str,
    duck: OmopDatabase,
    password_role: tuple[str, str, bool],
) -> None:
    assert PG_URL is not None
    role, password, enforced = password_role
    url = sa.make_url(PG_URL).set(username=role, password=None)
    location = url.render_as_string(hide_password=False)
    registry = DatasetRegistry(tmp_path / "datasets.json", environ={"CDM_PASSWORD": password})
    entry = registry.add_omop("cdm", location, password_env="CDM_PASSWORD", schema=pg_schema)
    assert entry.kind == "omop"
    assert entry.password_env == "CDM_PASSWORD"
    assert entry.schema == pg_schema
    assert entry.num_rows == 2694
    assert entry.cdm_version == "v5.3.1"
    assert dict(entry.row_counts) == dict(duck.describe().row_counts)
    assert entry.sha256 == duck_fingerprint_on_pg(pg_schema)
    stored = (tmp_path / "datasets.json").read_text()
    assert password not in stored
    with registry.open("cdm") as db:
        got = extract(gi_bleed_study("binary"), db)
    _assert_same(got, extract(gi_bleed_study("binary"), duck))

    # a URL with the password in it is refused, naming the fix, and never echoed
    with_password = url.set(password=password).render_as_string(hide_password=False)
    with pytest.raises(ConfigurationError, match="password") as refused:
        registry.add_omop("cdm2", with_password, schema=pg_schema)
    assert password not in str(refused.value)
    with pytest.raises(ConfigurationError, match="password"):
        registry.add_omop("cdm3", f"{location}?password={password}", schema=pg_schema)

    # the variable unset: a clear error naming it
    unset = DatasetRegistry(tmp_path / "datasets.json", environ={})
    with pytest.raises(ConfigurationError, match="CDM_PASSWORD"):
        unset.open("cdm")
    if enforced:  # the server checks this role's password (scripts/with_postgres.sh)
        wrong = DatasetRegistry(tmp_path / "datasets.json", environ={"CDM_PASSWORD": "nope"})
        with pytest.raises(ConfigurationError) as bad:
            wrong.open("cdm")
        assert "nope" not in str(bad.value)
        assert password not in str(bad.value)


def duck_fingerprint_on_pg(schema: str) -> str:
    """The fingerprint of the loaded CDM, read as the admin user."""
    assert PG_URL is not None
    with OmopDatabase.open(PG_URL, schema=schema) as db:
        return db.describe().fingerprint


def test_cli_adds_and_checks_a_postgres_cdm(
    tmp_path: Path, pg_schema: str, duck: OmopDatabase, password_role: tuple[str, str, bool]
) -> None:
    """``biofed node dataset add --omop URL --password-env --schema`` and ``check``."""
    from typer.testing import CliRunner

    from biofed.cli import app

    assert PG_URL is not None
    role, password, _ = password_role
    location = sa.make_url(PG_URL).set(username=role).render_as_string(hide_password=False)
    runner = CliRunner(env={"COLUMNS": "100", "CDM_PASSWORD": password})
    node = ["--node-dir", str(tmp_path / "node")]
    omop = ["--omop", location, "--password-env", "CDM_PASSWORD", "--schema", pg_schema]
    added = runner.invoke(app, ["node", "dataset", "add", "cdm", *omop, *node])
    assert added.exit_code == 0, added.output
    assert "OMOP CDM v5.3.1, 2694 persons" in added.output
    assert password not in added.output
    listed = runner.invoke(app, ["node", "dataset", "list", *node, "--format", "json"])
    assert json.loads(listed.stdout)[0]["state"] == "ok"
    checked = runner.invoke(app, ["node", "dataset", "check", "cdm", *node, "--format", "json"])
    body = json.loads(checked.stdout)
    want = run_quality_checks(duck, today=dt.date.today())
    got = {
        f"{c['name']}:{c['table']}.{c['field']}": (c["passed"], c["violated"], c["total"])
        for c in body["quality"]["checks"]
        if c.get("concept_id") is None
    }
    assert got == {
        f"{c.name}:{c.table}.{c.field}": (c.passed, c.violated, c.total)
        for c in want.checks
        if c.concept_id is None
    }
    assert checked.exit_code == (1 if want.fatal_failures else 0), checked.output
    assert password not in (tmp_path / "node").joinpath("datasets.json").read_text()
