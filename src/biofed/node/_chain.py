"""The site's instruction path: one chain of steps with one signature.

A step takes the work in hand and the rest of the chain, and returns the reply (like
Flower's client mods or ASGI middleware)::

    Step = (work, call_next) -> Reply        Next = (work) -> Reply

It may answer without calling on (a refusal, a secure-aggregation stage that trains
nothing), hand on changed work (what it decided: the clearance, the privacy plan), and
change the reply on its way back (privatise, control, audit). Steps never raise: a failure is
an error reply. :func:`site_chain` is the one place that puts them in order — the order an
auditor verifies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from biofed.core import Instruction, Reply
from biofed.governance import Clearance
from biofed.node._privacy import RoundPrivacy


@dataclass(frozen=True, slots=True, kw_only=True)
class Work:
    """One instruction on its way through the chain, with what the steps before decided.

    Attributes
    ----------
    instruction:
        The instruction (for a secure round's masked input: the training instruction the
        secure-aggregation step hands on).
    secure:
        True only when the secure-aggregation step hands on the training of a masked
        input: what this round releases is masked (the policy's ``secure_aggregation``).
        Nothing in the instruction can set it.
    clearance:
        The governance step's clearance (agreement, dataset, approved bundle), or None on
        a development node.
    plan:
        The round's privacy plan once planned (None: the job has no DP).
    sent:
        What the steps add to the audit entry of what leaves (``round.sent``): output
        control's ``num_examples`` and ``dropped_metrics``, privacy's ``dp_*`` figures.
        Shared by every step of one pass.
    """

    instruction: Instruction
    secure: bool = False
    clearance: Clearance | None = None
    plan: RoundPrivacy | None = None
    sent: dict[str, Any] = field(default_factory=dict)


#: The rest of the chain: runs the work and returns the reply.
Next = Callable[[Work], Reply]


class Step(Protocol):
    """One concern of the site's instruction path."""

    def __call__(self, work: Work, call_next: Next) -> Reply:
        """Handle ``work``, calling ``call_next`` to go on (or not)."""
        ...


def chain(steps: Sequence[Step], last: Next) -> Next:
    """``steps`` (outermost first) around ``last``, as one handler."""
    handler = last
    for step in reversed(steps):
        handler = _bind(step, handler)
    return handler


def _bind(step: Step, call_next: Next) -> Next:
    def handle(work: Work) -> Reply:
        return step(work, call_next)

    return handle


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSteps:
    """The steps of one site; a development node has no ``policy``, ``control`` or
    ``audit`` (no governance, no audit log)."""

    audit: Step | None
    secure: Step
    policy: Step | None
    control: Step | None
    privacy: Step
    bound: Step
    run: Next


def site_chain(steps: SiteSteps) -> Next:
    """The site's instruction path, in the order an auditor verifies.

    On the way in: **check** (policy: agreement, dataset, cohort, bundle, outputs and the
    privacy asked for; refusals run nothing), **reserve** (privacy: the round's ε debited in
    the ledger before anything runs), **run** (the task, in the approved bundle's sandbox).
    On the way out: **privatise** (privacy: the site's own clip and noise, DP-SGD checked),
    **control** (only the model's declared tensors and the agreement's metrics leave),
    **audit** (what leaves is logged, hash and size, before it leaves). Between the task and
    privatisation, the norm bound: a training update is scaled down to the round's
    ``max_update_norm`` (robust aggregation's norm bounding) before DP and before masking::

        audit → secure aggregation → policy → output control → privacy → bound → run the task
          ↑ audit ← mask ←──────────────────── control ←─ privatise ←─ bound ←──┘

    Secure aggregation sits between audit and policy: its key stages answer without
    training; its masked-input stage hands the round's training on (checked, privatised
    and controlled like any other) and masks what comes back, so only the masked vector is
    audited and leaves.
    """
    order = [steps.audit, steps.secure, steps.policy, steps.control, steps.privacy, steps.bound]
    return chain([step for step in order if step is not None], steps.run)
