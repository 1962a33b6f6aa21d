"""The site's chain runs its steps in the order an auditor verifies — check → reserve → run →
privatise → control → audit — for plain, governed, DP and secure instructions.

The real steps of real nodes are wrapped by recorders (``step>`` on the way in, ``<step`` on
the way out); the task is a fake last step that records ``run`` and returns a large update,
and the site's privacy bookkeeping records ``reserve`` when it debits. What each step did is
checked on its effects (the clipped update, the dropped metric, the audit entries)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, RoundEngine
from biofed.core import Instruction, MessageKind, Reply
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    sign,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.node._chain import Next, SiteSteps, Step, Work, site_chain
from biofed.node._privacy import RoundPrivacy, SitePrivacy
from biofed.node._step_privacy import PrivacyStep
from biofed.privacy import DPSettings
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import FedAvg
from biofed.tasks import CoxPHTask
from biofed.transport import InMemoryTransport

AUDITOR_ORDER = ["check", "reserve", "run", "privatise", "control", "audit"]
SITES = ("center-0", "center-1", "center-2")
SIGNERS = ("center-0", "r", "coordinator")
AGREEMENT = "brca-cox"
CLIP = 0.5


# -- recording ---------------------------------------------------------------------------------
class RecordingPrivacy(SitePrivacy):
    """The site's real privacy bookkeeping, noting each debit in the log."""

    def __init__(self, base: SitePrivacy, log: list[str]) -> None:
        super().__init__(base.ledger)
        self.log = log

    def reserve(self, plan: RoundPrivacy, **kwargs: Any) -> tuple[float, float]:
        self.log.append("reserve")
        return super().reserve(plan, **kwargs)


def _recorder(name: str, step: Step | None, log: list[str]) -> Step | None:
    if step is None:
        return None

    def recorded(work: Work, call_next: Next) -> Reply:
        log.append(f"{name}>")
        reply = step(work, call_next)
        log.append(f"<{name}")
        return reply

    return recorded


def _fake_task(log: list[str]) -> Next:
    """The last step: records ``run``; a large update (norm ≫ the clip norm) and two
    metrics, one of which no agreement here allows."""

    def run(work: Work) -> Reply:
        log.append("run")
        inst = work.instruction
        if inst.kind is MessageKind.EVALUATE:
            return Reply.answering(inst, num_examples=40, metrics={"c_index": 0.7, "loss": 1.0})
        params = type(inst.parameters)({n: v + 1.0 for n, v in inst.parameters.items()})
        return Reply.answering(
            inst, parameters=params, num_examples=100, metrics={"c_index": 0.7, "loss": 1.0}
        )

    return run


def recorded_chain(app: NodeApp, log: list[str], run: Next | None = None) -> Next:
    """``app``'s own steps, recorded, in the order :func:`site_chain` gives them; the task
    is :func:`_fake_task` unless ``run`` is given (then it is recorded as ``run``)."""
    steps = app.steps
    privacy = copy.copy(steps.privacy)  # the same step, with its debits recorded
    assert isinstance(privacy, PrivacyStep)
    privacy.privacy = RecordingPrivacy(privacy.privacy, log)
    last = _fake_task(log)
    if run is not None:

        def last(work: Work) -> Reply:
            log.append("run")
            return run(work)

    recorded = {
        name: _recorder(name, step, log)
        for name, step in (
            ("audit", steps.audit),
            ("secure", steps.secure),
            ("policy", steps.policy),
            ("control", steps.control),
            ("privacy", privacy),
            ("bound", steps.bound),
        )
    }
    return site_chain(SiteSteps(**recorded, run=last))  # type: ignore[arg-type]


def auditor_view(log: list[str]) -> list[str]:
    """What an auditor verifies, from the recorded steps: the policy step's way in is the
    check, a debit the reservation, the privacy step's way out after a debit the
    privatisation, output control's and audit's ways out theirs."""
    out: list[str] = []
    for entry in log:
        if entry == "policy>":
            out.append("check")
        elif entry in ("reserve", "run"):
            out.append(entry)
        elif entry == "<privacy" and "reserve" in out:
            out.append("privatise")
        elif entry == "<control":
            out.append("control")
        elif entry == "<audit":
            out.append("audit")
    return out


# -- the order, in the one place that builds it ---------------------------------------------------
def test_site_chain_puts_the_steps_in_the_auditors_order() -> None:
    log: list[str] = []

    def step(before: str | None, after: str | None) -> Step:
        def call(work: Work, call_next: Next) -> Reply:
            if before:
                log.append(before)
            reply = call_next(work)
            if after:
                log.append(after)
            return reply

        return call

    handler = site_chain(
        SiteSteps(
            audit=step(None, "audit"),
            secure=step(None, None),
            policy=step("check", None),
            control=step(None, "control"),
            privacy=step("reserve", "privatise"),
            bound=step(None, None),
            run=_fake_task(log),
        )
    )
    handler(Work(instruction=_instruction()))
    assert log == AUDITOR_ORDER
    log.clear()
    development = site_chain(
        SiteSteps(
            audit=None,
            secure=step(None, None),
            policy=None,
            control=None,
            privacy=step("reserve", "privatise"),
            bound=step(None, None),
            run=_fake_task(log),
        )
    )
    development(Work(instruction=_instruction()))
    assert log == ["reserve", "run", "privatise"]


# -- development nodes: plain and DP --------------------------------------------------------------
def _instruction(**config: object) -> Instruction:
    params = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    return Instruction(
        run_id="run-1",
        round=1,
        node_id="center-0",
        kind=MessageKind.TRAIN,
        parameters=params,
        config={
            "seed": 1,
            "local_steps": 2,
            "task": "cox_ph",
            "dataset": "brca",
            "task.num_features": 39,
            **config,
        },
    )


def _client_dp() -> dict[str, object]:
    dp = DPSettings.from_table(
        {"mode": "client", "delta": 1e-5, "noise_multiplier": 2.0, "max_grad_norm": CLIP},
        rounds=4,
        min_replies=2,
    )
    return {**dp.to_config(), "dp.clip_norm": CLIP}


def _update_norm(reply: Reply, inst: Instruction) -> float:
    assert reply.parameters is not None
    delta = [(reply.parameters[n] - inst.parameters[n]).ravel() for n in inst.parameters]
    return float(np.linalg.norm(np.concatenate(delta)))


@pytest.fixture(scope="module")
def brca() -> Any:
    return load_tcga_brca()


def _development(brca: Any, site: str = "center-0", kit: Kit | None = None) -> NodeApp:
    return NodeApp(site, NodeConfig(datasets={}), kit=kit, data={"brca": brca.sites[site]})


def test_plain_instruction_on_a_development_node_just_runs(brca: Any) -> None:
    log: list[str] = []
    inst = _instruction()
    reply = recorded_chain(_development(brca), log)(Work(instruction=inst))
    assert reply.ok, reply.error
    assert log == ["secure>", "privacy>", "bound>", "run", "<bound", "<privacy", "<secure"]
    assert auditor_view(log) == ["run"]
    assert _update_norm(reply, inst) > 10 * CLIP  # nothing clipped it
    assert "dp.epsilon" not in reply.metrics


def test_dp_instruction_is_reserved_before_it_runs_and_privatised_after(brca: Any) -> None:
    log: list[str] = []
    inst = _instruction(**_client_dp())
    reply = recorded_chain(_development(brca), log)(Work(instruction=inst))
    assert reply.ok, reply.error
    assert log == [
        "secure>",
        "privacy>",
        "reserve",
        "bound>",
        "run",
        "<bound",
        "<privacy",
        "<secure",
    ]
    assert auditor_view(log) == ["reserve", "run", "privatise"]
    assert _update_norm(reply, inst) == pytest.approx(CLIP)  # clipped to C on the way out
    assert reply.metrics["dp.epsilon"] > 0  # the spend the site reserved


def test_a_dp_round_the_chain_refuses_runs_nothing(brca: Any) -> None:
    log: list[str] = []
    inst = _instruction(**{**_client_dp(), "dp.clip_norm": 2 * CLIP})  # not the job's C
    reply = recorded_chain(_development(brca), log)(Work(instruction=inst))
    assert reply.error is not None
    assert "clip norm" in reply.error
    assert "run" not in log
    assert "reserve" not in log


# -- governed nodes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=list(SITES), researchers=["r"]
    )
    return folder


class Governed:
    """A governed site ``center-0`` whose agreement allows the c_index metric only."""

    def __init__(self, root: Path, fed: Path, *, privacy: PrivacyRequirements | None) -> None:
        kits = {name: load_kit(fed / name) for name in SIGNERS}
        self.kit = kits["center-0"]
        (root / "task").mkdir()
        (root / "task" / "task.py").write_text(
            "from biofed.tasks import CoxPHTask\n"
            "def make_task(num_features): return CoxPHTask(num_features=num_features)\n"
        )
        self.digest = pack_bundle(root / "task", root / "b.zip").digest
        csv = write_site_files(load_tcga_brca(), root / "data")["center-0"]
        for sub in ("agreements", "certificates", "bundles"):
            (root / sub).mkdir()
        for name in SIGNERS:
            shutil.copy(fed / name / "cert.pem", root / "certificates" / f"{name}.pem")
        shutil.copy(root / "b.zip", root / "bundles" / f"{self.digest}.zip")
        DatasetRegistry(root / "datasets.json").add("brca", csv, format="csv", min_cohort=10)
        self.audit = root / "audit.jsonl"
        log = AuditLog(self.audit, AuditSigner.from_kit(self.kit))
        ApprovalStore(root / "approvals.json", audit=log).approve(self.digest, by="operator")

        def party(kit: Kit) -> Party:
            return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)

        agreement = StudyAgreement(
            agreement_id=AGREEMENT,
            title="Survival in breast cancer",
            purpose="Train a Cox model.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="t",
            coordinator=party(kits["coordinator"]),
            parties=(party(kits["center-0"]), party(kits["r"])),
            datasets={"center-0": "brca"},
            approved_bundles=(self.digest,),
            outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
        if privacy is not None:
            agreement = dataclasses.replace(agreement, privacy=privacy)
        signed = SignedAgreement(agreement=agreement)
        for name in SIGNERS:
            signed = sign(signed, kits[name])
        write_agreement(root / "agreements" / f"{AGREEMENT}.toml", signed)
        (self.kit.directory / "privacy.db").unlink(missing_ok=True)  # the kit is shared
        (root / "node.toml").write_text(
            f'[datasets.brca]\npath = "{csv}"\nformat = "csv"\nsplit_column = "split"\n'
            'targets = { event = "event", time = "time" }\n\n'
            '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
            'approvals = "approvals.json"\nregistry = "datasets.json"\n'
            'bundles_dir = "bundles"\naudit = "audit.jsonl"\n'
            "\n[privacy.caps.brca]\nepsilon = 10.0\ndelta = 1e-5\n"
        )
        self.app = NodeApp("center-0", NodeConfig.from_toml(root / "node.toml"), kit=self.kit)

    def instruction(self, **config: object) -> Instruction:
        return _instruction(agreement=AGREEMENT, bundle=self.digest, **config)

    def events(self) -> list[str]:
        entries = [json.loads(line) for line in self.audit.read_text().splitlines()]
        skip = ("bundle.", "budget.cap")  # the operator's approvals, node.toml's cap
        return [e["event"] for e in entries if not e["event"].startswith(skip)]

    def close(self) -> None:
        (self.kit.directory / "privacy.db").unlink(missing_ok=True)


def test_governed_instruction_is_checked_run_controlled_and_audited(
    tmp_path: Path, fed: Path
) -> None:
    site = Governed(tmp_path, fed, privacy=None)
    log: list[str] = []
    reply = recorded_chain(site.app, log)(Work(instruction=site.instruction()))
    site.close()
    assert reply.ok, reply.error
    assert log == [
        "audit>",
        "secure>",
        "policy>",
        "control>",
        "privacy>",
        "bound>",
        "run",
        "<bound",
        "<privacy",
        "<control",
        "<policy",
        "<secure",
        "<audit",
    ]
    assert auditor_view(log) == ["check", "run", "control", "audit"]
    assert set(reply.metrics) == {"c_index"}  # output control dropped "loss"
    assert site.events() == ["job.accepted", "round.sent"]
    assert reply.audit_head  # the node's head, once everything was logged


def test_governed_dp_instruction_follows_the_whole_auditors_order(
    tmp_path: Path, fed: Path
) -> None:
    requirements = PrivacyRequirements(
        dp_required=True, max_epsilon={"center-0": 8.0}, max_delta={"center-0": 1e-5}
    )
    site = Governed(tmp_path, fed, privacy=requirements)
    log: list[str] = []
    inst = site.instruction(**_client_dp())
    reply = recorded_chain(site.app, log)(Work(instruction=inst))
    site.close()
    assert reply.ok, reply.error
    assert auditor_view(log) == AUDITOR_ORDER
    assert _update_norm(reply, inst) == pytest.approx(CLIP)
    assert set(reply.metrics) == {"c_index", "dp.epsilon", "dp.delta", "dp.guarantee"}
    events = site.events()
    assert events.index("job.accepted") < events.index("budget.debited")
    assert events.index("budget.debited") < events.index("round.sent")


def test_a_governed_bundles_update_is_bounded_before_control(tmp_path: Path, fed: Path) -> None:
    """The approved bundle runs in its sandboxed worker; the bound step still scales its
    update to the round's ``robust.max_update_norm``, output control drops the norm metric
    the agreement does not name, and ``round.sent`` notes the bound."""
    site = Governed(tmp_path, fed, privacy=None)
    inst = site.instruction(**{"robust.max_update_norm": 1e-4})
    reply = site.app.handle(inst)
    site.close()
    assert reply.ok, reply.error
    assert _update_norm(reply, inst) == pytest.approx(1e-4, rel=1e-6)
    assert _update_norm(reply, inst) <= 1e-4
    assert "robust.update_norm" not in reply.metrics  # not among the agreement's metrics
    entries = [json.loads(line) for line in site.audit.read_text().splitlines()]
    sent = [e for e in entries if e["event"] == "round.sent"][-1]
    assert sent["data"]["max_update_norm"] == 1e-4
    assert sent["data"]["update_bounded"] is True
    assert "robust.update_norm" in sent["data"]["dropped_metrics"]


def test_a_refused_governed_instruction_runs_nothing(tmp_path: Path, fed: Path) -> None:
    site = Governed(tmp_path, fed, privacy=None)
    log: list[str] = []
    inst = site.instruction(dataset="someone-elses")
    reply = recorded_chain(site.app, log)(Work(instruction=inst))
    site.close()
    assert reply.error is not None
    assert reply.error.startswith("policy:")
    assert log == ["audit>", "secure>", "policy>", "<policy", "<secure", "<audit"]
    assert site.events() == ["job.refused"]


# -- secure instructions --------------------------------------------------------------------------
def test_secure_rounds_train_only_in_the_masked_input_stage(brca: Any, fed: Path) -> None:
    """A whole SecAgg+ round through three development sites' chains: the key stages are
    answered by the secure-aggregation step alone; the masked-input stage hands the training
    on through privacy to the task, and masks what comes back."""
    secure = SecureAggregationSettings(clip_range=4.0, quantisation_step=1e-6, max_weight=1000)
    logs: dict[str, list[tuple[str, list[str]]]] = {s: [] for s in SITES}

    def handler(site: str) -> Callable[[Instruction], Reply]:
        app = _development(brca, site, kit=load_kit(fed / site))
        log: list[str] = []
        chain = recorded_chain(app, log, run=app.steps.run)  # the real task

        def handle(inst: Instruction) -> Reply:
            log.clear()
            reply = chain(Work(instruction=inst))
            stage = inst.directives.secagg_stage
            logs[site].append((inst.kind.value if stage is None else stage.value, list(log)))
            return reply

        return handle

    strategy = FedAvg(train_config={"local_steps": 2, "learning_rate": 0.01, "batch_size": 8})
    engine = RoundEngine(
        strategy,
        InMemoryTransport({s: handler(s) for s in SITES}),
        EngineConfig(rounds=1, min_nodes=3, min_replies=2, seed=3, round_timeout=60.0),
        run_id="run-s",
        instruction_config={
            "task": "cox_ph",
            "dataset": "brca",
            "task.num_features": 39,
            **secure.to_config(),
        },
        secure_aggregation=secure,
    )
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    _, _, record = engine.run_round(1, x0, strategy.init_state(x0))
    assert record.failed is None, record.failed
    for site in SITES:
        stages = dict(logs[site])
        assert list(stages) == [
            "advertise_keys",
            "share_keys",
            "masked_input",
            "unmask",
            "evaluate",  # the round's evaluation: a plain instruction
        ]
        for stage in ("advertise_keys", "share_keys", "unmask"):
            assert stages[stage] == ["secure>", "<secure"], (site, stage)
        for stage in ("masked_input", "evaluate"):
            assert stages[stage] == [
                "secure>",
                "privacy>",
                "bound>",
                "run",
                "<bound",
                "<privacy",
                "<secure",
            ]


def test_an_instruction_cannot_claim_to_be_a_masked_round(tmp_path: Path, fed: Path) -> None:
    """Security: whether what a round releases is masked is the node's own secure-aggregation
    step's word. A plain training instruction that names the masked-input stage and the
    job's secure-aggregation settings is still a plain round to the policy: an agreement
    that requires secure aggregation refuses it, and nothing runs."""
    site = Governed(tmp_path, fed, privacy=PrivacyRequirements(secure_aggregation_required=True))
    secure = SecureAggregationSettings(clip_range=4.0)
    log: list[str] = []
    inst = site.instruction(**secure.to_config(), **{"secagg.stage": "masked_input"})
    reply = recorded_chain(site.app, log)(Work(instruction=inst))
    site.close()
    assert reply.error is not None
    assert "secure aggregation" in reply.error
    assert "run" not in log
    assert site.events() == ["job.refused"]
