"""Step: output control — only what the study agreement allows leaves the site.

On the way out a successful reply is checked by
:func:`~biofed.governance.control_reply`: the parameters must match the model's declared
tensors, no extras but the allowed ones, and metrics the agreement does not name are dropped
(and listed in the ``round.sent`` entry). The privacy step's statement of the site's own
spend (``dp.epsilon``, ``dp.delta``, ``dp.guarantee``) is the node's, not the task's output:
it always leaves. A summary (the reply to a SUMMARISE instruction) may carry only the
arrays of the summary it is — no metrics, no extras, no other array names
(:func:`control_summary`). A query's answer (the reply to a QUERY instruction) may carry
only float64 arrays — for a summable request exactly the request's layout — and no metrics
but the privacy step's ``dp.*`` statement, no extras (:func:`control_query`).

Security notes
--------------
Threat: task code smuggling data out in extra tensors, extra parameter names, odd shapes
or extra metric names. Nothing of a reply that fails the check leaves (``round.withheld``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from biofed.core import BiofedError, MessageKind, PolicyViolation, Reply
from biofed.data import SiteSummary
from biofed.governance import AuditLog, control_reply
from biofed.node._chain import Next, Work
from biofed.node._queries import read_request
from biofed.node._step_audit import withhold
from biofed.privacy import DELTA_METRIC, EPSILON_METRIC, GUARANTEE_METRIC

#: The privacy step's statement of the site's spend (added after the task ran).
_STATEMENT = (EPSILON_METRIC, DELTA_METRIC, GUARANTEE_METRIC)


class OutputControlStep:
    """Checks and trims what a governed site's reply would release."""

    def __init__(self, node_id: str, audit: AuditLog) -> None:
        self.node_id = node_id
        self.audit = audit

    def __call__(self, work: Work, call_next: Next) -> Reply:
        reply = call_next(work)
        clearance = work.clearance
        if clearance is None or not reply.ok:
            return reply
        if work.instruction.kind is MessageKind.SUMMARISE:
            try:
                controlled = control_summary(reply)
            except BiofedError as exc:
                return withhold(self.audit, work.instruction, exc, self.node_id)
            work.sent.update(num_examples=controlled.num_examples, dropped_metrics=[])
            return controlled
        if work.instruction.kind is MessageKind.QUERY:
            try:
                controlled = control_query(reply, work)
            except BiofedError as exc:
                return withhold(self.audit, work.instruction, exc, self.node_id)
            work.sent.update(num_examples=controlled.num_examples, dropped_metrics=[])
            return controlled
        statement = {}
        if work.plan is not None:
            statement = {k: v for k, v in reply.metrics.items() if k in _STATEMENT}
        task_output = dataclasses.replace(
            reply, metrics={k: v for k, v in reply.metrics.items() if k not in statement}
        )
        try:
            controlled, dropped = control_reply(task_output, work.instruction, clearance)
        except BiofedError as exc:
            return withhold(self.audit, work.instruction, exc, self.node_id)
        work.sent.update(num_examples=controlled.num_examples, dropped_metrics=list(dropped))
        if not statement:
            return controlled
        return dataclasses.replace(controlled, metrics={**controlled.metrics, **statement})


def control_summary(reply: Reply) -> Reply:
    """``reply`` if it releases a summary and nothing else.

    Raises
    ------
    PolicyViolation
        ``"outputs: why"`` when it carries metrics, extras, or arrays that are not exactly
        those of the :class:`~biofed.data.SiteSummary` they parse as.

    Security notes
    --------------
    Threat: code at the site (or a bug) adding row-level arrays to what the preprocessing
    phase releases. The summary is parsed back and re-encoded; only when its own arrays are
    exactly the reply's does the reply leave (the counts in it were disclosure-controlled by
    :func:`biofed.data.summarise`).
    """
    if reply.metrics or reply.extras:
        raise PolicyViolation("outputs: a summary reply may carry no metrics or extras")
    if reply.parameters is None:
        raise PolicyViolation("outputs: a summary reply carries no summary")
    try:
        summary = SiteSummary.from_arrays(dict(reply.parameters))
    except BiofedError as exc:
        raise PolicyViolation(f"outputs: the reply is not a summary ({exc})") from None
    if set(summary.to_arrays()) != set(reply.parameters):
        raise PolicyViolation("outputs: the reply carries arrays that are not the summary's")
    return reply


def control_query(reply: Reply, work: Work) -> Reply:
    """``reply`` if it releases a query's answer and nothing else.

    Raises
    ------
    PolicyViolation
        ``"outputs: why"`` when it carries extras, metrics other than the privacy step's
        ``dp.*`` statement, arrays that are not float64, or — for a summable request —
        arrays other than exactly the request's layout (names and shapes).

    Security notes
    --------------
    Threat: code at the site (or a bug) adding row-level arrays or metric values to what a
    query releases. Only the answer's own arrays leave; the disclosure control in them was
    applied by :func:`biofed.analytics.answer` under the site's rules.
    """
    if reply.extras:
        raise PolicyViolation("outputs: a query reply may carry no extras")
    extra = sorted(k for k in reply.metrics if k not in _STATEMENT)
    if extra:
        raise PolicyViolation(f"outputs: a query reply may carry no metrics ({len(extra)} found)")
    if reply.parameters is None:
        raise PolicyViolation("outputs: a query reply carries no answer")
    for name, value in reply.parameters.items():
        if np.asarray(value).dtype != np.float64:
            raise PolicyViolation(f"outputs: answer array {name[:64]!r} is not float64")
    request = read_request(work.instruction, secure=work.secure)
    if request.layout is not None:
        if set(reply.parameters) != set(request.layout):
            raise PolicyViolation("outputs: the reply's arrays are not the request's layout")
        for name, shape in request.layout.items():
            if reply.parameters[name].shape != tuple(shape):
                raise PolicyViolation(f"outputs: answer array {name[:64]!r} has another shape")
    return reply
