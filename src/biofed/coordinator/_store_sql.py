"""The SQL state store (SQLAlchemy Core): SQLite on one machine, PostgreSQL by URL.

Tables (created if missing)::

    runs(run_id PK, spec, owner, status, created_at, updated_at, completed_rounds,
         last_event_seq, error, attempts)
    rounds(run_id FK, round, record JSON, completed_at)              PK (run_id, round)
    events(run_id FK, seq, time, round, kind, message, node_id, data JSON)  PK (run_id, seq)
    nodes(node_id PK, status, last_seen, properties JSON)
    checkpoints(run_id FK, round, path, sha256, nbytes)              PK (run_id, round)
    biofed_schema(version)                                           one row

Opening checks the store before anything is served: SQLite's ``PRAGMA integrity_check``
must pass and the schema version must be one this code knows (a database from before the
version table is upgraded in place); a damaged or foreign database is refused with one line
(:class:`~biofed.core.ConfigurationError`), so a coordinator never starts half-alive.

Checkpoint files live under ``checkpoint_dir`` (see :mod:`biofed.coordinator._checkpoint`);
the ``checkpoints`` table says which file holds a run's latest round and what it hashes to.

Durability: a checkpoint file is fsynced before the transaction that references it commits,
and that one transaction writes the round row, ``completed_rounds``, the checkpoint row and
the round's ``round_completed`` event.
SQLite runs in WAL mode with ``synchronous=FULL`` (a commit survives power loss, not only a
killed process) and with real ``BEGIN`` / ``BEGIN IMMEDIATE`` transactions instead of the
sqlite3 module's implicit ones. Writes that depend on what they read are guarded in SQL as
well (``UPDATE … WHERE completed_rounds = :previous``), so two processes sharing a database
cannot both complete the same round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from biofed.coordinator._checkpoint import (
    CheckpointFile,
    prune_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from biofed.coordinator._records import RunEvent
from biofed.coordinator._serialize import (
    event_data_from_json,
    event_data_to_json,
    round_record_from_json,
    round_record_to_json,
)
from biofed.coordinator._store import (
    CHECKPOINTS_KEPT,
    URL_EXAMPLE,
    Checkpoint,
    EventRow,
    NodeRow,
    RoundRow,
    RunRow,
    RunStatus,
    StateStore,
    redact_url,
)
from biofed.core import ConfigurationError, PayloadError, ProtocolError

METADATA = sa.MetaData()

_ID = sa.String(128)

RUNS = sa.Table(
    "runs",
    METADATA,
    sa.Column("run_id", _ID, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),  # "finished_with_failures": 22
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("completed_rounds", sa.Integer, nullable=False),
    sa.Column("last_event_seq", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_runs_created_at", "created_at", "run_id"),
)

ROUNDS = sa.Table(
    "rounds",
    METADATA,
    sa.Column("run_id", _ID, sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("record", sa.Text, nullable=False),
    sa.Column("completed_at", sa.Double, nullable=False),
)

EVENTS = sa.Table(
    "events",
    METADATA,
    sa.Column("run_id", _ID, sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("time", sa.Double, nullable=False),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("node_id", _ID, nullable=True),
    sa.Column("data", sa.Text, nullable=True),  # the event's figures (schema 3), or NULL
)

NODES = sa.Table(
    "nodes",
    METADATA,
    sa.Column("node_id", _ID, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_seen", sa.Double, nullable=False),
    sa.Column("properties", sa.Text, nullable=False),
)

CHECKPOINTS = sa.Table(
    "checkpoints",
    METADATA,
    sa.Column("run_id", _ID, sa.ForeignKey("runs.run_id"), primary_key=True),
    sa.Column("round", sa.Integer, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("nbytes", sa.BigInteger, nullable=False),
)

SCHEMA = sa.Table(
    "biofed_schema",
    METADATA,
    sa.Column("version", sa.Integer, nullable=False),
)

#: The schema this code writes. 1: the tables before ``biofed_schema`` existed;
#: 2: ``runs.attempts``, ``runs.status`` up to 32 characters, and the version table.
#: Columns that older code ignores and may leave NULL are added in place without a new
#: version (a version marks what older code cannot read): ``events.data``, an event's figures
#: as numbers (a site's privacy spend; older rows have none and keep their text).
SCHEMA_VERSION = 2

_WRITE = "biofed_write"
_NO_DATA: Mapping[str, float] = MappingProxyType({})


def _parse_url(url: str) -> sa.URL:
    try:
        return sa.make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigurationError(
            f"malformed state store URL {redact_url(url)!r}; {URL_EXAMPLE}"
        ) from None


def sqlite_database_path(url: str) -> Path | None:
    """The database file of a SQLite URL, ``None`` for any other database.

    Raises
    ------
    ConfigurationError
        If ``url`` is malformed or names an in-memory SQLite database.
    """
    parsed = _parse_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ConfigurationError(
            f"state store URL {url!r} names no SQLite file; use 'memory://' for an in-memory "
            f"store or a file ({URL_EXAMPLE})"
        )
    return Path(database)


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Driver-level autocommit: SQLAlchemy's "begin" hook below issues BEGIN itself, so a
    # transaction spans its reads as well as its writes (the sqlite3 module would start one
    # only at the first write).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # A writer takes the write lock up front, so it never fails to upgrade a read lock.
    immediate = conn.get_execution_options().get(_WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class SqlStateStore(StateStore):
    """A :class:`~biofed.coordinator.StateStore` in a SQL database, checkpoints in files.

    Parameters
    ----------
    url:
        A SQLAlchemy URL: ``"sqlite:///path/state.db"`` (parent folders are created) or
        ``"postgresql+psycopg://user@host/db"`` (needs the ``psycopg`` package).
    checkpoint_dir:
        Folder for checkpoint files (created if missing). Keep it on durable storage next
        to the database: the database records each file's digest, not its content.
    clock:
        Wall clock in epoch seconds.

    Raises
    ------
    ConfigurationError
        A malformed URL, an unknown database or a missing driver, or a database that cannot
        be opened.
    """

    def __init__(
        self,
        url: str,
        checkpoint_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        parsed = _parse_url(url)
        database = sqlite_database_path(url)
        options: dict[str, Any] = {}
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            options["connect_args"] = {"timeout": 30.0}
        else:
            options["pool_pre_ping"] = True
        try:
            self._engine = sa.create_engine(parsed, **options)
        except (NoSuchModuleError, ImportError) as exc:
            raise ConfigurationError(
                f"cannot open state store {parsed.render_as_string(hide_password=True)!r}: "
                f"{exc}; install the database driver (e.g. 'pip install psycopg[binary]' for "
                f"PostgreSQL) or use another URL ({URL_EXAMPLE})"
            ) from None
        if database is not None:
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        self._checkpoint_dir = Path(checkpoint_dir)
        shown = parsed.render_as_string(hide_password=True)
        try:
            self._checkpoint_dir.mkdir(parents=True, exist_ok=True)
            if database is not None:
                _check_sqlite_integrity(self._engine, shown)
            _prepare_schema(self._engine, shown)
        except ConfigurationError:
            self._engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as exc:
            self._engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise ConfigurationError(
                f"cannot open state store {shown!r}: {reason} (a damaged or foreign "
                "database: restore it from a backup)"
            ) from None

    @property
    def checkpoint_dir(self) -> Path:
        """Where the checkpoint files are."""
        return self._checkpoint_dir

    @contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sa.Connection]:
        with self._engine.connect() as conn:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn

    # Runs --------------------------------------------------------------------------------
    def _insert_run(self, row: RunRow) -> None:
        try:
            with self._transaction(write=True) as conn:
                conn.execute(
                    RUNS.insert().values(
                        run_id=row.run_id,
                        spec=row.spec,
                        owner=row.owner,
                        status=row.status.value,
                        created_at=row.created_at,
                        updated_at=row.updated_at,
                        completed_rounds=row.completed_rounds,
                        last_event_seq=0,
                        error=row.error,
                    )
                )
        except IntegrityError:
            raise ConfigurationError(f"run {row.run_id!r} already exists") from None

    @staticmethod
    def _run_row(row: sa.Row[Any]) -> RunRow:
        return RunRow(
            run_id=row.run_id,
            spec=row.spec,
            owner=row.owner,
            status=RunStatus(row.status),
            created_at=float(row.created_at),
            updated_at=float(row.updated_at),
            completed_rounds=int(row.completed_rounds),
            error=row.error,
            attempts=int(row.attempts),
        )

    def _get_run(self, run_id: str) -> RunRow | None:
        with self._transaction() as conn:
            row = conn.execute(sa.select(RUNS).where(RUNS.c.run_id == run_id)).first()
        return None if row is None else self._run_row(row)

    def _list_runs(self, statuses: frozenset[RunStatus] | None) -> list[RunRow]:
        query = sa.select(RUNS).order_by(RUNS.c.created_at, RUNS.c.run_id)
        if statuses is not None:
            query = query.where(RUNS.c.status.in_(sorted(s.value for s in statuses)))
        with self._transaction() as conn:
            return [self._run_row(r) for r in conn.execute(query)]

    def _update_run_status(
        self, run_id: str, status: RunStatus, error: str | None, now: float
    ) -> None:
        terminal = [s.value for s in RunStatus if s.is_terminal]
        with self._transaction(write=True) as conn:
            result = conn.execute(
                RUNS.update()
                .where(RUNS.c.run_id == run_id, RUNS.c.status.not_in(terminal))
                .values(status=status.value, error=error, updated_at=now)
            )
            if result.rowcount != 1:
                raise ProtocolError(f"run {run_id!r} is unknown or already in a final status")

    def _start_attempt(self, run_id: str, now: float) -> int:
        terminal = [s.value for s in RunStatus if s.is_terminal]
        with self._transaction(write=True) as conn:
            result = conn.execute(
                RUNS.update()
                .where(RUNS.c.run_id == run_id, RUNS.c.status.not_in(terminal))
                .values(attempts=RUNS.c.attempts + 1, updated_at=now)
            )
            if result.rowcount != 1:
                raise ProtocolError(f"run {run_id!r} is unknown or already in a final status")
            return int(
                conn.execute(sa.select(RUNS.c.attempts).where(RUNS.c.run_id == run_id)).scalar_one()
            )

    # Rounds and checkpoints --------------------------------------------------------------
    def _complete_round(
        self, row: RoundRow, checkpoint: Checkpoint, event: RunEvent | None
    ) -> None:
        # 1. The file, durably, before anything points to it. A crash after this leaves an
        #    unreferenced file that the retried round overwrites.
        file = write_checkpoint(self._checkpoint_dir, checkpoint)
        terminal = [s.value for s in RunStatus if s.is_terminal]
        keep_from = row.round - CHECKPOINTS_KEPT + 1
        # 2. One transaction: completed_rounds, the round row, the checkpoint row, the event.
        with self._transaction(write=True) as conn:
            result = conn.execute(
                RUNS.update()
                .where(
                    RUNS.c.run_id == row.run_id,
                    RUNS.c.completed_rounds == row.round - 1,
                    RUNS.c.status.not_in(terminal),
                )
                .values(completed_rounds=row.round, updated_at=row.completed_at, attempts=0)
            )
            if result.rowcount != 1:
                raise ProtocolError(
                    f"run {row.run_id!r} changed while round {row.round} was being stored "
                    "(another process completed it, or the run ended)"
                )
            conn.execute(
                ROUNDS.insert().values(
                    run_id=row.run_id,
                    round=row.round,
                    record=round_record_to_json(row.record),
                    completed_at=row.completed_at,
                )
            )
            conn.execute(
                CHECKPOINTS.delete().where(
                    CHECKPOINTS.c.run_id == row.run_id, CHECKPOINTS.c.round < keep_from
                )
            )
            conn.execute(
                CHECKPOINTS.insert().values(
                    run_id=file.run_id,
                    round=file.round,
                    path=file.path,
                    sha256=file.sha256,
                    nbytes=file.nbytes,
                )
            )
            if event is not None:
                _insert_event(
                    conn,
                    row.run_id,
                    event.round,
                    event.kind,
                    event.message,
                    event.node_id,
                    row.completed_at,
                    event.data,
                )
        # 3. After the commit: older files are no longer referenced.
        prune_checkpoints(self._checkpoint_dir, row.run_id, keep_from=keep_from)

    def _rounds(self, run_id: str) -> list[RoundRow]:
        query = sa.select(ROUNDS).where(ROUNDS.c.run_id == run_id).order_by(ROUNDS.c.round)
        with self._transaction() as conn:
            rows = list(conn.execute(query))
        out = []
        for r in rows:
            record = round_record_from_json(r.record)
            if record.round != r.round:
                raise PayloadError(
                    f"run {run_id!r}: the record stored as round {r.round} is round {record.round}"
                )
            out.append(
                RoundRow(
                    run_id=run_id, round=r.round, record=record, completed_at=float(r.completed_at)
                )
            )
        return out

    def _latest_checkpoint(self, run_id: str) -> Checkpoint | None:
        query = (
            sa.select(CHECKPOINTS)
            .where(CHECKPOINTS.c.run_id == run_id)
            .order_by(CHECKPOINTS.c.round.desc())
            .limit(1)
        )
        with self._transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        file = CheckpointFile(
            run_id=row.run_id,
            round=int(row.round),
            path=row.path,
            sha256=row.sha256,
            nbytes=int(row.nbytes),
        )
        return read_checkpoint(self._checkpoint_dir, file)

    # Events ------------------------------------------------------------------------------
    def _append_event(
        self,
        run_id: str,
        round: int,
        kind: str,
        message: str,
        node_id: str | None,
        time: float,
        data: Mapping[str, float],
    ) -> EventRow:
        with self._transaction(write=True) as conn:
            return _insert_event(conn, run_id, round, kind, message, node_id, time, data)

    def _events(self, run_id: str, after_seq: int, limit: int | None) -> list[EventRow]:
        query = (
            sa.select(EVENTS)
            .where(EVENTS.c.run_id == run_id, EVENTS.c.seq > after_seq)
            .order_by(EVENTS.c.seq)
        )
        if limit is not None:
            query = query.limit(limit)
        with self._transaction() as conn:
            return [
                EventRow(
                    run_id=r.run_id,
                    seq=int(r.seq),
                    time=float(r.time),
                    round=int(r.round),
                    kind=r.kind,
                    message=r.message,
                    node_id=r.node_id,
                    data=event_data_from_json(r.data),
                )
                for r in conn.execute(query)
            ]

    # Nodes -------------------------------------------------------------------------------
    def _upsert_node(self, node: NodeRow) -> None:
        values = {
            "status": node.status,
            "last_seen": node.last_seen,
            "properties": json.dumps(dict(node.properties), allow_nan=False, ensure_ascii=False),
        }
        with self._transaction(write=True) as conn:
            result = conn.execute(
                NODES.update().where(NODES.c.node_id == node.node_id).values(**values)
            )
            if result.rowcount == 0:
                conn.execute(NODES.insert().values(node_id=node.node_id, **values))

    def _list_nodes(self) -> list[NodeRow]:
        with self._transaction() as conn:
            rows = list(conn.execute(sa.select(NODES).order_by(NODES.c.node_id)))
        out = []
        for r in rows:
            try:
                properties = json.loads(r.properties)
            except ValueError:
                raise PayloadError(f"node {r.node_id!r}: stored properties are not JSON") from None
            if not isinstance(properties, dict):
                raise PayloadError(f"node {r.node_id!r}: stored properties are not an object")
            out.append(
                NodeRow(
                    node_id=r.node_id,
                    status=r.status,
                    last_seen=float(r.last_seen),
                    properties=properties,
                )
            )
        return out

    def _close(self) -> None:
        self._engine.dispose()


def _insert_event(
    conn: sa.Connection,
    run_id: str,
    round: int,
    kind: str,
    message: str,
    node_id: str | None,
    time: float,
    data: Mapping[str, float] = _NO_DATA,
) -> EventRow:
    """Append an event inside the caller's write transaction."""
    # The UPDATE locks the run's row, so concurrent writers get distinct numbers.
    result = conn.execute(
        RUNS.update()
        .where(RUNS.c.run_id == run_id)
        .values(last_event_seq=RUNS.c.last_event_seq + 1)
    )
    if result.rowcount != 1:
        raise ProtocolError(f"unknown run {run_id!r}")
    seq = conn.execute(sa.select(RUNS.c.last_event_seq).where(RUNS.c.run_id == run_id)).scalar_one()
    row = EventRow(
        run_id=run_id,
        seq=int(seq),
        time=time,
        round=round,
        kind=kind,
        message=message,
        node_id=node_id,
        data=data,
    )
    conn.execute(
        EVENTS.insert().values(
            run_id=run_id,
            seq=row.seq,
            time=time,
            round=round,
            kind=kind,
            message=message,
            node_id=node_id,
            data=event_data_to_json(row.data),
        )
    )
    return row


def _check_sqlite_integrity(engine: sa.Engine, shown: str) -> None:
    """Refuse a SQLite file that ``PRAGMA integrity_check`` finds damaged.

    Security notes
    --------------
    A state file with flipped bytes (disk fault, a bad copy, tampering) must stop the
    coordinator at start with one line, not leave it serving while every run dies on a
    storage error (issue 10, finding 7). SQLite keeps no checksums of row content, so this
    detects structural damage (pages, b-trees, indexes), as https://sqlite.org/pragma.html
    documents for ``integrity_check``; the checkpoint files carry their own SHA-256.
    """
    with engine.connect() as conn:
        rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check(5)")]
    if rows != ["ok"]:
        found = " ".join("; ".join(rows).split())[:200]  # one line, whatever SQLite says
        raise ConfigurationError(
            f"state store {shown!r} is damaged (integrity_check: {found}); restore it from a backup"
        )


def _prepare_schema(engine: sa.Engine, shown: str) -> None:
    """Create the tables of a new store, upgrade an older one (schema 1, or a store without
    ``events.data``), refuse an unknown one."""
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE: True})
        with conn.begin():
            tables = set(sa.inspect(conn).get_table_names())
            if "runs" not in tables:
                METADATA.create_all(conn, checkfirst=True)
                conn.execute(SCHEMA.delete())
                conn.execute(SCHEMA.insert().values(version=SCHEMA_VERSION))
                return
            version = 1
            if SCHEMA.name in tables:
                found = [int(r.version) for r in conn.execute(sa.select(SCHEMA.c.version))]
                if len(found) != 1:
                    raise ConfigurationError(
                        f"state store {shown!r} has {len(found)} schema versions, not one: "
                        "restore it from a backup"
                    )
                version = found[0]
            if version > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"state store {shown!r} has schema version {version}; this biofed knows "
                    f"up to {SCHEMA_VERSION}: upgrade biofed"
                )
            if version < 1:
                raise ConfigurationError(
                    f"state store {shown!r} has an invalid schema version {version}"
                )
            if version == 1:  # before the version table: runs.attempts, a wider runs.status
                conn.execute(
                    sa.text("ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
                )
                if conn.dialect.name != "sqlite":  # SQLite does not enforce VARCHAR lengths
                    conn.execute(sa.text("ALTER TABLE runs ALTER COLUMN status TYPE VARCHAR(32)"))
            columns = {c["name"] for c in sa.inspect(conn).get_columns(EVENTS.name)}
            if "data" not in columns:  # figures as numbers; older events keep only their text
                conn.execute(sa.text("ALTER TABLE events ADD COLUMN data TEXT"))
            METADATA.create_all(conn, checkfirst=True)
            if version < SCHEMA_VERSION:
                conn.execute(SCHEMA.delete())
                conn.execute(SCHEMA.insert().values(version=SCHEMA_VERSION))
