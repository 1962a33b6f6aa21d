"""Step: the site's differential privacy — plan, reserve, privatise.

On the way in the round is planned from the job's privacy section (under governance the
policy step has planned it already, since the check weighs the planned ε) and its ε is
reserved in the site's ledger *before anything runs*; on the way out the reply is privatised
(:func:`~biofed.node._privacy.privatise_reply`: client mode clips and adds the site's noise
share; sample mode checks the task ran DP-SGD with the planned noise) and states the job's
cumulative spend at this site (``dp.epsilon``, ``dp.delta``, ``dp.guarantee``).

Privacy notes
-------------
Threat: a release past the site's budget, or one whose noise the site did not control. See
:mod:`biofed.node._privacy` (debit before release; the node's own accountant; ε figures from
the coordinator are never used).

A QUERY that asks for DP answers (its ``dp``) reserves this pass's (ε, δ) — the run's
cumulative spend by basic composition over its passes — before the site answers
(:meth:`~biofed.node._privacy.SitePrivacy.reserve_query`); the answer's noise is drawn at
the site by its CSPRNG. A query without DP passes untouched: nothing is debited.
"""

from __future__ import annotations

import dataclasses

from biofed.core import BiofedError, MessageKind, Reply
from biofed.governance import AuditLog, Clearance
from biofed.node._chain import Next, Work
from biofed.node._privacy import (
    QUERY_TRUST,
    RoundPrivacy,
    SitePrivacy,
    fit_plan,
    plan_for,
    privatise_reply,
    with_spend,
)
from biofed.node._queries import read_request
from biofed.node._sites import SiteTasks
from biofed.node._step_audit import withhold


class PrivacyStep:
    """Plans, reserves and privatises each DP training round of this site.

    Parameters
    ----------
    node_id:
        The site's identity.
    privacy:
        The site's ledger (or, in development, its in-memory history).
    sites:
        The site's datasets and tasks (the record count; the task's DP declaration).
    allow_heuristic:
        Development nodes: ``node.toml``'s acceptance of heuristic DP figures.
    audit:
        The site's audit log (withheld replies are recorded there), or None.
    """

    def __init__(
        self,
        node_id: str,
        privacy: SitePrivacy,
        sites: SiteTasks,
        *,
        allow_heuristic: bool,
        audit: AuditLog | None,
    ) -> None:
        self.node_id = node_id
        self.privacy = privacy
        self.sites = sites
        self.allow_heuristic = allow_heuristic
        self.audit = audit

    def plan(self, work: Work) -> RoundPrivacy | None:
        """The round's plan before it is fitted to the task (training only; None without
        DP or without the dataset).

        Raises
        ------
        ConfigurationError
            On malformed or inconsistent privacy settings.
        """
        instruction = work.instruction
        if instruction.kind is not MessageKind.TRAIN:
            return None
        size = self.sites.train_size(instruction.job)
        if size is None:
            return None
        return plan_for(instruction.job, instruction.directives, instruction.task_config, size)

    def __call__(self, work: Work, call_next: Next) -> Reply:
        instruction = work.instruction
        if instruction.kind is MessageKind.QUERY:
            return self._query(work, call_next)
        try:
            plan = work.plan
            if work.clearance is None:  # a development node: nothing has planned the round
                plan = self.plan(work)
                if plan is not None:
                    task = self.sites.site(instruction.job).task
                    plan = fit_plan(plan, task, instruction.task_config, self.allow_heuristic)
            spend = None
            if plan is not None:  # debit before anything runs; the ledger audits refusals
                spend = self.privacy.reserve(
                    plan,
                    dataset=_dataset(work),
                    instruction=instruction,
                    agreement_cap=_agreement_cap(work.clearance, self.node_id),
                )
        except BiofedError as exc:
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        reply = call_next(dataclasses.replace(work, plan=plan))
        if plan is None or spend is None or not reply.ok:
            return reply
        try:
            reply = with_spend(privatise_reply(reply, instruction, plan), spend, plan.guarantee)
        except BiofedError as exc:
            return withhold(self.audit, instruction, exc, self.node_id)
        work.sent.update(
            dp_epsilon=spend[0], dp_delta=spend[1], dp_guarantee=plan.guarantee, dp_trust=plan.trust
        )
        return reply

    def _query(self, work: Work, call_next: Next) -> Reply:
        """A DP query pass: reserve, answer, state the run's spend; else pass on."""
        instruction = work.instruction
        try:
            request = read_request(instruction, secure=work.secure)
            dp = request.query.dp
            if dp is None:
                return call_next(work)
            spend = self.privacy.reserve_query(
                dataset=_dataset(work),
                instruction=instruction,
                query_sha256=request.query.digest,
                pass_no=request.pass_no,
                mechanism=dp.mechanism,
                epsilon=dp.epsilon,
                delta=dp.delta,
                agreement_cap=_agreement_cap(work.clearance, self.node_id),
            )
        except BiofedError as exc:
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        reply = call_next(work)
        if not reply.ok:
            return reply
        work.sent.update(
            dp_epsilon=spend[0], dp_delta=spend[1], dp_guarantee="exact", dp_trust=QUERY_TRUST
        )
        return with_spend(reply, spend, "exact")


def _dataset(work: Work) -> str:
    if work.clearance is not None:
        return work.clearance.dataset.name
    return work.instruction.job.dataset or ""


def _agreement_cap(clearance: Clearance | None, site: str) -> tuple[float, float] | None:
    """The (ε, δ) the agreement allows this site, when it sets one."""
    if clearance is None:
        return None
    privacy = clearance.agreement.agreement.privacy
    if site in privacy.max_epsilon and site in privacy.max_delta:
        return privacy.max_epsilon[site], privacy.max_delta[site]
    return None
