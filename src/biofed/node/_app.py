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

Federated queries (``MessageKind.QUERY``) run through the same chain; the node answers them
under its disclosure rules (``node.toml``'s ``[analytics]``, made stricter by the study
agreement's) and keeps the cohorts it answered in its query log (``queries.db`` beside the
privacy ledger; in memory without a ledger file), which refuses a differencing attack.

Each instruction goes through the site's chain of steps (:func:`~biofed.node._chain.site_chain`:
audit, secure aggregation, policy, output control, privacy, norm bound, run the task); a
development node's chain is the same without the policy, output-control and audit steps.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from biofed.analytics import DisclosureRules, SecureNoise
from biofed.core import (
    ConfigurationError,
    DataError,
    Instruction,
    Reply,
    check_id,
)
from biofed.data import OmopDatabase, SiteData
from biofed.governance import (
    LEDGER_FILE,
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    PrivacyLedger,
    SitePolicy,
    check_omop_url,
    omop_connect_url,
)
from biofed.identity import Kit
from biofed.node._chain import Next, SiteSteps, Work, site_chain
from biofed.node._config import DatasetSource, GovernanceConfig, NodeConfig
from biofed.node._privacy import SitePrivacy
from biofed.node._queries import SiteQueries
from biofed.node._query_log import MEMORY, QUERY_LOG_FILE, QueryLog
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import audit_sandbox_opt_out
from biofed.node._secure import SecureSessions
from biofed.node._sites import SiteTasks, SourceOrOpener, StudySource
from biofed.node._step_audit import AuditStep, record
from biofed.node._step_bound import NormBoundStep
from biofed.node._step_control import OutputControlStep
from biofed.node._step_policy import PolicyStep
from biofed.node._step_privacy import PrivacyStep
from biofed.node._step_secure import SecureAggregationStep
from biofed.node._step_task import RunTask

#: File suffixes of an in-memory study source that is an OMOP CDM (a DuckDB file).
OMOP_SUFFIXES = (".duckdb", ".db")


def _open_omop(source: DatasetSource) -> StudySource:
    """A ``node.toml`` OMOP dataset as a study source, when a study first reads it: its
    location with the password from ``password_env``, opened with its schema when it names
    one (a missing password refuses that study, not the node's start)."""
    assert source.omop is not None
    url = omop_connect_url(source.omop, source.password_env, os.environ)
    return url if source.schema is None else OmopDatabase.open(url, schema=source.schema)


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
        governed site's registry cannot pin it: governance refuses it. A value may also be
        a study source — an OMOP CDM (:class:`~biofed.data.OmopDatabase`, its URL or
        DuckDB file) or a data file — that a job's study spec compiles; a local file there
        is what the registry pins.

    Attributes
    ----------
    steps:
        The site's steps; :meth:`handle` runs them as :func:`~biofed.node._chain.site_chain`
        orders them.

    Security notes
    --------------
    With governance on, nothing in an instruction is taken on the coordinator's word: each
    one passes :func:`~biofed.governance.check_instruction` before anything runs, only the
    verified bundle runs (in :class:`~biofed.node.BundleRunner`'s sandboxed worker, never in
    this process), each reply passes :func:`~biofed.governance.control_reply` before it
    leaves, and every decision and every payload that leaves is written to the signed,
    hash-chained audit log first. If the log cannot be written, nothing runs and nothing
    leaves (fail closed).
    """

    def __init__(
        self,
        node_id: str,
        config: NodeConfig,
        *,
        kit: Kit | None = None,
        data: Mapping[str, SiteData | StudySource] | None = None,
    ) -> None:
        self.node_id = check_id(node_id, what="node id")
        self.data: dict[str, SiteData] = {}
        #: Study sources by dataset name (compiled by a job's study spec).
        self.sources: dict[str, SourceOrOpener] = {}
        #: The local file each dataset is read from (the registry pins it).
        self.files: dict[str, Path] = {}
        #: The OMOP CDM each dataset is read from (password-free location; registry pins it).
        self.locations: dict[str, str] = {}
        for name, value in (data or {}).items():
            if name in config.datasets:
                raise ConfigurationError(f"dataset {name!r} is both in memory and in node.toml")
            check_id(name, what="dataset name")
            if isinstance(value, SiteData):
                self.data[name] = value
            elif isinstance(value, OmopDatabase | str | os.PathLike):
                self.sources[name] = value
                if not isinstance(value, OmopDatabase) and Path(value).is_file():
                    if Path(value).suffix.lower() in OMOP_SUFFIXES:
                        self.locations[name] = check_omop_url(str(value))
                    else:
                        self.files[name] = Path(value)
            else:
                raise ConfigurationError(
                    f"dataset {name!r} must be SiteData or a study source (an OMOP database, "
                    f"its URL or a file path), got {type(value).__name__}"
                )
        for name, source in config.datasets.items():
            if source.omop is not None:  # compiled per study from its spec, not loaded whole
                self.locations[name] = source.omop
                self.sources[name] = functools.partial(_open_omop, source)
                continue
            assert source.path is not None
            self.files[name] = source.path
            self.sources[name] = source.path  # a study spec with source = "file" reads it
            try:
                self.data[name] = source.load()
            except DataError as exc:
                raise DataError(f"dataset {name!r}: {exc}") from exc
        self.task_dirs = config.task_dirs
        self.policy: SitePolicy | None = None
        self.audit: AuditLog | None = None
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
        self.sites = SiteTasks(
            self.node_id,
            self.data,
            self.task_dirs,
            allow_weaker=self.allow_weaker,
            sources=self.sources,
        )
        self.query_log = self._query_log()
        self.queries = SiteQueries(
            self.node_id,
            self.sites,
            self.query_log,
            config.analytics or DisclosureRules(),
            SecureNoise,  # a DP answer's noise: the site's CSPRNG, never a seeded source
        )
        self.steps = self._steps(config)
        self._chain: Next = site_chain(self.steps)

    def _steps(self, config: NodeConfig) -> SiteSteps:
        """The site's steps: with governance, policy, output control and audit too."""
        privacy = PrivacyStep(
            self.node_id,
            self.privacy,
            self.sites,
            allow_heuristic=self.allow_heuristic,
            audit=self.audit,
        )
        secure = SecureAggregationStep(self.secure)
        bound = NormBoundStep(self.node_id, self.audit)
        run = RunTask(self.node_id, self.sites, self.audit, self.queries)
        if self.policy is None or self.audit is None:
            return SiteSteps(
                audit=None,
                secure=secure,
                policy=None,
                control=None,
                privacy=privacy,
                bound=bound,
                run=run,
            )
        policy = PolicyStep(
            self.node_id,
            self.policy,
            self.audit,
            sites=self.sites,
            sources=self.files,
            locations=self.locations,
            privacy=privacy,
            fetcher=lambda: self.fetch_bundle,
        )
        return SiteSteps(
            audit=AuditStep(self.node_id, self.audit),
            secure=secure,
            policy=policy,
            control=OutputControlStep(self.node_id, self.audit),
            privacy=privacy,
            bound=bound,
            run=run,
        )

    @property
    def _nodes(self) -> dict[tuple[Any, ...], SiteNode]:
        """The site nodes built so far (dataset, task source, options) → node."""
        return self.sites.nodes

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
                record(audit, event, data, strict=True)

        ledger = PrivacyLedger(path, audit=hook)
        for dataset, (epsilon, delta) in caps.items():
            # Caps only go down by themselves: node.toml sets a missing cap or lowers one;
            # a higher value than the ledger's (lowered with `biofed node budget-cap`) is
            # not applied but audited as budget.cap_kept (raising takes `--raise`).
            ledger.lower_cap(dataset, epsilon, delta, source="node.toml")
        return ledger

    def _query_log(self) -> QueryLog:
        """The site's query log: ``queries.db`` beside a ledger file, else in memory."""
        ledger = self.privacy.ledger
        if ledger is None or ledger.is_in_memory:
            return QueryLog(MEMORY)
        return QueryLog(Path(ledger.path).parent / QUERY_LOG_FILE)

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
            registry=DatasetRegistry(gov.registry, audit=lambda e, d: record(audit, e, d)),
            approvals=ApprovalStore(gov.approvals, audit=audit),
            bundles_dir=gov.bundles_dir,
        )
        # Approvals are read back from the signed audit log: a hand edit of the approvals
        # file (a digest the log does not approve) stops the node here, with one line.
        policy.approvals.check()
        return policy, audit

    def declarations(self) -> list[tuple[str, int, int]]:
        """(name, training examples, features) of each dataset, to declare on connect; a
        study source alone is declared with 0 and 0 (its table exists only once a job's
        spec compiles it)."""
        out = [(n, len(d.train), d.train.num_features) for n, d in self.data.items()]
        return out + [(n, 0, 0) for n in self.sources if n not in self.data]

    def handle(self, instruction: Instruction) -> Reply:
        """Run one instruction through the site's chain (an error reply, never an
        exception: each step answers its failures with one)."""
        return self._chain(Work(instruction=instruction))
