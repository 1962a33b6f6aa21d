"""The ledger's SQLite store: the schema, its upgrades, transactions and the queries.

One file in the node folder (WAL journal, ``synchronous=FULL``: each commit is synced before
it returns), or — for a simulation's virtual sites, which keep no files — one in-memory
database (``":memory:"``) shared by every call on the store. Every change is one
``BEGIN IMMEDIATE`` transaction, which holds SQLite's write lock, so check-and-record is
serialised across threads and processes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.governance._ledger._records import UNLABELLED

#: The path that keeps a ledger in memory, for as long as its store lives.
MEMORY = ":memory:"

_APPLICATION_ID = 0x62666C67  # "bflg": marks the SQLite file as a biofed privacy ledger
_SCHEMA_VERSION = 3
#: Older formats are upgraded in place on first open, one step at a time: format 1 lacked
#: ``debits.mechanism``, format 2 the labels ``debits.guarantee`` and ``debits.trust``.
_UPGRADES = {
    1: ("ALTER TABLE debits ADD COLUMN mechanism TEXT",),
    2: (
        "ALTER TABLE debits ADD COLUMN guarantee TEXT",
        "ALTER TABLE debits ADD COLUMN trust TEXT",
    ),
}
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS caps (
    dataset TEXT PRIMARY KEY,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    dataset TEXT NOT NULL,
    run_id TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    delta REAL NOT NULL CHECK (delta >= 0 AND delta < 1),
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (dataset, run_id)
);
CREATE TABLE IF NOT EXISTS debits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    epsilon_before REAL NOT NULL,
    epsilon_after REAL NOT NULL,
    delta_before REAL NOT NULL,
    delta_after REAL NOT NULL,
    at REAL NOT NULL,
    mechanism TEXT,
    guarantee TEXT,
    trust TEXT
);
CREATE INDEX IF NOT EXISTS debits_by_job ON debits (dataset, run_id, round);
"""


class LedgerStore:
    """The SQLite database of one ledger (a file, or :data:`MEMORY`).

    The file is created on the first write; until then :attr:`exists` is false and readers
    show nothing. An in-memory store holds one connection for its lifetime (SQLite gives
    each connection its own in-memory database), used by one transaction at a time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.in_memory = os.fspath(path) == MEMORY
        self.path = Path(path)
        self._ready = False
        self._init_lock = threading.Lock()
        self._memory: sqlite3.Connection | None = None
        self._memory_lock = threading.RLock()

    @property
    def exists(self) -> bool:
        """Whether there is anything to read yet."""
        return self.in_memory or self.path.exists()

    def close(self) -> None:
        """Release an in-memory database (its content is lost); a file needs nothing."""
        with self._memory_lock:
            if self._memory is not None:
                self._memory.close()
                self._memory = None
                self._ready = False

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            db.close()
            raise
        return db

    def _init_schema(self, db: sqlite3.Connection) -> None:
        with self._init_lock:
            if self._ready:
                return
            if not self.in_memory:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigurationError(
                        f"cannot put the privacy ledger {self.path} in WAL mode"
                    )
            db.execute("BEGIN IMMEDIATE")
            try:
                app_id = db.execute("PRAGMA application_id").fetchone()[0]
                version = db.execute("PRAGMA user_version").fetchone()[0]
                tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if app_id == 0 and tables == 0:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                    db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                elif app_id != _APPLICATION_ID:
                    raise ConfigurationError(f"{self.path} is not a biofed privacy ledger")
                elif version in _UPGRADES:
                    for step in range(version, _SCHEMA_VERSION):
                        for statement in _UPGRADES[step]:
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                elif version != _SCHEMA_VERSION:
                    raise ConfigurationError(
                        f"{self.path} is a privacy ledger of format {version}; this biofed "
                        f"reads format {_SCHEMA_VERSION}"
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._ready = True

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if self.in_memory:
            with self._memory_lock:
                if self._memory is None:
                    self._memory = sqlite3.connect(
                        MEMORY, isolation_level=None, check_same_thread=False
                    )
                yield self._memory
            return
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open()
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the privacy ledger {self.path}: {exc}") from exc
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE`` when ``write``), committed on success and
        rolled back on any error; SQLite errors become one-line ConfigurationErrors."""
        with self._connection(write=write) as db:
            try:
                self._init_schema(db)
                db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise ConfigurationError(f"privacy ledger {self.path}: {exc}") from exc


# Queries, each inside a transaction of the caller's ---------------------------------------


def read_cap(db: sqlite3.Connection, dataset: str) -> tuple[float, float] | None:
    """The site's cap on ``dataset``, or None."""
    row = db.execute("SELECT epsilon, delta FROM caps WHERE dataset = ?", (dataset,)).fetchone()
    return None if row is None else (float(row[0]), float(row[1]))


def write_cap(db: sqlite3.Connection, dataset: str, cap: tuple[float, float], at: float) -> None:
    """Set the site's cap on ``dataset``."""
    db.execute(
        "INSERT INTO caps (dataset, epsilon, delta, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (dataset) DO UPDATE SET epsilon = excluded.epsilon, "
        "delta = excluded.delta, updated_at = excluded.updated_at",
        (dataset, cap[0], cap[1], at),
    )


def job_spends(db: sqlite3.Connection, dataset: str) -> dict[str, tuple[float, float]]:
    """Every job's recorded (ε, δ) on ``dataset``."""
    return {
        r: (e, d)
        for r, e, d in db.execute(
            "SELECT run_id, epsilon, delta FROM jobs WHERE dataset = ?", (dataset,)
        )
    }


def has_debit(db: sqlite3.Connection, dataset: str, run_id: str, round: int) -> bool:
    """Whether this (run, round) was reserved before."""
    row = db.execute(
        "SELECT 1 FROM debits WHERE dataset = ? AND run_id = ? AND round = ? LIMIT 1",
        (dataset, run_id, round),
    ).fetchone()
    return row is not None


def record_debit(
    db: sqlite3.Connection,
    *,
    dataset: str,
    run_id: str,
    round: int,
    before: tuple[float, float],
    after: tuple[float, float],
    at: float,
    mechanism: str | None,
    guarantee: str,
    trust: str,
) -> None:
    """Raise the job's spend to ``after`` and append the debit to the history."""
    db.execute(
        "INSERT INTO jobs (dataset, run_id, epsilon, delta, started_at, "
        "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, run_id) "
        "DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta, "
        "updated_at = excluded.updated_at",
        (dataset, run_id, after[0], after[1], at, at),
    )
    db.execute(
        "INSERT INTO debits (dataset, run_id, round, epsilon_before, "
        "epsilon_after, delta_before, delta_after, at, mechanism, guarantee, "
        "trust) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            dataset,
            run_id,
            round,
            before[0],
            after[0],
            before[1],
            after[1],
            at,
            mechanism,
            guarantee,
            trust,
        ),
    )


def read_mechanisms(db: sqlite3.Connection, dataset: str, run_id: str) -> dict[int, str]:
    """The mechanism text recorded with each reserved round of one job (latest per round)."""
    rows = db.execute(
        "SELECT round, mechanism FROM debits WHERE dataset = ? AND run_id = ? "
        "AND mechanism IS NOT NULL ORDER BY id",
        (dataset, run_id),
    ).fetchall()
    return {int(r): str(m) for r, m in rows}


def list_datasets(db: sqlite3.Connection) -> list[str]:
    """Every dataset with a cap or a recorded spend, by name."""
    rows = db.execute(
        "SELECT dataset FROM caps UNION SELECT dataset FROM jobs ORDER BY dataset"
    ).fetchall()
    return [r[0] for r in rows]


def job_rows(
    db: sqlite3.Connection, dataset: str
) -> list[tuple[str, float, float, int, int, list[str]]]:
    """Per job on ``dataset``, in start order: run id, ε, δ, rounds, last round and the
    labels of its debits."""
    return [
        (run_id, eps, dlt, rounds, last, str(labels or UNLABELLED).split(","))
        for run_id, eps, dlt, rounds, last, labels in db.execute(
            "SELECT j.run_id, j.epsilon, j.delta, count(DISTINCT d.round), "
            "max(d.round), group_concat(DISTINCT coalesce(d.guarantee, "
            f"'{UNLABELLED}')) FROM jobs j JOIN debits d "
            "ON d.dataset = j.dataset AND d.run_id = j.run_id "
            "WHERE j.dataset = ? GROUP BY j.run_id ORDER BY j.started_at, j.run_id",
            (dataset,),
        )
    ]
