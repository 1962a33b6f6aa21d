"""The privacy-budget ledger at a node: how much (ε, δ) each dataset has spent, across jobs.

The site, not the researcher, holds the budget. Each dataset gets a cap set by the site
(:meth:`PrivacyLedger.set_cap` from ``biofed node budget-cap``, :meth:`PrivacyLedger.lower_cap`
from ``node.toml`` at node start); a study agreement may lower it further for one job
(``agreement_cap`` on :meth:`PrivacyLedger.reserve`). Before a round's output leaves the
site, the node asks the ledger to *reserve* the ε(δ) its accountant says the job will have
spent after that round; the ledger records the debit durably, or refuses and nothing leaves.

The parts: :mod:`._budget` is the arithmetic (which cap applies, composition across jobs,
spend that never shrinks), :mod:`._store` the SQLite store, :mod:`._events` the audit hook's
events, :mod:`._ledger` the :class:`PrivacyLedger` that ties them together. Storage is one
SQLite file in the node folder (:data:`LEDGER_FILE`, WAL journal, ``synchronous=FULL``), or
memory (``PrivacyLedger(":memory:")``, for a simulation's virtual sites)::

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

from biofed.governance._hooks import AuditHook
from biofed.governance._ledger._ledger import PrivacyLedger
from biofed.governance._ledger._records import (
    UNLABELLED,
    BudgetStatus,
    CapChange,
    Debit,
    JobSpend,
)

LEDGER_FILE = "privacy.db"
"""The ledger's file name in a node folder."""

__all__ = [
    "LEDGER_FILE",
    "UNLABELLED",
    "AuditHook",
    "BudgetStatus",
    "CapChange",
    "Debit",
    "JobSpend",
    "PrivacyLedger",
]
