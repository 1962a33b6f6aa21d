"""A site's node process: its configuration (``node.toml``) and the instruction handler it
serves over the network.

The node holds its datasets; the coordinator names a dataset and a task in each
instruction, and the node runs that task on its own copy. Nothing else about the site leaves.

With a ``[governance]`` table in ``node.toml`` the node enforces its site's governance itself
(see :mod:`biofed.governance._policy`): before every round it checks the study agreement,
the dataset, the cohort, the task bundle, the outputs and the privacy the job asks for, and
runs nothing on a refusal; before a reply leaves it drops metrics the agreement does not
allow and checks the tensors; and it records each decision and what left in its signed audit
log. Without the table the node behaves as before (no agreement needed)::

    [governance]
    agreements_dir = "agreements"     # <agreement_id>.toml, signed
    certificates_dir = "certificates" # <party name>.pem of every signer
    approvals = "approvals.json"      # the site's local bundle approvals
    registry = "datasets.json"        # the site's dataset registry
    bundles_dir = "bundles"           # <digest>.zip
    audit = "audit.jsonl"             # optional; default <kit folder>/audit.jsonl

Relative paths are relative to ``node.toml``'s folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from biofed.core import (
    BiofedError,
    ConfigurationError,
    DataError,
    Instruction,
    MessageKind,
    PolicyViolation,
    Reply,
    Scalar,
    check_id,
)
from biofed.data import SiteData
from biofed.governance import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    COORDINATOR_PEER,
    LEDGER_FILE,
    SENT_EVENT,
    TASK_FILE,
    ApprovalStore,
    AuditLog,
    AuditSigner,
    Bundle,
    Clearance,
    DatasetRegistry,
    PolicyRequest,
    PrivacyLedger,
    SitePolicy,
    anchor_data,
    check_digest,
    check_instruction,
    control_reply,
    heuristic_dp_allowed,
    read_bundle,
    reply_payload,
    requested_metrics,
)
from biofed.identity import Kit
from biofed.node._config import GovernanceConfig, NodeConfig
from biofed.node._privacy import (
    RoundPrivacy,
    SitePrivacy,
    for_task,
    plan_round,
    privatise_reply,
    task_instruction,
    with_spend,
)
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import BundleRunner, audit_sandbox_opt_out
from biofed.node._secure import SecureSessions
from biofed.privacy import PRIVACY_PREFIX
from biofed.secagg import STAGE_KEY
from biofed.tasks import (
    BUILTIN_TASKS,
    LocalTrainingConfig,
    Task,
    make_task,
    record_coupling,
    sensitivity_factor,
)


class NodeApp:
    """Serves instructions for one site: picks the dataset and task they name.

    Parameters
    ----------
    node_id:
        The site's identity (its certificate's name).
    config:
        Its datasets, and optionally its ``[governance]`` table.
    kit:
        The site's kit; required when ``config`` turns governance on (its CA checks the
        agreements' signatures and its key signs the node's audit log).
    data:
        Datasets already in memory (name → data), served besides ``config``'s files; a
        simulation's virtual sites pass theirs here. Such a dataset has no file, so a
        governed site's registry cannot pin it: governance refuses it.

    Security notes
    --------------
    With governance on, nothing in an instruction is taken on the coordinator's word: each
    one passes :func:`~biofed.governance._policy.check_instruction` before anything runs,
    only the verified bundle runs (in :class:`~biofed.node.BundleRunner`'s sandboxed worker,
    never in this process), each reply passes
    :func:`~biofed.governance._policy.control_reply` before it leaves, and every decision and
    every payload that leaves is written to the signed, hash-chained audit log first. If the
    log cannot be written, nothing runs and nothing leaves (fail closed).
    """

    def __init__(
        self,
        node_id: str,
        config: NodeConfig,
        *,
        kit: Kit | None = None,
        data: Mapping[str, SiteData] | None = None,
    ) -> None:
        self.node_id = check_id(node_id, what="node id")
        self.data: dict[str, SiteData] = {}
        for name, site_data in (data or {}).items():
            if name in config.datasets:
                raise ConfigurationError(f"dataset {name!r} is both in memory and in node.toml")
            self.data[check_id(name, what="dataset name")] = site_data
        for name, source in config.datasets.items():
            try:
                self.data[name] = source.load()
            except DataError as exc:
                raise DataError(f"dataset {name!r}: {exc}") from exc
        self._sources = config.datasets
        self._nodes: dict[tuple[Any, ...], SiteNode] = {}
        self._lock = threading.Lock()
        self.task_dirs = config.task_dirs
        self.policy: SitePolicy | None = None
        self.audit: AuditLog | None = None
        self._peer_head = ""  # the coordinator's audit head last recorded
        #: Downloads a bundle by digest from the coordinator (set by the node process).
        self.fetch_bundle: Callable[[str], bytes] | None = None
        self.allow_weaker = config.sandbox.allow_weaker
        if config.governance is not None:
            self.policy, self.audit = self._governance(config.governance, kit)
            audit_sandbox_opt_out(self.audit, self.allow_weaker)
        self.privacy = SitePrivacy(self._ledger(config, kit))
        #: Development nodes: node.toml's explicit acceptance of heuristic DP figures.
        self.allow_heuristic = config.privacy is not None and config.privacy.allow_heuristic
        self.secure = SecureSessions(self.node_id, kit)

    def _ledger(self, config: NodeConfig, kit: Kit | None) -> PrivacyLedger | None:
        """The site's privacy ledger (``[privacy] ledger``, else ``<kit>/privacy.db``), with
        ``node.toml``'s caps applied; None in development (no kit, no ledger configured)."""
        path = config.privacy.ledger if config.privacy is not None else None
        if path is None and kit is not None:
            path = kit.directory / LEDGER_FILE
        caps = config.privacy.caps if config.privacy is not None else {}
        if path is None:
            if caps:
                raise ConfigurationError(
                    "node.toml sets privacy caps but the node has neither a kit nor a "
                    "[privacy] ledger path to keep the budget in"
                )
            return None
        audit = self.audit

        def hook(event: str, data: Mapping[str, Any]) -> None:
            if audit is not None:
                _record(audit, event, data, strict=True)

        ledger = PrivacyLedger(path, audit=hook)
        for dataset, (epsilon, delta) in caps.items():
            # Caps only go down by themselves: node.toml sets a missing cap or lowers one;
            # a higher value than the ledger's (lowered with `biofed node budget-cap`) is
            # not applied but audited as budget.cap_kept (raising takes `--raise`).
            ledger.lower_cap(dataset, epsilon, delta, source="node.toml")
        return ledger

    def _governance(self, gov: GovernanceConfig, kit: Kit | None) -> tuple[SitePolicy, AuditLog]:
        if kit is None:
            raise ConfigurationError("node.toml turns governance on: the node needs its kit")
        if kit.role != "site" or kit.name != self.node_id:
            raise ConfigurationError(
                f"the kit is {kit.role} {kit.name!r}'s, not site {self.node_id!r}'s"
            )
        audit = AuditLog(gov.audit or kit.directory / "audit.jsonl", AuditSigner.from_kit(kit))
        policy = SitePolicy(
            site=self.node_id,
            agreements_dir=gov.agreements_dir,
            certificates_dir=gov.certificates_dir,
            ca_pem=kit.ca_pem,
            crl_pem=kit.crl_pem,
            registry=DatasetRegistry(gov.registry, audit=lambda e, d: _record(audit, e, d)),
            approvals=ApprovalStore(gov.approvals, audit=audit),
            bundles_dir=gov.bundles_dir,
        )
        # Approvals are read back from the signed audit log: a hand edit of the approvals
        # file (a digest the log does not approve) stops the node here, with one line.
        policy.approvals.check()
        return policy, audit

    def declarations(self) -> list[tuple[str, int, int]]:
        """(name, training examples, features) of each dataset, to declare on connect."""
        return [(n, len(d.train), d.train.num_features) for n, d in self.data.items()]

    def _site(self, config: Mapping[str, Scalar], clearance: Clearance | None = None) -> SiteNode:
        dataset = str(config.get("dataset", ""))
        if dataset not in self.data:
            raise PolicyViolation(f"this site holds no dataset {dataset!r}")
        task_name = str(config.get("task", ""))
        options = {k[5:]: v for k, v in config.items() if k.startswith("task.")}
        source = f"bundle:{clearance.bundle.digest}" if clearance else f"task:{task_name}"
        key = (dataset, source, tuple(sorted(options.items())))
        with self._lock:
            if key not in self._nodes:
                task: Task
                if clearance is not None:
                    task = BundleRunner(
                        clearance.bundle,
                        options=options,
                        name=task_name or None,
                        allow_weaker=self.allow_weaker,
                    )
                else:
                    task = self._make_task(task_name, options)
                self._nodes[key] = SiteNode(self.node_id, task, self.data[dataset])
            return self._nodes[key]

    def _make_task(self, name: str, options: Mapping[str, Scalar]) -> Task:
        if name in BUILTIN_TASKS or not self.task_dirs:
            return make_task(name, **options)
        if not name.isidentifier():
            raise ConfigurationError(f"task name {name!r} is not a module name")
        for folder in self.task_dirs:
            file = folder / f"{name}.py"
            if file.is_file():
                # Task code never runs in the node process: the module runs as a one-file
                # bundle in the sandboxed worker, like researchers' approved bundles.
                source = Bundle.from_files({TASK_FILE: file.read_bytes()})
                return BundleRunner(
                    source, options=options, name=name, allow_weaker=self.allow_weaker
                )
        raise ConfigurationError(
            f"unknown task {name!r}: not built in and not in this site's task_dirs"
        )

    def _error(self, instruction: Instruction, exc: BiofedError) -> Reply:
        return Reply(
            run_id=instruction.run_id,
            round=instruction.round,
            node_id=self.node_id,
            kind=instruction.kind,
            error=f"{exc.code}: {exc}",
        )

    def handle(self, instruction: Instruction) -> Reply:
        """Run one instruction (an error reply, never an exception).

        With an audit log, the coordinator's head that came with the instruction is recorded
        first, and the reply carries this node's head once everything about it is logged
        (:mod:`~biofed.governance._audit_anchor`: each log's head is anchored in the
        other's, so that a truncated log is evident)."""
        if self.audit is not None and instruction.audit_head:
            self._anchor(self.audit, instruction)
        if instruction.kind is MessageKind.SECAGG:
            reply = self._handle_secure(instruction)
        elif self.policy is not None and self.audit is not None:
            reply = self._handle_governed(instruction, self.policy, self.audit)
        else:
            reply = self._handle_plain(instruction)
        if self.audit is not None:
            try:
                reply = dataclasses.replace(reply, audit_head=self.audit.head())
            except (BiofedError, OSError) as exc:  # the log broke: nothing leaves
                return self._error(instruction, PolicyViolation(f"audit: {exc}"))
        return reply

    def _anchor(self, audit: AuditLog, instruction: Instruction) -> None:
        """Record the coordinator's audit head (once per distinct head)."""
        with self._lock:
            if instruction.audit_head == self._peer_head:
                return
            self._peer_head = instruction.audit_head
        _record(
            audit,
            ANCHOR_EVENT,
            {
                ANCHOR_KEY: anchor_data(COORDINATOR_PEER, instruction.audit_head),
                "run_id": instruction.run_id,
                "round": instruction.round,
                "kind": instruction.kind.value,
            },
        )

    def _handle_secure(self, instruction: Instruction) -> Reply:
        """One secure-aggregation stage; the masked-input stage trains through the same
        checks as a plain round (with ``secure_aggregation`` true for the policy), and
        what leaves is only the stage's protocol message, audited as sent."""
        reply = self.secure.handle(instruction, self._train_securely)
        if self.audit is None or not reply.ok:
            return reply
        where = {
            "run_id": instruction.run_id,
            "round": instruction.round,
            "kind": instruction.kind.value,
            "stage": str(instruction.config.get(STAGE_KEY, "")),
        }
        try:
            _record(self.audit, SENT_EVENT, _sent(reply, where), strict=True)
        except BiofedError as exc:
            return self._error(instruction, exc)
        return reply

    def _train_securely(self, instruction: Instruction) -> Reply:
        if self.policy is not None and self.audit is not None:
            return self._handle_governed(instruction, self.policy, self.audit, secure=True)
        return self._handle_plain(instruction)

    def _handle_plain(self, instruction: Instruction) -> Reply:
        """An ungoverned (development) node: the named dataset and task, DP if asked."""
        try:
            site = self._site(instruction.config)
            plan = self._plan(instruction)
            if plan is not None:
                plan = _fit_plan(plan, site.task, instruction, self.allow_heuristic)
            spend = None
            if plan is not None:
                spend = self.privacy.reserve(
                    plan, dataset=str(instruction.config["dataset"]), instruction=instruction
                )
        except BiofedError as exc:
            return self._error(instruction, exc)
        run = task_instruction(dataclasses.replace(instruction, node_id=self.node_id), plan)
        reply = site.handle(run)
        if plan is None or spend is None or not reply.ok:
            return reply
        try:
            return with_spend(privatise_reply(reply, instruction, plan), spend, plan.guarantee)
        except BiofedError as exc:
            return self._error(instruction, exc)

    def _plan(self, instruction: Instruction) -> RoundPrivacy | None:
        """The round's DP plan for this site's dataset (training only; None without DP)."""
        if instruction.kind is not MessageKind.TRAIN:
            return None
        data = self.data.get(str(instruction.config.get("dataset", "")))
        if data is None:
            return None
        return plan_round(instruction.config, len(data.train))

    # -- governance ---------------------------------------------------------------------------
    def _request(
        self, instruction: Instruction, plan: RoundPrivacy | None, *, secure: bool = False
    ) -> PolicyRequest:
        config = instruction.config
        dataset = str(config.get("dataset", ""))
        data = self.data.get(dataset)
        source = self._sources.get(dataset)
        rows = 0
        if data is not None:
            if instruction.kind is MessageKind.TRAIN:
                rows = len(data.train)
            else:
                try:
                    rows = len(data.split(str(config.get("split", "test"))))
                except DataError:
                    rows = 0
        agreement, bundle = config.get("agreement"), config.get("bundle")
        return PolicyRequest(
            kind=instruction.kind,
            agreement=None if agreement is None else str(agreement),
            dataset=dataset,
            bundle=None if bundle is None else str(bundle),
            dataset_path=None if source is None else source.path,
            rows=rows,
            metrics=requested_metrics(config),
            secure_aggregation=secure,
            differential_privacy=any(k.startswith(PRIVACY_PREFIX) for k in config),
            dp_planned=None if plan is None else (plan.planned_epsilon(), plan.settings.delta),
            dp_seeded=plan is not None and plan.settings.seeded,
        )

    def _fetch_if_approved(
        self, instruction: Instruction, policy: SitePolicy, audit: AuditLog
    ) -> None:
        """Fetch the job's bundle from the coordinator when this site approved its digest but
        does not hold the file yet. The bytes are checked against the digest before they are
        kept; whether the bundle may run is still decided by :func:`check_instruction`."""
        digest = instruction.config.get("bundle")
        if not isinstance(digest, str) or self.fetch_bundle is None:
            return
        try:
            file = policy.bundles_dir / f"{check_digest(digest)}.zip"
            if file.is_file() or not policy.approvals.is_approved(digest):
                return
            data = self.fetch_bundle(digest)
            read_bundle(data, expected_digest=digest)
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".part{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, file)
        except BiofedError as exc:
            _record(audit, "bundle.fetch_failed", {"bundle": str(digest), "reason": str(exc)})
            return
        _record(audit, "bundle.fetched", {"bundle": digest, "bytes": len(data)})

    def _handle_governed(
        self,
        instruction: Instruction,
        policy: SitePolicy,
        audit: AuditLog,
        *,
        secure: bool = False,
    ) -> Reply:
        """Check, run and control one instruction under the site's governance. With
        ``secure`` the reply is the input of a secure-aggregation round: it is controlled but
        not released (nor audited as sent) here — only its masked form leaves."""
        where = {
            "run_id": instruction.run_id,
            "round": instruction.round,
            "kind": instruction.kind.value,
        }
        self._fetch_if_approved(instruction, policy, audit)
        try:
            try:
                plan = self._plan(instruction)
            except ConfigurationError as exc:
                raise PolicyViolation(f"privacy: {exc}") from None
            clearance = check_instruction(policy, self._request(instruction, plan, secure=secure))
            if plan is not None:  # the approved bundle's declaration, read in its sandbox
                plan = _fit_plan(
                    plan,
                    self._site(instruction.config, clearance).task,
                    instruction,
                    heuristic_dp_allowed(clearance),
                )
        except PolicyViolation as exc:
            _record(audit, "job.refused", {**where, "rule": str(exc)})
            return self._error(instruction, exc)
        try:
            _record(
                audit,
                "job.accepted",
                {
                    **where,
                    "agreement": clearance.agreement.agreement.agreement_id,
                    "agreement_sha256": clearance.agreement.agreement.digest(),
                    "bundle": clearance.bundle.digest,
                    "dataset": clearance.dataset.name,
                    "dataset_sha256": clearance.dataset.sha256,
                },
                strict=True,
            )
            site = self._site(instruction.config, clearance)
            spend = None
            if plan is not None:  # debit before anything runs; the ledger audits refusals
                spend = self.privacy.reserve(
                    plan,
                    dataset=clearance.dataset.name,
                    instruction=instruction,
                    agreement_cap=_agreement_cap(clearance, self.node_id),
                )
        except BiofedError as exc:
            return self._error(instruction, exc)
        run = task_instruction(dataclasses.replace(instruction, node_id=self.node_id), plan)
        reply = site.handle(run)
        if not reply.ok:
            _record(audit, "round.failed", {**where, "error": str(reply.error)[:500]})
            return reply
        try:
            if plan is not None:
                reply = privatise_reply(reply, instruction, plan)
            reply, dropped = control_reply(reply, instruction, clearance)
            if spend is not None and plan is not None:
                reply = with_spend(reply, spend, plan.guarantee)
            if secure:
                return reply
            extra: dict[str, Any] = {
                "num_examples": reply.num_examples,
                "dropped_metrics": list(dropped),
            }
            if spend is not None and plan is not None:
                extra.update(
                    dp_epsilon=spend[0],
                    dp_delta=spend[1],
                    dp_guarantee=plan.guarantee,
                    dp_trust=plan.trust,
                )
            _record(audit, SENT_EVENT, _sent(reply, {**where, **extra}), strict=True)
        except BiofedError as exc:
            _record(audit, "round.withheld", {**where, "rule": str(exc)})
            return self._error(instruction, exc)
        return reply


def _fit_plan(
    plan: RoundPrivacy, task: Task, instruction: Instruction, heuristic_allowed: bool
) -> RoundPrivacy:
    """The round's plan fitted to the task's declared record coupling (sample mode: the
    guarantee label, and the noise scaled by a bounded task's sensitivity factor); a
    ``"none"`` task is refused unless ``heuristic_allowed``.

    Raises
    ------
    PolicyViolation
        ``"privacy: …"``: the task is refused, or its declaration cannot be read (a bundle's
        worker failed, a malformed declaration): no declaration is no guarantee.
    """
    if plan.settings.mode != "sample":
        return plan
    try:
        coupling = record_coupling(task)
        factor = None
        if coupling == "bounded":
            config = {k: v for k, v in instruction.config.items() if not k.startswith("dp_")}
            factor = sensitivity_factor(task, LocalTrainingConfig.from_config(config).batch_size)
    except PolicyViolation:
        raise
    except BiofedError as exc:
        raise PolicyViolation(f"privacy: cannot read the task's DP declaration: {exc}") from None
    return for_task(plan, coupling, factor, heuristic_allowed=heuristic_allowed)


def _sent(reply: Reply, where: Mapping[str, Any]) -> dict[str, Any]:
    """A ``round.sent`` entry: where it belongs, and what left (the payload's SHA-256 and
    size, as :func:`~biofed.governance.reply_payload` defines them, and metric names)."""
    payload = reply_payload(reply)
    return {
        **where,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "metrics": sorted(reply.metrics),
    }


def _agreement_cap(clearance: Clearance, site: str) -> tuple[float, float] | None:
    """The (ε, δ) the agreement allows this site, when it sets one."""
    privacy = clearance.agreement.agreement.privacy
    if site in privacy.max_epsilon and site in privacy.max_delta:
        return privacy.max_epsilon[site], privacy.max_delta[site]
    return None


def _record(audit: AuditLog, event: str, data: Mapping[str, Any], *, strict: bool = False) -> None:
    """Append to the audit log; with ``strict`` a failure raises PolicyViolation (so the
    action it would record does not happen), otherwise it is ignored (the action it records
    is already a refusal)."""
    try:
        audit.append(event, data)
    except (BiofedError, OSError) as exc:
        if strict:
            raise PolicyViolation(f"audit: cannot write the audit log ({exc})") from None
