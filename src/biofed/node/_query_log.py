"""The site's query log: the cohorts of the queries it answered, to refuse a differencing
attack.

Each answered pass of a federated query is logged per dataset: the cohorts its statistics
rest on, each as its sorted row ids (int64, zlib-compressed), with the run id and the
query's digest. A new answer with a cohort that differs from one logged for another query
of the same dataset by 1 to ``min_difference - 1`` records (size of the symmetric
difference) is refused; the same cohort again (difference 0) is allowed, and so are the
cohorts of the same query (a later pass, a repeat, the per-column cohorts of one answer),
since the same statistics over the same rows release nothing new.

The sets logged are not only cohorts: an answer also logs the row set of each count cell
it releases (a histogram's bins, a crosstab's cells and margins, a quantile pass's bins:
:func:`biofed.analytics.released_cells`), and the rule compares every set of the answer
with every set of other queries. Two histograms of the same rows with edges a hair apart
(the narrow-bin attack), or a crosstab's row total and a count with one more filter, have
the same cohort but cells one patient apart; they are refused like two cohorts. One answer
may log at most :data:`MAX_SETS_PER_ANSWER` distinct sets (more is refused: the log's size
and the check's cost stay bounded), and a fine histogram pushes older sets out of the
newest :data:`MAX_COHORTS` sooner.

One SQLite file in the node folder (WAL journal, ``synchronous=FULL``, like the privacy
ledger: each commit is synced before it returns), or one in-memory database for a
development node without a ledger file or a simulation's virtual site. Check and record
are one ``BEGIN IMMEDIATE`` transaction, so two concurrent queries cannot both pass
against a log that holds neither; the node records before the reply leaves, so a crash
after an answer left never forgets its cohort.

Size and cost. The log keeps the newest :data:`MAX_COHORTS` cohorts per dataset (a cohort
repeated by the same query is stored once); older ones are dropped, so a coordinator that
has a site answer that many other queries in between can difference against a cohort the
log no longer holds (all of them are in the signed audit log: such a campaign is visible). A
check decompresses only the logged cohorts whose size is within ``min_difference - 1`` of
the new one's (the symmetric difference is at least the difference of the sizes; an
index on (dataset, size) finds them), and a cohort this query logged before is found by
its SHA-256 and not compared again, so a typical check reads a handful of rows. Each logged
set read is decompressed once and intersected with all the answer's new sets at once
(searchsorted into their sorted ids, hits counted per set): a 200-bin histogram against
10,000 logged sets all within its bins' size windows takes about a second.

Security notes
--------------
Threat: the differencing (tracker) attack — two aggregate queries whose cohorts differ by
one patient (``age > 50`` and ``age > 50 and id != 1234``) reveal that patient's value by
subtraction, though each answer passes the minimum cell count (Denning & Schlörer, "Inference
controls for statistical databases", IEEE Computer 16(7), 1983; Denning, Denning & Schwartz,
"The tracker", ACM TODS 4(1), 1979). The rule here is the query-set-overlap control those
papers discuss and the peers apply: it blocks the pairwise attack for every pair of logged
cohorts, not every combination of three or more queries (a general tracker can still be
built from many queries with large cohorts); differential privacy (a query's ``dp``) is the
guarantee that composes. The refusal names no row ids and no counts.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from biofed.core import Array, ConfigurationError, PolicyViolation, check_id

#: The path that keeps a query log in memory.
MEMORY = ":memory:"
#: The query log's file name in the node folder (beside the privacy ledger).
QUERY_LOG_FILE = "queries.db"
#: Distinct cohorts kept per dataset (the oldest are dropped beyond this).
MAX_COHORTS = 10_000
#: Most distinct row sets (cohorts and released cells) one answer may log; an answer that
#: releases more non-empty cells is refused.
MAX_SETS_PER_ANSWER = 2_000

_APPLICATION_ID = 0x62667167  # "bfqg": marks the SQLite file as a biofed query log
_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cohorts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    ids BLOB NOT NULL,
    run_id TEXT NOT NULL,
    query_sha256 TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cohorts_by_size ON cohorts (dataset, size);
CREATE INDEX IF NOT EXISTS cohorts_by_hash ON cohorts (dataset, sha256, query_sha256);
"""


def _sorted_ids(ids: Array) -> Array:
    out = np.unique(np.asarray(ids, dtype=np.int64))  # sorted, distinct
    return out.astype("<i8", copy=False)


def _digest(ids: Array) -> str:
    return hashlib.sha256(ids.tobytes()).hexdigest()


def _decode(blob: bytes, size: int) -> Array:
    try:
        ids = np.frombuffer(zlib.decompress(blob), dtype="<i8")
    except zlib.error:
        ids = np.zeros(0, dtype="<i8")
    if ids.shape != (size,):
        raise ConfigurationError("the query log holds a damaged cohort; refusing to guess")
    return ids


def symmetric_difference_size(a: Array, b: Array) -> int:
    """Records in exactly one of the sorted, distinct id arrays ``a`` and ``b``."""
    common = np.intersect1d(a, b, assume_unique=True).shape[0]
    return int(a.shape[0] + b.shape[0] - 2 * common)


class QueryLog:
    """The cohorts of the queries this site answered, per dataset.

    Parameters
    ----------
    path:
        ``<node folder>/queries.db`` (:data:`QUERY_LOG_FILE`), or :data:`MEMORY`.
    max_cohorts:
        Distinct cohorts kept per dataset (:data:`MAX_COHORTS`).
    clock:
        Wall clock (injected for tests).

    Security notes
    --------------
    See the module docstring (the differencing attack; Denning & Schlörer 1983).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_cohorts: int = MAX_COHORTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.in_memory = os.fspath(path) == MEMORY
        self.path = Path(path)
        if isinstance(max_cohorts, bool) or not isinstance(max_cohorts, int) or max_cohorts < 1:
            raise ConfigurationError("the query log's max_cohorts must be an integer >= 1")
        self.max_cohorts = max_cohorts
        self._clock = clock
        self._ready = False
        self._lock = threading.RLock()  # one writer per process; SQLite's lock across them
        self._memory: sqlite3.Connection | None = None

    def check_and_record(
        self,
        dataset: str,
        *cohorts: Array,
        min_difference: int,
        run_id: str,
        query_sha256: str,
    ) -> None:
        """Refuse the answer if one of its ``cohorts`` (the row-id sets its statistics rest
        on) differs from a cohort logged for another query of ``dataset`` by 1 to
        ``min_difference - 1`` records; otherwise log each before returning, so the caller
        may release the answer.

        Cohorts of the same query (its passes, its repeats, the per-column cohorts of one
        answer) are not compared with each other: the same statistics over the same rows
        tell nothing new. Every pair of logged cohorts of different queries is at least
        ``min_difference`` apart (or equal), so a cohort already logged for this query
        needs no new comparison.

        Raises
        ------
        PolicyViolation
            ``"disclosure: …"``, naming no ids or counts.
        ConfigurationError
            If the log cannot be read or written (nothing may leave then).
        """
        check_id(dataset, what="dataset name")
        check_id(run_id, what="run_id")
        query = str(query_sha256)[:64]
        fresh: dict[str, Array] = {}
        for ids in cohorts:
            cohort = _sorted_ids(ids)
            fresh.setdefault(_digest(cohort), cohort)
        if len(fresh) > MAX_SETS_PER_ANSWER:
            raise PolicyViolation(
                f"disclosure: the answer releases more than {MAX_SETS_PER_ANSWER} non-empty "
                "cells, more than this site's query log checks for one answer; ask for fewer "
                "bins or levels"
            )
        with self._lock, self._transaction() as db:
            new = {}
            for digest, cohort in fresh.items():
                seen = db.execute(
                    "SELECT 1 FROM cohorts WHERE dataset = ? AND sha256 = ? AND query_sha256 = ? "
                    "LIMIT 1",
                    (dataset, digest, query),
                ).fetchone()
                if seen is None:
                    new[digest] = cohort
            if min_difference > 1 and new:
                self._check(db, dataset, list(new.values()), query, min_difference)
            at = self._clock()
            db.executemany(
                "INSERT INTO cohorts (dataset, size, sha256, ids, run_id, query_sha256, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        dataset,
                        int(cohort.shape[0]),
                        digest,
                        zlib.compress(cohort.tobytes(), 6),
                        run_id,
                        query,
                        at,
                    )
                    for digest, cohort in new.items()
                ],
            )
            if new:
                db.execute(
                    "DELETE FROM cohorts WHERE dataset = ? AND id NOT IN (SELECT id FROM "
                    "cohorts WHERE dataset = ? ORDER BY id DESC LIMIT ?)",
                    (dataset, dataset, self.max_cohorts),
                )

    @staticmethod
    def _check(db: sqlite3.Connection, dataset: str, sets: list[Array], query: str, k: int) -> None:
        """Compare each new set with the logged sets of other queries within ``k - 1`` of
        its size: one indexed range query per run of overlapping size windows; each logged
        set is decompressed once and intersected with all the new sets at once (its ids
        looked up in the new sets' ids, sorted, and the hits counted per set)."""
        sizes = np.asarray([s.shape[0] for s in sets], dtype=np.int64)
        owner = np.repeat(np.arange(len(sets)), sizes)
        every = np.concatenate(sets)
        order = np.argsort(every, kind="stable")
        every, owner = every[order], owner[order]
        windows: list[list[int]] = []
        for size in sorted(int(v) for v in sizes):
            if windows and size - k + 1 <= windows[-1][1] + 1:
                windows[-1][1] = size + k - 1
            else:
                windows.append([size - k + 1, size + k - 1])
        for lo, hi in windows:
            near = db.execute(
                "SELECT ids, size FROM cohorts WHERE dataset = ? AND query_sha256 != ? "
                "AND size BETWEEN ? AND ?",
                (dataset, query, lo, hi),
            )
            for blob, other in near:
                close = np.abs(sizes - other) < k
                if not close.any():
                    continue
                logged = _decode(blob, other)
                first = np.searchsorted(every, logged, side="left")
                hits = np.searchsorted(every, logged, side="right") - first
                total = int(hits.sum())
                start = np.cumsum(hits) - hits
                where = np.repeat(first - start, hits) + np.arange(total)
                common = np.bincount(owner[where], minlength=len(sets))
                diff = sizes + other - 2 * common
                if (close & (diff > 0) & (diff < k)).any():
                    raise PolicyViolation(
                        "disclosure: the query's cohort (or one of its released cells) "
                        f"differs by fewer than {k} records from an earlier query's on "
                        f"dataset {dataset!r} (a differencing attack would reveal them); "
                        "widen or narrow its filters, bins or levels"
                    )

    def cohorts(self, dataset: str) -> int:
        """Distinct cohorts logged for ``dataset``."""
        if not self.in_memory and not self.path.exists():
            return 0
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT count(*) FROM cohorts WHERE dataset = ?", (dataset,))
            return int(row.fetchone()[0])

    def close(self) -> None:
        """Release an in-memory log (its content is lost); a file holds nothing open."""
        with self._lock:
            if self._memory is not None:
                self._memory.close()
                self._memory = None
                self._ready = False

    # -- the database --------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self.in_memory:
            if self._memory is None:
                self._memory = sqlite3.connect(
                    MEMORY, isolation_level=None, check_same_thread=False
                )
            return self._memory
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            if not self._ready:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigurationError(f"cannot put the query log {self.path} in WAL mode")
        except BaseException:
            db.close()
            raise
        return db

    def _init(self, db: sqlite3.Connection) -> None:
        if self._ready:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app_id == 0 and tables == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id={_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif app_id != _APPLICATION_ID:
                raise ConfigurationError(f"{self.path} is not a biofed query log")
            elif db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                raise ConfigurationError(f"{self.path} is a query log of another format")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._ready = True

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the query log {self.path}: {exc}") from None
        try:
            self._init(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise ConfigurationError(f"query log {self.path}: {exc}") from None
        finally:
            if not self.in_memory:
                db.close()
