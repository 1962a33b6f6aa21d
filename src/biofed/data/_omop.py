"""Read-only access to an OMOP CDM database: DuckDB natively, anything else via SQLAlchemy.

A site's CDM is opened read-only and described by its CDM version, its ``cdm_source`` row,
the row counts of the CDM tables present and a fingerprint that changes when any clinical
row changes. The fingerprint is cheap: one aggregate per table computed inside the database
(the sum of a per-row hash, so it is independent of row order and counts duplicates).

Security notes: the CDM is the site's most sensitive asset and the URL comes from the site's
own config. The connection is read-only (DuckDB ``read_only=True``; PostgreSQL
``default_transaction_read_only``), so no SQL biofed runs can change the CDM; a DuckDB
connection also has external access (files, network, extensions) switched off, for good,
so a query cannot read anything beyond the CDM (DuckDB's "Securing DuckDB" guide). Other
SQLAlchemy dialects rely on the database user's grants. Table names in generated SQL come
only from the fixed OMOP table list below, never from the database or a spec; a schema name
is a checked SQL identifier. Values travel as bound parameters (OWASP SQL Injection
Prevention Cheat Sheet, option 1).
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

import pyarrow as pa

from biofed.core import ConfigurationError, DataError

#: Clinical (person-level) CDM tables: counted and content-hashed by the fingerprint.
CLINICAL_TABLES = (
    "person",
    "observation_period",
    "visit_occurrence",
    "visit_detail",
    "condition_occurrence",
    "drug_exposure",
    "procedure_occurrence",
    "device_exposure",
    "measurement",
    "observation",
    "death",
    "note",
    "specimen",
    "payer_plan_period",
    "condition_era",
    "drug_era",
    "dose_era",
    "cost",
)
#: Vocabulary and metadata tables: counted only (their version is in ``cdm_source``).
VOCABULARY_TABLES = (
    "concept",
    "concept_ancestor",
    "concept_relationship",
    "concept_synonym",
    "vocabulary",
    "domain",
    "concept_class",
    "relationship",
    "drug_strength",
    "cdm_source",
    "location",
    "care_site",
    "provider",
)
_SCHEMA = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_DUCKDB_SUFFIXES = (".duckdb", ".db", ".ddb")


@dataclass(frozen=True, slots=True, kw_only=True)
class OmopDescription:
    """What a site may record about its CDM (no record-level data).

    Attributes
    ----------
    cdm_version:
        ``cdm_source.cdm_version`` (e.g. ``"v5.4"``), or ``"unknown"``.
    cdm_source:
        The ``cdm_source`` row as strings (empty when the table is empty or missing).
    row_counts:
        Rows in every OMOP table present, by table name.
    fingerprint:
        SHA-256 hex over the version, ``cdm_source``, row counts and a per-table content
        checksum of every clinical table: any added, removed or changed clinical row changes
        it.
    """

    cdm_version: str
    cdm_source: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    row_counts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    fingerprint: str


def _duckdb_path(url: str) -> str | None:
    """The file behind a DuckDB URL or plain path, or None for another SQLAlchemy URL."""
    if url.startswith("duckdb:///"):
        return url[len("duckdb:///") :]
    if url.startswith("duckdb://"):
        raise ConfigurationError(f"DuckDB URLs are duckdb:///path/to/cdm.duckdb, got {url!r}")
    if "://" in url:
        return None
    return url


class OmopDatabase:
    """An open, read-only connection to an OMOP CDM (a context manager).

    Use :meth:`open`; run SQL with :meth:`query` (bound parameters only, ``?`` placeholders);
    :meth:`describe` gives version, counts and fingerprint.
    """

    def __init__(
        self,
        *,
        url: str,
        dialect: str,
        duckdb_conn: Any = None,
        sa_conn: Any = None,
        schema: str | None = None,
    ) -> None:
        self.url = url
        self.schema = schema
        self.dialect = dialect
        self._duck = duckdb_conn
        self._sa = sa_conn
        self._tables: frozenset[str] | None = None
        self._columns: dict[str, frozenset[str]] = {}

    @classmethod
    def open(cls, url: str, *, schema: str | None = None) -> OmopDatabase:
        """Open a CDM read-only.

        Parameters
        ----------
        url:
            A DuckDB file path (``*.duckdb``, ``*.db``), ``duckdb:///path``, or any
            SQLAlchemy URL (``postgresql://user@host/db``…).
        schema:
            The schema holding the CDM tables (default: the connection's default).

        Raises
        ------
        ConfigurationError
            If the URL or schema is malformed, or the database cannot be opened.
        """
        if not isinstance(url, str) or not url:
            raise ConfigurationError(f"OMOP URL must be a non-empty string, got {url!r}")
        if schema is not None and not _SCHEMA.fullmatch(schema):
            raise ConfigurationError(f"OMOP schema must be an SQL identifier, got {schema!r}")
        path = _duckdb_path(url)
        if path is not None:
            return cls._open_duckdb(url, path, schema)
        return cls._open_sqlalchemy(url, schema)

    @classmethod
    def _open_duckdb(cls, url: str, path: str, schema: str | None) -> OmopDatabase:
        import duckdb

        p = Path(path)
        if not p.is_file():
            raise ConfigurationError(f"no OMOP CDM database at {path!r}")
        try:
            conn = duckdb.connect(str(p), read_only=True)
            conn.execute("SET enable_progress_bar = false")
            # No file or network reads, and no SET turns them back on. DuckDB applies this to
            # every connection of this process to the same file (they share one instance).
            conn.execute("SET enable_external_access = false")
            if schema is not None:
                conn.execute(f'SET search_path = "{schema}"')  # checked identifier
        except duckdb.Error as exc:
            raise ConfigurationError(f"cannot open {path!r} as DuckDB: {_line(exc)}") from None
        return cls(url=url, dialect="duckdb", duckdb_conn=conn, schema=schema)

    @classmethod
    def _open_sqlalchemy(cls, url: str, schema: str | None) -> OmopDatabase:
        import sqlalchemy as sa

        if url.startswith("sqlite"):
            # SQLite creates a missing file (or an in-memory database) on connect: a site would
            # write an empty file where it meant to read a CDM.
            try:
                database = sa.engine.make_url(url).database or ""
            except (sa.exc.ArgumentError, ValueError):
                database = ""
            if database in ("", ":memory:") or not Path(database).is_file():
                raise ConfigurationError(f"no OMOP CDM database at {_safe_url(url)}")
        try:
            engine = sa.create_engine(url)
            conn = engine.connect()
        except (sa.exc.SQLAlchemyError, ImportError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot open OMOP database {_safe_url(url)}: {_line(exc).replace(url, '…')}"
            ) from None
        dialect = engine.dialect.name
        try:
            if dialect == "postgresql":
                # SQLAlchemy has already begun a transaction, which these session settings
                # do not reach (a SET inside a transaction is also undone by a rollback):
                # commit them, so every later transaction starts read-only and on the schema.
                conn.exec_driver_sql("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                if schema is not None:
                    conn.exec_driver_sql(f'SET search_path TO "{schema}"')
                conn.commit()
            elif schema is not None:
                conn.close()
                raise ConfigurationError(
                    f"schema= is supported for DuckDB and PostgreSQL, not {dialect}"
                )
        except sa.exc.SQLAlchemyError as exc:
            conn.close()
            raise ConfigurationError(f"cannot set up OMOP connection: {_line(exc)}") from None
        return cls(url=_safe_url(url), dialect=dialect, sa_conn=conn, schema=schema)

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> OmopDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._duck is not None:
            self._duck.close()
            self._duck = None
        if self._sa is not None:
            engine = self._sa.engine
            self._sa.close()
            engine.dispose()
            self._sa = None

    # -- queries -------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[object] = ()) -> pa.Table:
        """Run one SQL statement with ``?`` placeholders bound to ``params``; an Arrow table.

        Raises
        ------
        DataError
            If the database refuses the statement (e.g. a missing CDM table).
        """
        if self._duck is not None:
            import duckdb

            try:
                result = self._duck.execute(sql, list(params))
                if result.description is None:  # a statement with no result (e.g. SET)
                    return pa.table({})
                with warnings.catch_warnings():
                    # DuckDB ≥ 2 warns that Arrow output from execute() copies the rows; for
                    # study-sized results that copy is cheaper than con.sql()'s extra binding.
                    warnings.simplefilter("ignore", UserWarning)
                    fetch = getattr(result, "to_arrow_table", None) or result.fetch_arrow_table
                    table: pa.Table = fetch()
                return table
            except duckdb.Error as exc:
                raise DataError(f"OMOP query failed: {_line(exc)}") from None
        if self._sa is None:
            raise DataError("OMOP database is closed")
        import sqlalchemy as sa

        names = [f"p{i}" for i in range(len(params))]
        parts = sql.split("?")
        if len(parts) != len(params) + 1:
            raise DataError(
                f"OMOP query has {len(parts) - 1} placeholders for {len(params)} values"
            )
        text = parts[0] + "".join(f":{n}{rest}" for n, rest in zip(names, parts[1:], strict=True))
        try:
            result = self._sa.execute(sa.text(text), dict(zip(names, params, strict=True)))
            columns = list(result.keys()) if result.returns_rows else []
            rows = result.fetchall() if result.returns_rows else []
        except sa.exc.SQLAlchemyError as exc:
            self._sa.rollback()
            raise DataError(f"OMOP query failed: {_line(exc)}") from None
        # End the (read-only) transaction: a node keeps its connection open between jobs, and
        # a session left "idle in transaction" holds back the database's VACUUM and is cut
        # by idle_in_transaction_session_timeout.
        self._sa.rollback()
        if not columns:  # a statement with no result (e.g. SET), as DuckDB
            return pa.table({})
        # by position: PostgreSQL names unaliased columns by their function ("sum", "sum"…)
        arrays = [pa.array([r[i] for r in rows]) for i in range(len(columns))]
        return pa.Table.from_arrays(arrays, names=columns)

    def tables(self) -> frozenset[str]:
        """Lower-cased names of the OMOP tables present (from the fixed OMOP list)."""
        if self._tables is None:
            if self._duck is not None:
                got = self.query(
                    "SELECT table_name FROM duckdb_tables() WHERE schema_name = current_schema() "
                    "UNION ALL SELECT view_name FROM duckdb_views() "
                    "WHERE schema_name = current_schema()"
                )
                names = {str(n).lower() for n in got.column(0).to_pylist()}
            else:
                import sqlalchemy as sa

                inspector = sa.inspect(self._sa)
                names = {n.lower() for n in inspector.get_table_names(schema=self.schema)}
                names |= {n.lower() for n in inspector.get_view_names(schema=self.schema)}
            known = set(CLINICAL_TABLES) | set(VOCABULARY_TABLES)
            self._tables = frozenset(names & known)
        return self._tables

    def columns(self, table: str) -> frozenset[str]:
        """Lower-cased column names of OMOP table ``table`` (empty if it is absent)."""
        if table not in self._columns:
            names: frozenset[str] = frozenset()
            if table in self.tables():
                got = self.query(f"SELECT * FROM {table} WHERE 1 = 0")  # from the fixed list
                names = frozenset(n.lower() for n in got.column_names)
            self._columns[table] = names
        return self._columns[table]

    def require_tables(self, names: Sequence[str]) -> None:
        """Raise DataError naming the first of ``names`` (OMOP tables) that is missing."""
        missing = [n for n in names if n not in self.tables()]
        if missing:
            raise DataError(f"the OMOP CDM has no {', '.join(missing)} table(s)")

    # -- description ---------------------------------------------------------------------
    def describe(self) -> OmopDescription:
        """Version, ``cdm_source``, row counts and content fingerprint of the CDM."""
        tables = self.tables()
        source: dict[str, str] = {}
        if "cdm_source" in tables:
            got = self.query("SELECT * FROM cdm_source")
            if got.num_rows:
                row = got.slice(0, 1).to_pylist()[0]
                source = {str(k).lower(): "" if v is None else str(v) for k, v in row.items()}
        version = source.get("cdm_version") or "unknown"
        counts: dict[str, int] = {}
        checksums: dict[str, str] = {}
        for name in (*CLINICAL_TABLES, *VOCABULARY_TABLES):
            if name not in tables:
                continue
            if name in CLINICAL_TABLES:
                count, checksum = self._checksum(name)
                checksums[name] = checksum
            else:
                count = int(self.query(f"SELECT COUNT(*) FROM {name}").column(0)[0].as_py())
            counts[name] = count
        payload = json.dumps(
            {"version": version, "cdm_source": source, "counts": counts, "checksums": checksums},
            sort_keys=True,
            separators=(",", ":"),
        )
        return OmopDescription(
            cdm_version=version,
            cdm_source=MappingProxyType(source),
            row_counts=MappingProxyType(counts),
            fingerprint=hashlib.sha256(payload.encode()).hexdigest(),
        )

    def _checksum(self, table: str) -> tuple[int, str]:
        """(rows, order-independent content checksum) of one clinical table."""
        if self.dialect == "duckdb":
            # DuckDB's row hash: ~1 µs a row (md5 of the row's text is 60× slower). It may
            # change between DuckDB releases; the registry then flags a change once.
            got = self.query(
                f"SELECT COUNT(*), CAST(COALESCE(SUM(hash(t)), 0) AS VARCHAR) FROM {table} AS t"
            )
            count, total = got.to_pylist()[0].values()
            return int(count), str(total)
        if self.dialect == "postgresql":
            got = self.query(
                f"SELECT COUNT(*), COALESCE(SUM(('x' || SUBSTR(MD5(t::text), 1, 15))::bit(60)"
                f"::bigint::numeric), 0)::text FROM {table} AS t"
            )
            count, total = got.to_pylist()[0].values()
            return int(count), str(total)
        # Any other dialect: stream the rows and hash them here (slower, still order-free).
        got = self.query(f"SELECT * FROM {table}")
        total = 0
        for row in got.to_pylist():
            text = json.dumps(list(row.values()), default=str)
            total += int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        return got.num_rows, str(total)


def _safe_url(url: str) -> str:
    """``url`` with any password hidden (for error messages and logs)."""
    import sqlalchemy as sa

    try:
        return str(sa.engine.make_url(url).render_as_string(hide_password=True))
    except (sa.exc.ArgumentError, ValueError):
        return "(unparseable URL)"


def _line(exc: BaseException) -> str:
    """The first line of an exception's message (database errors can span many)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
