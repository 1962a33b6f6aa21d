"""The chain's last step: run the task on the site's data.

The task gets the instruction with the node's own DP-SGD settings (the plan's ``dp_*``
keys; the coordinator's are removed, :func:`~biofed.node._privacy.task_instruction`); under
governance it is the approved bundle, in its sandboxed worker.
"""

from __future__ import annotations

import dataclasses

from biofed.core import BiofedError, Reply
from biofed.governance import AuditLog
from biofed.node._chain import Work
from biofed.node._privacy import task_instruction
from biofed.node._sites import SiteTasks
from biofed.node._step_audit import record, where


class RunTask:
    """Runs the task the work names (the cleared bundle under governance).

    Parameters
    ----------
    node_id:
        The site's identity.
    sites:
        The site's datasets and tasks.
    audit:
        The site's audit log: a failed round is recorded there (``round.failed``), or None.
    """

    def __init__(self, node_id: str, sites: SiteTasks, audit: AuditLog | None) -> None:
        self.node_id = node_id
        self.sites = sites
        self.audit = audit

    def __call__(self, work: Work) -> Reply:
        instruction = work.instruction
        try:
            site = self.sites.site(instruction.job, work.clearance)
        except BiofedError as exc:
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        run = task_instruction(dataclasses.replace(instruction, node_id=self.node_id), work.plan)
        reply = site.handle(run)
        if not reply.ok and self.audit is not None and work.clearance is not None:
            record(
                self.audit, "round.failed", {**where(instruction), "error": str(reply.error)[:500]}
            )
        return reply
