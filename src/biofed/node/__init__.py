"""biofed.node: the site runtime and the node process's configuration.

Every instruction a site receives goes through one chain of steps with one signature,
``step(work, call_next) -> Reply`` (:mod:`biofed.node._chain`; like Flower's client mods or
ASGI middleware). Each step is one concern in its own module and reads its own section of
the instruction (:mod:`biofed.core.sections`); :func:`~biofed.node._chain.site_chain` is the
one place that orders them::

    instruction                      reply
        │                              ▲
        ▼                              │
    audit ─────────── in: record the coordinator's audit head
        │             out: AUDIT round.sent (payload hash, size, metrics); the node's head
    secure aggr. ──── SECAGG key stages answered here, nothing trains;
        │             masked_input: the training goes on below, the update comes back masked
    policy ────────── in: CHECK agreement, dataset, cohort, bundle, outputs, privacy plan
        │             (job.accepted / job.refused: a refusal runs nothing)
    output control ── out: CONTROL tensors and metrics (round.withheld: nothing leaves)
        │
    privacy ───────── in: plan, RESERVE ε in the ledger; out: PRIVATISE (clip, noise), state ε
        │
    run the task ──── RUN (the approved bundle, sandboxed, under governance)

* ``_step_audit``   :class:`AuditStep` — the coordinator's head in; ``round.sent`` (payload
  SHA-256, size, metrics) out, before anything leaves; the node's own head on the reply.
* ``_step_secure``  :class:`SecureAggregationStep` — a SECAGG instruction is one SecAgg+
  stage (``directives.secagg_stage``); the masked-input stage hands the training on
  (``Work.secure``) and masks what comes back.
* ``_step_policy``  :class:`PolicyStep` — fetches an approved bundle, checks the instruction
  (``job`` section, the privacy plan), audits ``job.accepted`` / ``job.refused``.
* ``_step_control`` :class:`OutputControlStep` — only declared tensors and allowed metrics.
* ``_step_privacy`` :class:`PrivacyStep` — plans (``job.privacy``, ``directives.clip_norm`` /
  ``noise_std_share``), reserves in the ledger, privatises, states the spend.
* ``_step_task``    :class:`RunTask` — the task (the approved bundle under governance) on the
  site's data, with the task config plus the node's own ``dp_*`` keys.

A development node (no ``[governance]``) runs the same chain without policy, output control
and audit. The order an auditor verifies: check → reserve → run → privatise → control →
audit (``tests/node/test_chain_order.py``). New kinds of work (queries, data-quality checks)
become steps or task kinds on this chain.
"""

from biofed.node._app import NodeApp
from biofed.node._chain import Step, Work, site_chain
from biofed.node._config import (
    MEMORY_LEDGER,
    DatasetSource,
    GovernanceConfig,
    NodeConfig,
    PrivacyConfig,
)
from biofed.node._runtime import SiteNode
from biofed.node._sandbox import BundleRunner
from biofed.node._serve import run_node

__all__ = [
    "MEMORY_LEDGER",
    "BundleRunner",
    "DatasetSource",
    "GovernanceConfig",
    "NodeApp",
    "NodeConfig",
    "PrivacyConfig",
    "SiteNode",
    "Step",
    "Work",
    "run_node",
    "site_chain",
]
