"""The chain's last step: run the task on the site's data.

The task gets the instruction with the node's own DP-SGD settings (the plan's ``dp_*``
keys; the coordinator's are removed, :func:`~biofed.node._privacy.task_instruction`); under
governance it is the approved bundle, in its sandboxed worker. A SUMMARISE instruction (a
preprocessing pass) runs no task: the site summarises its study table as the request asks
(:meth:`~biofed.node._sites.SiteTasks.summarise`), suppressing counts below the governed
minimum cohort (or :data:`~biofed.node._sites.DEFAULT_MIN_CELL` on a development node). A
QUERY instruction (one pass of a federated analytics query) runs no task either: the site
answers the request on its query table under its disclosure rules, its cohort checked
against the query log (:class:`~biofed.node._queries.SiteQueries`).
"""

from __future__ import annotations

import dataclasses

from biofed.core import BiofedError, MessageKind, Reply
from biofed.governance import AuditLog, Clearance
from biofed.node._chain import Work
from biofed.node._privacy import task_instruction
from biofed.node._queries import SiteQueries
from biofed.node._sites import DEFAULT_MIN_CELL, SiteTasks
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
    queries:
        The site's query answering (its tables, rules, query log).
    """

    def __init__(
        self, node_id: str, sites: SiteTasks, audit: AuditLog | None, queries: SiteQueries
    ) -> None:
        self.node_id = node_id
        self.sites = sites
        self.audit = audit
        self.queries = queries

    def __call__(self, work: Work) -> Reply:
        instruction = work.instruction
        if instruction.kind is MessageKind.SUMMARISE:
            try:
                return self.sites.summarise(instruction, min_cell=min_cell(work.clearance))
            except BiofedError as exc:
                return Reply.error_for(instruction, exc, node_id=self.node_id)
        if instruction.kind is MessageKind.QUERY:
            try:
                return self.queries.reply(instruction, work.clearance, secure=work.secure)
            except BiofedError as exc:
                return self._refused(work, exc)
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

    def _refused(self, work: Work, exc: BiofedError) -> Reply:
        """The error reply of a query the site would not or could not answer; a disclosure
        refusal is audited as ``query.refused``, a failure as ``round.failed``."""
        instruction = work.instruction
        if self.audit is not None and work.clearance is not None:
            refused = str(exc).startswith("disclosure:")
            event = "query.refused" if refused else "round.failed"
            record(self.audit, event, {**where(instruction), "error": str(exc)[:500]})
        return Reply.error_for(instruction, exc, node_id=self.node_id)


def min_cell(clearance: Clearance | None) -> int:
    """The disclosure threshold of what a summary releases: the larger of the agreement's
    and the dataset's minimum cohort under governance, else :data:`DEFAULT_MIN_CELL`."""
    if clearance is None:
        return DEFAULT_MIN_CELL
    return max(clearance.agreement.agreement.min_cohort, clearance.dataset.min_cohort)
