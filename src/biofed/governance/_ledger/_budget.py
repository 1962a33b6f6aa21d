"""The ledger's arithmetic, without storage: argument checks, which cap applies, basic
composition across jobs, spend that never shrinks, and what a cap command does.

Privacy notes
-------------
Across jobs the spends add up (basic composition: Dwork & Roth 2014, Thm 3.16, valid under
adaptive composition too); sums use :func:`math.fsum` and the comparison with the cap has no
tolerance, so a request that reaches the cap only by rounding is refused. A job's spend is
the maximum it ever reserved. See :mod:`biofed.governance._ledger` for the threat.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from biofed.core import ConfigurationError
from biofed.core.checks import check_float
from biofed.governance._ledger._records import UNLABELLED, CapAction, CapChange
from biofed.privacy import GUARANTEES

#: Labels from strongest to weakest (a job is only as good as its weakest round).
LABELS = (*GUARANTEES, UNLABELLED)

Pair = tuple[float, float]
_NO_CAP = "no cap is set for this dataset (set one with `biofed node budget-cap`)"


def check_epsilon(value: object, what: str) -> float:
    """An ε: a finite number >= 0."""
    return check_float(value, what, minimum=0)


def check_delta(value: object, what: str) -> float:
    """A δ: a finite number in [0, 1)."""
    return check_float(value, what, minimum=0, below=1)


def check_round(value: object) -> int:
    """A round number: an integer >= 0 (the message states both, whichever failed)."""
    try:
        number = -1 if isinstance(value, bool) else operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if number < 0:
        raise ConfigurationError(f"round must be an integer >= 0, got {value!r}")
    return int(number)


def check_label(guarantee: object, trust: object) -> str:
    """The label of a figure (one of :data:`LABELS`) and its trust text."""
    if guarantee not in LABELS or not isinstance(trust, str) or not isinstance(guarantee, str):
        raise ConfigurationError(f"guarantee must be one of {LABELS}, got {guarantee!r}")
    return guarantee


def check_agreement_cap(cap: object) -> Pair | None:
    """``None`` or an ``(ε, δ)`` pair the study agreement allows."""
    if cap is None:
        return None
    if not isinstance(cap, tuple) or len(cap) != 2:
        raise ConfigurationError(f"agreement_cap must be an (epsilon, delta) pair, got {cap!r}")
    return (
        check_epsilon(cap[0], "agreement epsilon cap"),
        check_delta(cap[1], "agreement delta cap"),
    )


def weakest(labels: Iterable[str]) -> str:
    """The weakest of ``labels`` (unknown ones ignored); ``"unlabelled"`` if none is known."""
    known = [label for label in labels if label in LABELS]
    return max(known, key=LABELS.index) if known else UNLABELLED


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    """What reserving a job's cumulative spend would do to a dataset's budget.

    ``before``/``after`` are the job's spend, ``spent`` the dataset's now, ``total`` the
    dataset's with the job raised to ``after``; ``cap`` is the cap checked (the site's, or
    the agreement's where lower), ``reason`` where it comes from.
    """

    requested: Pair
    before: Pair
    after: Pair
    spent: Pair
    total: Pair
    cap: Pair
    reason: str
    allowed: bool
    jobs: int

    def refusal(self, dataset: str, run_id: str, round: int) -> dict[str, Any]:
        """The refusal as the ``budget.refused`` audit event records it."""
        return {
            "dataset": dataset,
            "run_id": run_id,
            "round": round,
            "cap_epsilon": self.cap[0],
            "cap_delta": self.cap[1],
            "epsilon_spent": self.spent[0],
            "delta_spent": self.spent[1],
            "epsilon_job_requested": self.requested[0],
            "delta_job_requested": self.requested[1],
            "epsilon_total_requested": self.total[0],
            "delta_total_requested": self.total[1],
            "reason": self.reason,
        }


def assess(
    jobs: Mapping[str, Pair],
    run_id: str,
    requested: Pair,
    *,
    cap: Pair | None,
    agreement: Pair | None,
) -> Assessment:
    """Decide a reservation: ``jobs`` holds every job's recorded spend on the dataset.

    The job's spend becomes the larger of its recorded and requested figures (spend never
    shrinks); the dataset's total is the sum over jobs (basic composition); the request is
    allowed only if that total stays within the cap in ε and in δ, and a dataset without a
    cap allows nothing.
    """
    before = jobs.get(run_id, (0.0, 0.0))
    after = (max(before[0], requested[0]), max(before[1], requested[1]))
    spent = (math.fsum(e for e, _ in jobs.values()), math.fsum(d for _, d in jobs.values()))
    others = [v for r, v in jobs.items() if r != run_id]
    total = (
        math.fsum([*(e for e, _ in others), after[0]]),
        math.fsum([*(d for _, d in others), after[1]]),
    )
    if cap is None:
        limit, reason = (
            (0.0, 0.0),
            "no cap is set for this dataset (set one with `biofed node budget-cap`)",
        )
    else:
        limit, reason = cap, "site cap"
        if agreement is not None and (agreement[0] < cap[0] or agreement[1] < cap[1]):
            limit = (min(cap[0], agreement[0]), min(cap[1], agreement[1]))
            reason = "site cap limited by the study agreement"
    allowed = cap is not None and total[0] <= limit[0] and total[1] <= limit[1]
    return Assessment(
        requested=requested,
        before=before,
        after=after,
        spent=spent,
        total=total,
        cap=limit,
        reason=reason,
        allowed=allowed,
        jobs=len(jobs),
    )


def refusal_message(r: Mapping[str, Any], num_jobs: int) -> str:
    """One line: the cap, the spend, what the round asked for, and that nothing was spent."""

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


def cap_change(dataset: str, previous: Pair | None, cap: Pair, source: str) -> CapChange:
    """What setting ``cap`` over ``previous`` does: set, unchanged, raised or lowered."""
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


def lowered(previous: Pair | None, configured: Pair) -> Pair:
    """The cap a configured value may set: itself where there is none, else component by
    component the smaller (caps only go down by themselves)."""
    if previous is None:
        return configured
    return (min(configured[0], previous[0]), min(configured[1], previous[1]))
