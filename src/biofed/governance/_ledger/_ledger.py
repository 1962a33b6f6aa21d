"""The privacy-budget ledger at a node: how much (ε, δ) each dataset has spent, across jobs.

The site, not the researcher, holds the budget. Each dataset gets a cap set by the site
(:meth:`PrivacyLedger.set_cap` from ``biofed node budget-cap``, :meth:`PrivacyLedger.lower_cap`
from ``node.toml`` at node start); a study agreement may lower it further for one job
(``agreement_cap`` on :meth:`PrivacyLedger.reserve`). Before a round's output leaves the
site, the node asks the ledger to *reserve* the ε(δ) its accountant says the job will have
spent after that round; the ledger records the debit durably, or refuses and nothing leaves.

Storage is one SQLite file in the node folder (:data:`LEDGER_FILE`, WAL journal,
``synchronous=FULL``)::

    caps(dataset PK, epsilon, delta, updated_at)           the site's cap per dataset
    jobs(dataset, run_id, epsilon, delta, started_at,      a job's cumulative spend,
         updated_at, PK(dataset, run_id))                  never decreasing
    debits(id PK, dataset, run_id, round, epsilon_before,  append-only history: one row per
           epsilon_after, delta_before, delta_after, at,   round, plus one per raised figure
           mechanism, guarantee, trust)                    (what kind of ε, and what it rests on)

Every debit is labelled: ``guarantee`` is ``"exact"``, ``"bounded"`` or ``"heuristic"``
(:data:`biofed.privacy.GUARANTEES`; a figure that is no guarantee is still debited and
enforced, conservatively, but never shown as one) and ``trust`` names the assumption the
figure rests on (client mode: that the coordinator adds the noise, or that enough sites add
their shares). Rows written before the labels read back as ``"unlabelled"``.

Privacy notes
-------------
Threat: the ledger's figure understates what has left the site, so a dataset's patients are
exposed beyond the (ε, δ) its data owner allowed. Ways that happens, and what holds here:

* *Release before record.* A round's output leaves, then the node crashes before the spend
  is written, and the budget "rolls back". ``reserve`` commits the debit (durably: WAL with
  ``synchronous=FULL`` syncs each commit) before it returns, and the caller releases only
  after it returns — debit before release. A crash after ``reserve`` leaves the spend
  counted even though nothing was released (conservative).
* *Check-then-act races.* Two jobs (threads or processes) each see enough budget left and
  both spend it. The check and the record happen in one ``BEGIN IMMEDIATE`` transaction,
  which holds SQLite's write lock, so reservations are serialised across processes; within
  a process a lock per dataset admits one reservation at a time (so threads queue in order
  instead of spinning on SQLite's busy handler). With :meth:`PrivacyLedger.reserve_composed`
  the job's history is read and composed inside that same transaction, so even two rounds of
  one job reserved at once cannot both compose from the same stale history.
* *A cap that creeps back up.* A cap lowered by the site's operator is silently restored by
  a stale, higher value in ``node.toml`` at the next start. Caps only go down by
  themselves: ``node.toml`` can set a missing cap or lower one (:meth:`PrivacyLedger.lower_cap`),
  never raise it; raising is an explicit command (:meth:`PrivacyLedger.set_cap` with
  ``allow_raise``, ``biofed node budget-cap … --raise``) audited as ``budget.cap_raised``.
  The effective cap is thus the minimum of ``node.toml``'s, the operator's last explicit
  setting and (per job) the agreement's (the monotone, fail-safe default of Saltzer &
  Schroeder 1975: a forgotten or stale setting errs toward less disclosure).
* *Composition assumed tighter than it is.* Within a job, the job's own accountant composes
  its rounds (RDP or PLD) and the caller passes the cumulative ε(δ). Across jobs the ledger
  knows only each job's (ε_j, δ_j), and composes them by basic composition: k mechanisms
  that are (ε_j, δ_j)-DP are jointly (Σ ε_j, Σ δ_j)-DP (Dwork & Roth 2014, *The Algorithmic
  Foundations of Differential Privacy*, Thm 3.16; it holds under adaptive composition too,
  Dwork, Rothblum & Vadhan 2010), so jobs designed after seeing earlier results are covered.
  This is a valid upper bound, never an underestimate; it is loose when many jobs share a
  dataset. Sums use :func:`math.fsum` and the comparison with the cap has no tolerance, so a
  request that reaches the cap only by rounding is refused.
* *Spend that shrinks.* A job's recorded spend is the maximum it ever reserved: a replayed
  round, an out-of-order call or a buggy accountant reporting less never frees budget.
  Re-reserving a recorded round with the same figures adds nothing (idempotent retry after a
  crash); with larger ones the job's spend rises to them.

Limits: the ledger counts one release per (run, round). A round that is retrained and sent
again with fresh noise after its first output already left is a new release and must be
reserved with the higher cumulative figure. Deleting the file, or restoring an old copy,
resets the budget; the ``budget.debited`` events in the site's signed audit log are the
independent record. Datasets are budgeted separately: if two registered datasets hold the
same patients, the site should give them caps that sum to what it allows for those patients.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from biofed.core import ConfigurationError, PrivacyBudgetExceeded, check_id
from biofed.privacy import GUARANTEES, check_real

AuditHook = Callable[[str, Mapping[str, Any]], None]

LEDGER_FILE = "privacy.db"
"""The ledger's file name in a node folder."""

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
#: The label of a debit recorded before labels existed.
UNLABELLED = "unlabelled"
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Debit:
    """A reservation the ledger recorded: the caller may now release the round's output.

    Attributes
    ----------
    dataset, run_id, round:
        What was reserved.
    epsilon_before, delta_before:
        The job's cumulative spend before this reservation.
    epsilon_after, delta_after:
        The job's cumulative spend now (never less than before).
    epsilon_total, delta_total:
        The dataset's spend across all jobs now (basic composition).
    cap_epsilon, cap_delta:
        The cap this reservation was checked against (site cap, or the agreement's if lower).
    at:
        When it was recorded (seconds since the epoch).
    repeat:
        True when this (run, round) was already recorded with these or larger figures, so
        nothing new was spent.
    guarantee, trust:
        The label of the figure and the assumption it rests on (see the module docstring).
    """

    dataset: str
    run_id: str
    round: int
    epsilon_before: float
    epsilon_after: float
    delta_before: float
    delta_after: float
    epsilon_total: float
    delta_total: float
    cap_epsilon: float
    cap_delta: float
    at: float
    repeat: bool
    guarantee: str = UNLABELLED
    trust: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpend:
    """One job's cumulative spend on one dataset; ``guarantee`` is the weakest label of its
    debits (``"heuristic"`` if any round's figure was, ``"unlabelled"`` for old rows)."""

    run_id: str
    epsilon: float
    delta: float
    rounds: int
    last_round: int
    guarantee: str = UNLABELLED


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """A dataset's cap, its spend across jobs, and what is left.

    ``cap_epsilon`` and ``cap_delta`` are the site's cap (a study agreement may allow one job
    less); ``None`` when the site set no cap: such a dataset has no budget, and every
    reservation on it is refused. Spend across jobs is the sum of the jobs' spends (basic
    composition).
    """

    dataset: str
    cap_epsilon: float | None
    cap_delta: float | None
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    jobs: tuple[JobSpend, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["jobs"] = [asdict(j) for j in self.jobs]
        return out


CapAction = Literal["set", "lowered", "raised", "kept", "unchanged"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CapChange:
    """What a cap command did.

    Attributes
    ----------
    dataset:
        The dataset.
    epsilon, delta:
        The cap now in force.
    previous:
        The cap before, or None if there was none.
    action:
        ``"set"`` (there was none), ``"lowered"``, ``"raised"``, ``"kept"`` (a configured
        higher value was not applied) or ``"unchanged"``.
    source:
        Who asked: ``"cli"`` or ``"node.toml"``.
    requested:
        For ``"kept"``: the configured value that was not applied.
    """

    dataset: str
    epsilon: float
    delta: float
    previous: tuple[float, float] | None
    action: CapAction
    source: str
    requested: tuple[float, float] | None = None


def _change(
    dataset: str, previous: tuple[float, float] | None, cap: tuple[float, float], source: str
) -> CapChange:
    action: CapAction
    if previous is None:
        action = "set"
    elif cap == previous:
        action = "unchanged"
    elif cap[0] > previous[0] or cap[1] > previous[1]:
        action = "raised"
    else:
        action = "lowered"
    return CapChange(
        dataset=dataset,
        epsilon=cap[0],
        delta=cap[1],
        previous=previous,
        action=action,
        source=source,
    )


def _epsilon(value: object, what: str) -> float:
    number = check_real(what, value)
    if number < 0:
        raise ConfigurationError(f"{what} must be >= 0, got {number}")
    return number


def _delta(value: object, what: str) -> float:
    number = check_real(what, value)
    if not 0 <= number < 1:
        raise ConfigurationError(f"{what} must be in [0, 1), got {number}")
    return number


def _round(value: object) -> int:
    try:
        number = -1 if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if number < 0:
        raise ConfigurationError(f"round must be an integer >= 0, got {value!r}")
    return number


class PrivacyLedger:
    """A node's per-dataset privacy budgets and spends, in one SQLite file.

    Safe to share between threads, and to open from several processes at once: every change
    is one ``BEGIN IMMEDIATE`` transaction. The file is created on the first write; reading
    a ledger whose file does not exist yet shows no budgets.

    Parameters
    ----------
    path:
        The ledger file, normally ``<node folder>/privacy.db`` (:data:`LEDGER_FILE`).
    audit:
        Called with (event, data) after each change or refusal: ``budget.cap_set``,
        ``budget.cap_lowered``, ``budget.cap_raised``, ``budget.cap_kept`` (``node.toml``
        asked for a higher cap than the ledger's, which stays), ``budget.debited``,
        ``budget.refused``.
    clock:
        Wall clock (injected for tests).

    Privacy notes
    -------------
    See the module docstring: debit before release, serialised check-and-record, basic
    composition across jobs (Dwork & Roth 2014, Thm 3.16), spend that never decreases.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._audit = audit or (lambda event, data: None)
        self._clock = clock
        self._ready = False
        self._init_lock = threading.Lock()
        self._locks_guard = threading.Lock()
        self._dataset_locks: dict[str, threading.Lock] = {}

    def _dataset_lock(self, dataset: str) -> threading.Lock:
        """This process's lock of one dataset: one reservation or cap change at a time."""
        with self._locks_guard:
            return self._dataset_locks.setdefault(dataset, threading.Lock())

    # -- storage -------------------------------------------------------------------------------
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
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigurationError(f"cannot put the privacy ledger {self.path} in WAL mode")
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
    def _transaction(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._open()
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the privacy ledger {self.path}: {exc}") from exc
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
        finally:
            db.close()

    # -- caps ----------------------------------------------------------------------------------
    def set_cap(
        self,
        dataset: str,
        epsilon: float,
        delta: float,
        *,
        allow_raise: bool = False,
        source: str = "cli",
    ) -> CapChange:
        """Set the site's cap on a dataset's total spend across all jobs (the operator's
        explicit command, ``biofed node budget-cap``).

        Setting a missing cap or lowering one needs nothing more; a cap below what the
        dataset has already spent is allowed (every later reservation on it is refused).
        Raising either component needs ``allow_raise`` (``--raise``). Audited as
        ``budget.cap_set``, ``budget.cap_lowered`` or ``budget.cap_raised``.

        Raises
        ------
        ConfigurationError
            For a malformed value, or a raise without ``allow_raise`` (nothing changes).
        """
        check_id(dataset, what="dataset name")
        eps = _epsilon(epsilon, "epsilon cap")
        dlt = _delta(delta, "delta cap")
        with self._dataset_lock(dataset), self._transaction(write=True) as db:
            previous = self._cap(db, dataset)
            if (
                previous is not None
                and not allow_raise
                and (eps > previous[0] or dlt > previous[1])
            ):
                raise ConfigurationError(
                    f"the cap on {dataset!r} is ε={previous[0]:.6g}, δ={previous[1]:.6g}; "
                    f"ε={eps:.6g}, δ={dlt:.6g} would raise it: caps only go down unless "
                    "raised explicitly (pass --raise; it is audited as budget.cap_raised)"
                )
            change = _change(dataset, previous, (eps, dlt), source)
            if change.action != "unchanged":
                self._write_cap(db, dataset, eps, dlt)
        self._audit_cap(change)
        return change

    def lower_cap(self, dataset: str, epsilon: float, delta: float, *, source: str) -> CapChange:
        """Apply a configured cap (``node.toml`` at node start) that may only lower the
        ledger's: a missing cap is set, each component becomes the smaller of the two, and
        a configured value above the ledger's is not applied (audited once as
        ``budget.cap_kept``, so that the operator sees that ``--raise`` is needed).

        Returns the change (``action`` ``"set"``, ``"lowered"``, ``"kept"`` or
        ``"unchanged"``).
        """
        check_id(dataset, what="dataset name")
        eps = _epsilon(epsilon, "epsilon cap")
        dlt = _delta(delta, "delta cap")
        with self._dataset_lock(dataset), self._transaction(write=True) as db:
            previous = self._cap(db, dataset)
            target = (
                (eps, dlt) if previous is None else (min(eps, previous[0]), min(dlt, previous[1]))
            )
            change = _change(dataset, previous, target, source)
            if change.action != "unchanged":
                self._write_cap(db, dataset, *target)
            elif previous is not None and (eps, dlt) != previous:
                change = dataclasses.replace(change, action="kept", requested=(eps, dlt))
        self._audit_cap(change)
        return change

    @staticmethod
    def _cap(db: sqlite3.Connection, dataset: str) -> tuple[float, float] | None:
        row = db.execute("SELECT epsilon, delta FROM caps WHERE dataset = ?", (dataset,)).fetchone()
        return None if row is None else (float(row[0]), float(row[1]))

    def _write_cap(self, db: sqlite3.Connection, dataset: str, eps: float, dlt: float) -> None:
        db.execute(
            "INSERT INTO caps (dataset, epsilon, delta, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dataset) DO UPDATE SET epsilon = excluded.epsilon, "
            "delta = excluded.delta, updated_at = excluded.updated_at",
            (dataset, eps, dlt, self._clock()),
        )

    def _audit_cap(self, change: CapChange) -> None:
        if change.action == "unchanged":
            return
        data: dict[str, Any] = {
            "dataset": change.dataset,
            "epsilon": change.epsilon,
            "delta": change.delta,
            "previous_epsilon": None if change.previous is None else change.previous[0],
            "previous_delta": None if change.previous is None else change.previous[1],
            "source": change.source,
        }
        if change.requested is not None:
            data.update(requested_epsilon=change.requested[0], requested_delta=change.requested[1])
        self._audit(f"budget.cap_{change.action}", data)

    # -- spending ------------------------------------------------------------------------------
    def reserve(
        self,
        dataset: str,
        run_id: str,
        round: int,
        epsilon_after: float,
        delta_after: float,
        *,
        agreement_cap: tuple[float, float] | None = None,
        mechanism: str | None = None,
        guarantee: str = UNLABELLED,
        trust: str = "",
    ) -> Debit:
        """Record a round's spend before its output is released, or refuse it.

        Parameters
        ----------
        dataset, run_id, round:
            The dataset the round trains on, the job, and the round about to be released.
        epsilon_after, delta_after:
            The job's cumulative ε(δ) after this round, as its accountant reports it for all
            of the job's rounds so far (not this round's increment).
        agreement_cap:
            ``(ε, δ)`` the study agreement allows this site; the cap checked is the lower of
            it and the site's cap, component by component.
        mechanism:
            What this round releases, as the node's accountant sees it (JSON text, e.g. the
            DP-SGD steps): kept with the debit so that a restarted node composes the job's
            history from the ledger (:meth:`mechanisms`) rather than from memory.
        guarantee, trust:
            What kind of figure ``epsilon_after`` is (:data:`biofed.privacy.GUARANTEES`) and
            the assumption it rests on; kept with the debit and in ``budget.debited``.

        Returns
        -------
        Debit
            The recorded reservation; only now may the caller release the output.

        Raises
        ------
        PrivacyBudgetExceeded
            When the dataset's spend across all jobs, with this job's spend raised to
            ``epsilon_after`` / ``delta_after``, would exceed the cap in ε or in δ, or no cap
            is set. Nothing is recorded; the refusal is audited as ``budget.refused``.
        ConfigurationError
            For a malformed argument (raised before the ledger is touched).

        Privacy notes
        -------------
        Debit before release: the spend is committed durably before this returns, so a
        crash afterwards never rolls the budget back. Re-reserving a recorded round with the
        same figures spends nothing more; with other figures the job's spend becomes the
        larger of the old and new ones. The ``budget.debited`` audit runs after the commit;
        if the audit hook raises, the spend stays recorded and the error reaches the caller,
        which must then not release. Threat and sources: see the module docstring.
        """
        eps = _epsilon(epsilon_after, "epsilon_after")
        dlt = _delta(delta_after, "delta_after")
        return self._reserve(
            dataset,
            run_id,
            round,
            lambda db: (eps, dlt),
            agreement_cap=agreement_cap,
            mechanism=mechanism,
            guarantee=guarantee,
            trust=trust,
        )

    def reserve_composed(
        self,
        dataset: str,
        run_id: str,
        round: int,
        compose: Callable[[Mapping[int, str]], tuple[float, float]],
        *,
        mechanism: str,
        agreement_cap: tuple[float, float] | None = None,
        guarantee: str = UNLABELLED,
        trust: str = "",
    ) -> Debit:
        """:meth:`reserve`, with the job's cumulative (ε, δ) composed from its recorded
        history inside the reservation's own transaction.

        ``compose`` gets the job's recorded mechanisms (round → text, as :meth:`mechanisms`
        returns them, this round's excluded) and returns the job's cumulative (ε, δ) after
        this round. Reading the history and recording the debit are one ``BEGIN IMMEDIATE``
        transaction under the dataset's lock, so concurrent rounds never compose from a
        history that another reservation is about to change.
        """

        def figures(db: sqlite3.Connection) -> tuple[float, float]:
            history = _mechanisms(db, dataset, run_id)
            history.pop(_round(round), None)
            eps, dlt = compose(MappingProxyType(history))
            return _epsilon(eps, "epsilon_after"), _delta(dlt, "delta_after")

        return self._reserve(
            dataset,
            run_id,
            round,
            figures,
            agreement_cap=agreement_cap,
            mechanism=mechanism,
            guarantee=guarantee,
            trust=trust,
        )

    def _reserve(
        self,
        dataset: str,
        run_id: str,
        round: int,
        figures: Callable[[sqlite3.Connection], tuple[float, float]],
        *,
        agreement_cap: tuple[float, float] | None,
        mechanism: str | None,
        guarantee: str,
        trust: str,
    ) -> Debit:
        check_id(dataset, what="dataset name")
        if guarantee not in (*_LABELS, UNLABELLED) or not isinstance(trust, str):
            raise ConfigurationError(
                f"guarantee must be one of {(*_LABELS, UNLABELLED)}, got {guarantee!r}"
            )
        check_id(run_id, what="run_id")
        rnd = _round(round)
        agreement: tuple[float, float] | None = None
        if agreement_cap is not None:
            if not isinstance(agreement_cap, tuple) or len(agreement_cap) != 2:
                raise ConfigurationError(
                    f"agreement_cap must be an (epsilon, delta) pair, got {agreement_cap!r}"
                )
            agreement = (
                _epsilon(agreement_cap[0], "agreement epsilon cap"),
                _delta(agreement_cap[1], "agreement delta cap"),
            )
        now = self._clock()
        refusal: dict[str, Any] | None = None
        with self._dataset_lock(dataset), self._transaction(write=True) as db:
            eps, dlt = figures(db)
            cap = self._cap(db, dataset)
            jobs = {
                r: (e, d)
                for r, e, d in db.execute(
                    "SELECT run_id, epsilon, delta FROM jobs WHERE dataset = ?", (dataset,)
                )
            }
            before_e, before_d = jobs.get(run_id, (0.0, 0.0))
            after_e, after_d = max(before_e, eps), max(before_d, dlt)
            spent_e = math.fsum(e for e, _ in jobs.values())
            spent_d = math.fsum(d for _, d in jobs.values())
            others = [v for r, v in jobs.items() if r != run_id]
            total_e = math.fsum([*(e for e, _ in others), after_e])
            total_d = math.fsum([*(d for _, d in others), after_d])
            if cap is None:
                cap_e = cap_d = 0.0
                source = "no cap is set for this dataset (set one with `biofed node budget-cap`)"
            else:
                cap_e, cap_d = cap
                source = "site cap"
                if agreement is not None and (agreement[0] < cap_e or agreement[1] < cap_d):
                    cap_e, cap_d = min(cap_e, agreement[0]), min(cap_d, agreement[1])
                    source = "site cap limited by the study agreement"
            if cap is None or total_e > cap_e or total_d > cap_d:
                refusal = {
                    "dataset": dataset,
                    "run_id": run_id,
                    "round": rnd,
                    "cap_epsilon": cap_e,
                    "cap_delta": cap_d,
                    "epsilon_spent": spent_e,
                    "delta_spent": spent_d,
                    "epsilon_job_requested": eps,
                    "delta_job_requested": dlt,
                    "epsilon_total_requested": total_e,
                    "delta_total_requested": total_d,
                    "reason": source,
                }
            else:
                seen = db.execute(
                    "SELECT 1 FROM debits WHERE dataset = ? AND run_id = ? AND round = ? LIMIT 1",
                    (dataset, run_id, rnd),
                ).fetchone()
                repeat = seen is not None and (after_e, after_d) == (before_e, before_d)
                if not repeat:
                    db.execute(
                        "INSERT INTO jobs (dataset, run_id, epsilon, delta, started_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, run_id) "
                        "DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta, "
                        "updated_at = excluded.updated_at",
                        (dataset, run_id, after_e, after_d, now, now),
                    )
                    db.execute(
                        "INSERT INTO debits (dataset, run_id, round, epsilon_before, "
                        "epsilon_after, delta_before, delta_after, at, mechanism, guarantee, "
                        "trust) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            dataset,
                            run_id,
                            rnd,
                            before_e,
                            after_e,
                            before_d,
                            after_d,
                            now,
                            mechanism,
                            guarantee,
                            trust,
                        ),
                    )
        if refusal is not None:
            self._audit("budget.refused", refusal)
            raise PrivacyBudgetExceeded(_refusal_message(refusal, len(jobs)))
        debit = Debit(
            dataset=dataset,
            run_id=run_id,
            round=rnd,
            epsilon_before=before_e,
            epsilon_after=after_e,
            delta_before=before_d,
            delta_after=after_d,
            epsilon_total=total_e,
            delta_total=total_d,
            cap_epsilon=cap_e,
            cap_delta=cap_d,
            at=now,
            repeat=repeat,
            guarantee=guarantee,
            trust=trust,
        )
        self._audit(
            "budget.debited",
            {
                "dataset": dataset,
                "run_id": run_id,
                "round": rnd,
                "epsilon_job": after_e,
                "delta_job": after_d,
                "epsilon_total": total_e,
                "delta_total": total_d,
                "cap_epsilon": cap_e,
                "cap_delta": cap_d,
                "repeat": repeat,
                "guarantee": guarantee,
                "trust": trust,
            },
        )
        return debit

    # -- reading -------------------------------------------------------------------------------
    def mechanisms(self, dataset: str, run_id: str) -> dict[int, str]:
        """The mechanism text recorded with each reserved round of one job (the latest per
        round; rounds reserved without one are left out)."""
        check_id(dataset, what="dataset name")
        check_id(run_id, what="run_id")
        if not self.path.exists():
            return {}
        with self._transaction(write=False) as db:
            return _mechanisms(db, dataset, run_id)

    def datasets(self) -> list[str]:
        """Every dataset with a cap or a recorded spend, by name."""
        if not self.path.exists():
            return []
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT dataset FROM caps UNION SELECT dataset FROM jobs ORDER BY dataset"
            ).fetchall()
        return [r[0] for r in rows]

    def spent(self, dataset: str) -> BudgetStatus:
        """A dataset's cap, spend across jobs (basic composition), what is left, and per job."""
        check_id(dataset, what="dataset name")
        cap: tuple[float, float] | None = None
        jobs: list[JobSpend] = []
        if self.path.exists():
            with self._transaction(write=False) as db:
                cap = db.execute(
                    "SELECT epsilon, delta FROM caps WHERE dataset = ?", (dataset,)
                ).fetchone()
                for run_id, eps, dlt, rounds, last, labels in db.execute(
                    "SELECT j.run_id, j.epsilon, j.delta, count(DISTINCT d.round), "
                    "max(d.round), group_concat(DISTINCT coalesce(d.guarantee, "
                    f"'{UNLABELLED}')) FROM jobs j JOIN debits d "
                    "ON d.dataset = j.dataset AND d.run_id = j.run_id "
                    "WHERE j.dataset = ? GROUP BY j.run_id ORDER BY j.started_at, j.run_id",
                    (dataset,),
                ):
                    jobs.append(
                        JobSpend(
                            run_id=run_id,
                            epsilon=eps,
                            delta=dlt,
                            rounds=rounds,
                            last_round=last,
                            guarantee=_weakest(str(labels or UNLABELLED).split(",")),
                        )
                    )
        spent_e = math.fsum(j.epsilon for j in jobs)
        spent_d = math.fsum(j.delta for j in jobs)
        return BudgetStatus(
            dataset=dataset,
            cap_epsilon=None if cap is None else cap[0],
            cap_delta=None if cap is None else cap[1],
            spent_epsilon=spent_e,
            spent_delta=spent_d,
            remaining_epsilon=0.0 if cap is None else max(0.0, cap[0] - spent_e),
            remaining_delta=0.0 if cap is None else max(0.0, cap[1] - spent_d),
            jobs=tuple(jobs),
        )


#: Labels from strongest to weakest (a job is only as good as its weakest round).
_LABELS = GUARANTEES


def _weakest(labels: list[str]) -> str:
    order = (*_LABELS, UNLABELLED)
    known = [label for label in labels if label in order]
    return max(known, key=order.index) if known else UNLABELLED


def _mechanisms(db: sqlite3.Connection, dataset: str, run_id: str) -> dict[int, str]:
    rows = db.execute(
        "SELECT round, mechanism FROM debits WHERE dataset = ? AND run_id = ? "
        "AND mechanism IS NOT NULL ORDER BY id",
        (dataset, run_id),
    ).fetchall()
    return {int(r): str(m) for r, m in rows}


def _refusal_message(r: Mapping[str, Any], num_jobs: int) -> str:
    def g(x: float) -> str:
        return f"{x:.6g}"

    return (
        f"privacy budget of dataset {r['dataset']!r} would be exceeded: "
        f"cap ε={g(r['cap_epsilon'])}, δ={g(r['cap_delta'])} ({r['reason']}); "
        f"spent ε={g(r['epsilon_spent'])}, δ={g(r['delta_spent'])} over {num_jobs} job(s); "
        f"run {r['run_id']!r} round {r['round']} requests a job total of "
        f"ε={g(r['epsilon_job_requested'])}, δ={g(r['delta_job_requested'])}, "
        f"which would bring the dataset to ε={g(r['epsilon_total_requested'])}, "
        f"δ={g(r['delta_total_requested'])}; the round was refused and nothing was spent"
    )
