"""Step: the site's governance policy — fetch the approved bundle, check, accept or refuse.

Before anything runs, :func:`~biofed.governance.check_instruction` checks the study
agreement, the dataset, the cohort, the task bundle, the outputs and the privacy the job asks
for (with the round's privacy plan, fitted to the approved task's DP declaration). A refusal
is audited (``job.refused``) and nothing runs; an acceptance is audited (``job.accepted``,
with the agreement's and the dataset's digests) before the work goes on with its clearance.

Security notes
--------------
Threat: a coordinator that asks a site for what its agreement does not allow. Nothing in an
instruction is taken on the coordinator's word: the agreement must be signed by every party
(checked with the consortium CA and CRL), the bundle approved by this site's operator and its
bytes must match the digest, and whether the round is secure comes from the node's own
secure-aggregation step (:attr:`~biofed.node._chain.Work.secure`), never from the instruction.

A QUERY is checked the same way, as what it is: its request is read first (malformed, or
marked secure when it did not come through secure aggregation: refused), its kind must be
in the agreement's ``[analytics] allowed``, its DP is the query's own, and it runs no
bundle (:mod:`biofed.governance._policy`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from biofed.core import (
    BiofedError,
    ConfigurationError,
    DataError,
    Instruction,
    MessageKind,
    PolicyViolation,
    Reply,
)
from biofed.data import SiteData
from biofed.governance import (
    AuditLog,
    PolicyRequest,
    SitePolicy,
    check_digest,
    check_instruction,
    heuristic_dp_allowed,
    read_bundle,
    requested_metrics,
)
from biofed.node._chain import Next, Work
from biofed.node._privacy import RoundPrivacy, fit_plan
from biofed.node._queries import read_request
from biofed.node._sites import SiteTasks
from biofed.node._step_audit import record, where
from biofed.node._step_privacy import PrivacyStep

#: Downloads a bundle by digest from the coordinator (None: the node process set none).
FetchBundle = Callable[[], Callable[[str], bytes] | None]


class PolicyStep:
    """Checks each instruction against the site's governance before anything runs.

    Parameters
    ----------
    node_id:
        The site's identity.
    policy, audit:
        The site's policy (agreements, registry, approvals, bundles) and audit log.
    sites:
        The site's datasets and tasks.
    sources:
        The files the node reads by dataset name (``node.toml``'s dataset files, and study
        sources that are files): the registry pins them.
    locations:
        The OMOP CDMs the node reads by dataset name (their password-free locations).
    privacy:
        The privacy step, whose plan the check weighs.
    fetcher:
        Returns the function that downloads a bundle from the coordinator, if any.
    """

    def __init__(
        self,
        node_id: str,
        policy: SitePolicy,
        audit: AuditLog,
        *,
        sites: SiteTasks,
        sources: Mapping[str, Path],
        locations: Mapping[str, str] | None = None,
        privacy: PrivacyStep,
        fetcher: FetchBundle,
    ) -> None:
        self.node_id = node_id
        self.policy = policy
        self.audit = audit
        self.sites = sites
        self.sources = sources
        self.locations: Mapping[str, str] = locations or {}
        self.privacy = privacy
        self.fetcher = fetcher

    def __call__(self, work: Work, call_next: Next) -> Reply:
        instruction = work.instruction
        self._fetch_if_approved(instruction)
        try:
            query = None
            if instruction.kind is MessageKind.QUERY:
                try:
                    query = read_request(instruction, secure=work.secure).query
                except ConfigurationError as exc:
                    raise PolicyViolation(
                        f"outputs: the query request is malformed: {exc}"
                    ) from None
            summarise_first = instruction.kind not in (MessageKind.SUMMARISE, MessageKind.QUERY)
            if instruction.job.study is not None and summarise_first:
                # The spec must be approved (and its cohort large enough) before the site
                # compiles it to plan the round's privacy: checked as a summary first.
                check_instruction(self.policy, self._request(work, None, MessageKind.SUMMARISE))
            try:
                plan = self.privacy.plan(work)
            except ConfigurationError as exc:
                raise PolicyViolation(f"privacy: {exc}") from None
            request = self._request(work, plan)
            if query is not None:
                request = dataclasses.replace(
                    request,
                    rows=0,
                    query_kind=query.kind,
                    differential_privacy=query.dp is not None,
                )
            clearance = check_instruction(self.policy, request)
            if plan is not None:  # the approved bundle's declaration, read in its sandbox
                plan = fit_plan(
                    plan,
                    self.sites.site(instruction.job, clearance).task,
                    instruction.task_config,
                    heuristic_dp_allowed(clearance),
                )
        except PolicyViolation as exc:
            record(self.audit, "job.refused", {**where(instruction), "rule": str(exc)})
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        try:
            record(
                self.audit,
                "job.accepted",
                {
                    **where(instruction),
                    "agreement": clearance.agreement.agreement.agreement_id,
                    "agreement_sha256": clearance.agreement.agreement.digest(),
                    **({} if clearance.bundle is None else {"bundle": clearance.bundle.digest}),
                    "dataset": clearance.dataset.name,
                    "dataset_sha256": clearance.dataset.sha256,
                    **(
                        {}
                        if instruction.job.study is None
                        else {"study_sha256": instruction.job.study.digest}
                    ),
                    **(
                        {}
                        if query is None
                        else {"query_kind": query.kind, "query_sha256": query.digest}
                    ),
                },
                strict=True,
            )
        except BiofedError as exc:
            return Reply.error_for(instruction, exc, node_id=self.node_id)
        return call_next(dataclasses.replace(work, clearance=clearance, plan=plan))

    def _request(
        self, work: Work, plan: RoundPrivacy | None, kind: MessageKind | None = None
    ) -> PolicyRequest:
        instruction = work.instruction
        job = instruction.job
        kind = instruction.kind if kind is None else kind
        dataset = job.dataset or ""
        rows: int | Callable[[], int] = 0
        if job.study is not None:
            if self.sites.holds(job):  # compiled only once the spec passed the dataset rule
                rows = functools.partial(_study_rows, self.sites, instruction, kind)
        elif dataset in self.sites.data:
            rows = _rows(self.sites.data[dataset], instruction)
        return PolicyRequest(
            kind=kind,
            agreement=job.agreement,
            dataset=dataset,
            bundle=job.bundle,
            dataset_path=self.sources.get(dataset),
            dataset_location=self.locations.get(dataset),
            rows=rows,
            metrics=requested_metrics({} if job.metrics is None else {"metrics": job.metrics}),
            secure_aggregation=work.secure,
            differential_privacy=job.privacy is not None,
            dp_planned=None if plan is None else (plan.planned_epsilon(), plan.settings.delta),
            dp_seeded=plan is not None and plan.settings.seeded,
            study=None if job.study is None else job.study.digest,
        )

    def _fetch_if_approved(self, instruction: Instruction) -> None:
        """Fetch the job's bundle from the coordinator when this site approved its digest but
        does not hold the file yet. The bytes are checked against the digest before they are
        kept; whether the bundle may run is still decided by :func:`check_instruction`."""
        digest = instruction.job.bundle
        fetch = self.fetcher()
        if digest is None or fetch is None:
            return
        try:
            file = self.policy.bundles_dir / f"{check_digest(digest)}.zip"
            if file.is_file() or not self.policy.approvals.is_approved(digest):
                return
            data = fetch(digest)
            read_bundle(data, expected_digest=digest)
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".part{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, file)
        except BiofedError as exc:
            record(self.audit, "bundle.fetch_failed", {"bundle": str(digest), "reason": str(exc)})
            return
        record(self.audit, "bundle.fetched", {"bundle": digest, "bytes": len(data)})


def _rows(data: SiteData, instruction: Instruction) -> int:
    """Rows of the split an instruction uses (training rows for TRAIN and SUMMARISE)."""
    if instruction.kind is not MessageKind.EVALUATE:
        return len(data.train)
    try:
        return len(data.split(str(instruction.task_config.get("split", "test"))))
    except DataError:
        return 0


def _study_rows(sites: SiteTasks, instruction: Instruction, kind: MessageKind) -> int:
    """Rows of a study job's split: the study table's training rows for SUMMARISE, the
    prepared data's for TRAIN and EVALUATE (PolicyViolation when they cannot be made)."""
    job = instruction.job
    if kind is MessageKind.SUMMARISE:
        return int((~sites.study_table(job).is_test).sum())
    return _rows(sites.site_data(job), instruction)
