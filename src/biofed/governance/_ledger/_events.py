"""What the ledger tells its audit hook: one event per change or refusal, after the fact.

Events: ``budget.cap_set``, ``budget.cap_lowered``, ``budget.cap_raised``,
``budget.cap_kept`` (``node.toml`` asked for a higher cap than the ledger's, which stays),
``budget.debited`` (after the debit is committed) and ``budget.refused``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from biofed.governance._hooks import AuditHook
from biofed.governance._ledger._records import CapChange, Debit


def audit_cap(hook: AuditHook, change: CapChange) -> None:
    """``budget.cap_<action>`` for a cap that changed, or was kept against a request."""
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
    hook(f"budget.cap_{change.action}", data)


def audit_debit(hook: AuditHook, debit: Debit) -> None:
    """``budget.debited``: the job's and the dataset's spend now, and the cap checked."""
    hook(
        "budget.debited",
        {
            "dataset": debit.dataset,
            "run_id": debit.run_id,
            "round": debit.round,
            "epsilon_job": debit.epsilon_after,
            "delta_job": debit.delta_after,
            "epsilon_total": debit.epsilon_total,
            "delta_total": debit.delta_total,
            "cap_epsilon": debit.cap_epsilon,
            "cap_delta": debit.cap_delta,
            "repeat": debit.repeat,
            "guarantee": debit.guarantee,
            "trust": debit.trust,
        },
    )


def audit_refusal(hook: AuditHook, refusal: Mapping[str, Any]) -> None:
    """``budget.refused``: what was asked, against which cap and spend."""
    hook("budget.refused", refusal)
