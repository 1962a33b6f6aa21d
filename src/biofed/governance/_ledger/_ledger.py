"""The privacy ledger itself: checks the arguments, takes the dataset's lock, assesses the
request (:mod:`._budget`) and records it (:mod:`._store`) in one transaction, then tells
the audit hook (:mod:`._events`). Threat and sources: :mod:`biofed.governance._ledger`."""

from __future__ import annotations

import dataclasses
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType

from biofed.core import ConfigurationError, PrivacyBudgetExceeded, check_id
from biofed.governance._hooks import AuditHook, no_audit
from biofed.governance._ledger import _store as store
from biofed.governance._ledger._budget import (
    assess,
    cap_change,
    check_agreement_cap,
    check_delta,
    check_epsilon,
    check_label,
    check_round,
    lowered,
    refusal_message,
    weakest,
)
from biofed.governance._ledger._events import audit_cap, audit_debit, audit_refusal
from biofed.governance._ledger._records import (
    UNLABELLED,
    BudgetStatus,
    CapChange,
    Debit,
    JobSpend,
)

Figures = Callable[[sqlite3.Connection], tuple[float, float]]


class PrivacyLedger:
    """A node's per-dataset privacy budgets and spends, in one SQLite file (or in memory).

    Safe to share between threads, and to open from several processes at once: every change
    is one ``BEGIN IMMEDIATE`` transaction. The file is created on the first write; reading
    a ledger whose file does not exist yet shows no budgets. ``PrivacyLedger(":memory:")``
    (or :meth:`in_memory`) keeps the ledger in this object only, for a simulation's virtual
    sites: the same checks and records, gone when the object is.

    Parameters
    ----------
    path:
        The ledger file, normally ``<node folder>/privacy.db`` (:data:`LEDGER_FILE`), or
        ``":memory:"``.
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
        self._store = store.LedgerStore(path)
        self.path = self._store.path
        self._audit = audit or no_audit
        self._clock = clock
        self._locks_guard = threading.Lock()
        self._dataset_locks: dict[str, threading.Lock] = {}

    @classmethod
    def in_memory(
        cls, *, audit: AuditHook | None = None, clock: Callable[[], float] = time.time
    ) -> PrivacyLedger:
        """A ledger kept in this object only (a simulation's virtual site)."""
        return cls(store.MEMORY, audit=audit, clock=clock)

    @property
    def is_in_memory(self) -> bool:
        """Whether this ledger lives in memory only."""
        return self._store.in_memory

    def close(self) -> None:
        """Release an in-memory ledger's database (its records are lost); a file ledger
        holds nothing open between calls."""
        self._store.close()

    def _dataset_lock(self, dataset: str) -> threading.Lock:
        """This process's lock of one dataset: one reservation or cap change at a time."""
        with self._locks_guard:
            return self._dataset_locks.setdefault(dataset, threading.Lock())

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
        cap = (check_epsilon(epsilon, "epsilon cap"), check_delta(delta, "delta cap"))
        with self._dataset_lock(dataset), self._store.transaction(write=True) as db:
            previous = store.read_cap(db, dataset)
            if (
                previous is not None
                and not allow_raise
                and (cap[0] > previous[0] or cap[1] > previous[1])
            ):
                raise ConfigurationError(
                    f"the cap on {dataset!r} is ε={previous[0]:.6g}, δ={previous[1]:.6g}; "
                    f"ε={cap[0]:.6g}, δ={cap[1]:.6g} would raise it: caps only go down unless "
                    "raised explicitly (pass --raise; it is audited as budget.cap_raised)"
                )
            change = cap_change(dataset, previous, cap, source)
            if change.action != "unchanged":
                store.write_cap(db, dataset, cap, self._clock())
        audit_cap(self._audit, change)
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
        configured = (check_epsilon(epsilon, "epsilon cap"), check_delta(delta, "delta cap"))
        with self._dataset_lock(dataset), self._store.transaction(write=True) as db:
            previous = store.read_cap(db, dataset)
            target = lowered(previous, configured)
            change = cap_change(dataset, previous, target, source)
            if change.action != "unchanged":
                store.write_cap(db, dataset, target, self._clock())
            elif previous is not None and configured != previous:
                change = dataclasses.replace(change, action="kept", requested=configured)
        audit_cap(self._audit, change)
        return change

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
        requested = (
            check_epsilon(epsilon_after, "epsilon_after"),
            check_delta(delta_after, "delta_after"),
        )
        return self._reserve(
            dataset,
            run_id,
            round,
            lambda db: requested,
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
            history = store.read_mechanisms(db, dataset, run_id)
            history.pop(check_round(round), None)
            eps, dlt = compose(MappingProxyType(history))
            return check_epsilon(eps, "epsilon_after"), check_delta(dlt, "delta_after")

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
        figures: Figures,
        *,
        agreement_cap: tuple[float, float] | None,
        mechanism: str | None,
        guarantee: str,
        trust: str,
    ) -> Debit:
        """Check the arguments, then assess and record in one transaction under the
        dataset's lock; audit after the commit (debit before release)."""
        check_id(dataset, what="dataset name")
        check_label(guarantee, trust)
        check_id(run_id, what="run_id")
        rnd = check_round(round)
        agreement = check_agreement_cap(agreement_cap)
        now = self._clock()
        with self._dataset_lock(dataset), self._store.transaction(write=True) as db:
            requested = figures(db)
            cap = store.read_cap(db, dataset)
            verdict = assess(
                store.job_spends(db, dataset), run_id, requested, cap=cap, agreement=agreement
            )
            repeat = False
            if verdict.allowed:
                seen = store.has_debit(db, dataset, run_id, rnd)
                repeat = seen and verdict.after == verdict.before
                if not repeat:
                    store.record_debit(
                        db,
                        dataset=dataset,
                        run_id=run_id,
                        round=rnd,
                        before=verdict.before,
                        after=verdict.after,
                        at=now,
                        mechanism=mechanism,
                        guarantee=guarantee,
                        trust=trust,
                    )
        if not verdict.allowed:
            refusal = verdict.refusal(dataset, run_id, rnd)
            audit_refusal(self._audit, refusal)
            raise PrivacyBudgetExceeded(refusal_message(refusal, verdict.jobs))
        debit = Debit(
            dataset=dataset,
            run_id=run_id,
            round=rnd,
            epsilon_before=verdict.before[0],
            epsilon_after=verdict.after[0],
            delta_before=verdict.before[1],
            delta_after=verdict.after[1],
            epsilon_total=verdict.total[0],
            delta_total=verdict.total[1],
            cap_epsilon=verdict.cap[0],
            cap_delta=verdict.cap[1],
            at=now,
            repeat=repeat,
            guarantee=guarantee,
            trust=trust,
        )
        audit_debit(self._audit, debit)
        return debit

    # -- reading -------------------------------------------------------------------------------
    def mechanisms(self, dataset: str, run_id: str) -> dict[int, str]:
        """The mechanism text recorded with each reserved round of one job (the latest per
        round; rounds reserved without one are left out)."""
        check_id(dataset, what="dataset name")
        check_id(run_id, what="run_id")
        if not self._store.exists:
            return {}
        with self._store.transaction(write=False) as db:
            return store.read_mechanisms(db, dataset, run_id)

    def datasets(self) -> list[str]:
        """Every dataset with a cap or a recorded spend, by name."""
        if not self._store.exists:
            return []
        with self._store.transaction(write=False) as db:
            return store.list_datasets(db)

    def spent(self, dataset: str) -> BudgetStatus:
        """A dataset's cap, spend across jobs (basic composition), what is left, and per job."""
        check_id(dataset, what="dataset name")
        cap: tuple[float, float] | None = None
        jobs: list[JobSpend] = []
        if self._store.exists:
            with self._store.transaction(write=False) as db:
                cap = store.read_cap(db, dataset)
                jobs = [
                    JobSpend(
                        run_id=run_id,
                        epsilon=eps,
                        delta=dlt,
                        rounds=rounds,
                        last_round=last,
                        guarantee=weakest(labels),
                    )
                    for run_id, eps, dlt, rounds, last, labels in store.job_rows(db, dataset)
                ]
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
