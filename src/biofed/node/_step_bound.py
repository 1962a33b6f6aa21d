"""Step: norm bounding — an honest site bounds its own training update before it leaves.

When a round's training instruction carries ``directives.max_update_norm`` (the flat key
:data:`biofed.core.sections.MAX_UPDATE_NORM`, ``robust.max_update_norm``; a ``Robust``
strategy with norm bounding puts it in every training plan), the site scales its update
``xᵢ − x`` down to L2 norm M (:func:`biofed.privacy.clip_l2`) on the way out of the task.
The step sits between the privacy step and the task, so every training path gets it: plain
training, the approved bundle in its sandbox, and a secure round's masked input (the
secure-aggregation step masks what comes back through this step, so the bound holds
*before masking*).

Order with differential privacy: the bound comes first, DP's privatisation after (run →
bound → privatise). In client mode the privacy step then clips to its own C (which alone
bounds the sensitivity the accountant counts, whatever M is) and adds the site's noise
share to the bounded update; the reverse order would scale the noise by a data-dependent
factor and break the distributed-noise accounting (the sum's noise would no longer be the
Gaussian the accountant counts). In sample mode the bound is post-processing of DP-SGD's
output. A released update can therefore exceed M by the site's own DP noise, never by its
data.

Without DP and outside a secure round the reply also states the update's norm before the
bound (``robust.update_norm``; under governance, output control lets it leave only if the
agreement names it). Under DP it is left out — the raw norm is data-dependent and not
privatised — and a secure round's masked input carries no metrics but ``dp.*``.

Security notes
--------------
Threat: a malicious minority scaling its update to dominate the aggregate (model
replacement, Bagdasaryan et al. 2020). Norm bounding (Sun et al. 2019, "Can You Really
Backdoor Federated Learning?") caps each *honest* site's influence, and under secure
aggregation it is the only per-update bound there is: the coordinator never sees a single
update and can only check that the unmasked mean's norm is ≤ M. A malicious site can skip
this step; the coordinator's check of the sum, not this step, is what detects it
(docs/robustness.md). The directive comes from the coordinator: one that is not a finite
number > 0 is refused before the task runs (an error reply naming it). It is checked after
the round's ε is reserved (the privacy step is outside this one): only a faulty or hostile
coordinator sends a malformed bound, and it could spend the budget with well-formed rounds
anyway.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from biofed.core import (
    BiofedError,
    ConfigurationError,
    MessageKind,
    ParameterSet,
    PayloadError,
    Reply,
)
from biofed.core.sections import MAX_UPDATE_NORM
from biofed.governance import AuditLog
from biofed.node._chain import Next, Work
from biofed.node._step_audit import withhold
from biofed.privacy import clip_l2, l2_norm

#: The metric stating the update's L2 norm before the site's bound (plain rounds only).
UPDATE_NORM_METRIC = "robust.update_norm"

# Rounding into a narrow dtype (float32 parameters) can leave the stored update a few ulps
# past M; the bound is shrunk and retried this many times before the site sends no change.
_RETRIES = 8


def check_bound(value: object) -> float:
    """The round's norm bound M, which must be a finite number > 0.

    Raises
    ------
    ConfigurationError
        Naming the directive, for anything else (NaN, ±inf, zero, a negative number).
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise ConfigurationError(
            f"the round's directive {MAX_UPDATE_NORM} must be a finite number > 0, got {value!r}"
        )
    return float(value)


def bound_update(
    trained: ParameterSet, start: ParameterSet, max_norm: float
) -> tuple[ParameterSet, float]:
    """``trained`` with its update ``trained − start`` scaled down to L2 norm ≤ ``max_norm``.

    Returns the parameters to send (``trained`` itself, unchanged, when the update is within
    the bound; else each tensor in ``trained``'s own dtype) and the update's norm before the
    bound. The bound holds on the stored values, measured in float64: when rounding into a
    narrow dtype overshoots it, the target is shrunk and tried again, and as a last resort
    the site sends ``start`` (no change), which is always within it.

    Raises
    ------
    PayloadError
        If the reply's tensors are not the model's (names or shapes), or the update holds
        NaN or ±inf.
    """
    if set(trained) != set(start) or any(
        np.shape(trained[name]) != np.shape(start[name]) for name in start
    ):
        raise PayloadError("robust: the trained tensors are not the model's (names or shapes)")
    update = _difference(trained, start)
    clipped, norm = clip_l2(update, max_norm)
    if norm <= max_norm:
        return trained, norm
    target = clipped
    for _ in range(_RETRIES):
        sent = ParameterSet(
            {
                name: (np.asarray(start[name], dtype=np.float64) + target[name]).astype(
                    trained[name].dtype
                )
                for name in start
            }
        )
        excess = l2_norm(_difference(sent, start)) - max_norm
        if excess <= 0:
            return sent, norm
        smaller = l2_norm(target) - 2.0 * excess
        if not smaller > 0:
            break
        target, _ = clip_l2(target, smaller)
    return ParameterSet({n: np.asarray(start[n]).astype(trained[n].dtype) for n in start}), norm


def _difference(a: ParameterSet, b: ParameterSet) -> ParameterSet:
    """``a − b`` tensor by tensor, in float64."""
    return ParameterSet(
        {name: np.asarray(a[name], dtype=np.float64) - np.asarray(b[name]) for name in b}
    )


class NormBoundStep:
    """Bounds the norm of this site's training update when the round directs it.

    Parameters
    ----------
    node_id:
        The site's identity.
    audit:
        The site's audit log (a reply the site cannot bound is withheld there), or None.
    """

    def __init__(self, node_id: str, audit: AuditLog | None) -> None:
        self.node_id = node_id
        self.audit = audit

    def __call__(self, work: Work, call_next: Next) -> Reply:
        instruction = work.instruction
        directive = instruction.directives.max_update_norm
        if instruction.kind is not MessageKind.TRAIN or directive is None:
            return call_next(work)
        try:
            bound = check_bound(directive)
        except BiofedError as exc:  # before anything runs
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        reply = call_next(work)
        if not reply.ok or reply.parameters is None:
            return reply  # the privacy step refuses a training reply without parameters
        try:
            parameters, norm = bound_update(reply.parameters, instruction.parameters, bound)
        except BiofedError as exc:
            return withhold(self.audit, instruction, exc, self.node_id)
        work.sent.update(max_update_norm=bound, update_bounded=norm > bound)
        metrics = reply.metrics
        if work.plan is None and not work.secure:
            metrics = {**metrics, UPDATE_NORM_METRIC: norm}
        return dataclasses.replace(reply, parameters=parameters, metrics=metrics)
