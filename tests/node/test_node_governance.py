"""Node-side enforcement: with [governance] in node.toml, every instruction is checked
against the site's own agreements, registry and approvals, every reply is controlled, and
every decision is in the node's signed audit log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.coordinator._job import JobSpec
from biofed.core import BiofedError, ConfigurationError, Instruction, MessageKind, Reply
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
    verify_log,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.tasks import CoxPHTask

SIGNERS = ("a", "b", "r", "coordinator")
AGREEMENT = "brca-cox"
TASK_PY = (
    "from biofed.tasks import CoxPHTask\n"
    "def make_task(num_features): return CoxPHTask(num_features=num_features)\n"
)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return folder


@pytest.fixture(scope="module")
def kits(fed: Path) -> dict[str, Kit]:
    return {name: load_kit(fed / name) for name in SIGNERS}


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("bundle")
    (root / "task").mkdir()
    (root / "task" / "task.py").write_text(TASK_PY)
    info = pack_bundle(root / "task", root / "b.zip")
    return info.digest, root / "b.zip"


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


class Site:
    """One site's folder: node.toml, registry, approvals, agreements, bundles."""

    def __init__(self, root: Path, fed: Path, kits: dict[str, Kit], bundle: tuple[str, Path]):
        self.root, self.fed, self.kits = root, fed, kits
        self.digest, packed = bundle
        paths = write_site_files(load_tcga_brca(), root / "data")
        self.csv = paths["center-1"]
        for sub in ("agreements", "certificates", "bundles"):
            (root / sub).mkdir()
        for name in SIGNERS:
            shutil.copy(fed / name / "cert.pem", root / "certificates" / f"{name}.pem")
        shutil.copy(packed, root / "bundles" / f"{self.digest}.zip")
        self.registry = DatasetRegistry(root / "datasets.json")
        self.audit = root / "audit.jsonl"
        # approvals are recorded in (and read back from) the node's signed audit log
        log = AuditLog(self.audit, AuditSigner.from_kit(kits["a"]))
        self.approvals = ApprovalStore(root / "approvals.json", audit=log)
        (root / "node.toml").write_text(
            f'[datasets.brca]\npath = "{self.csv}"\nformat = "csv"\nsplit_column = "split"\n'
            'targets = { event = "event", time = "time" }\n\n'
            '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
            'approvals = "approvals.json"\nregistry = "datasets.json"\n'
            'bundles_dir = "bundles"\naudit = "audit.jsonl"\n'
        )

    def agreement(self, **changes: Any) -> StudyAgreement:
        base = StudyAgreement(
            agreement_id=AGREEMENT,
            title="Survival in breast cancer",
            purpose="Train a Cox model.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="t",
            coordinator=_party(self.kits["coordinator"]),
            parties=tuple(_party(self.kits[n]) for n in ("a", "b", "r")),
            datasets={"a": "brca", "b": "brca"},
            approved_bundles=(self.digest,),
            outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
        return dataclasses.replace(base, **changes)

    def sign_and_place(
        self,
        agreement: StudyAgreement,
        *,
        signers: tuple[str, ...] = SIGNERS,
        now: dt.datetime | None = None,
    ) -> SignedAgreement:
        signed = SignedAgreement(agreement=agreement)
        for name in signers:
            signed = sign(signed, self.kits[name], now=now)
        write_agreement(self.root / "agreements" / f"{agreement.agreement_id}.toml", signed)
        return signed

    def setup(self, *, min_cohort: int = 10, approve: bool = True, **changes: Any) -> None:
        self.registry.add("brca", self.csv, format="csv", min_cohort=min_cohort)
        if approve:
            self.approvals.approve(self.digest, by="operator")
        self.sign_and_place(self.agreement(**changes))

    def app(self) -> NodeApp:
        return NodeApp("a", NodeConfig.from_toml(self.root / "node.toml"), kit=self.kits["a"])

    def events(self) -> list[dict[str, Any]]:
        """The node's entries (the operator's approvals, also in this log, left out)."""
        if not self.audit.exists():
            return []
        entries = [json.loads(line) for line in self.audit.read_text().splitlines()]
        return [e for e in entries if e["event"] not in ("bundle.approved", "bundle.revoked")]


@pytest.fixture
def site(tmp_path: Path, fed: Path, kits: dict[str, Kit], bundle_file: tuple[str, Path]) -> Site:
    return Site(tmp_path, fed, kits, bundle_file)


def _inst(site: Site, kind: MessageKind = MessageKind.TRAIN, **config: object) -> Instruction:
    params = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    base: dict[str, object] = {
        "seed": 1,
        "local_steps": 2,
        "task": "cox",
        "dataset": "brca",
        "task.num_features": 39,
        "agreement": AGREEMENT,
        "bundle": site.digest,
    }
    if kind is MessageKind.EVALUATE:
        base["split"] = "test"
    base.update(config)
    return Instruction(
        run_id="run-1",
        round=1,
        node_id="a",
        kind=kind,
        parameters=params,
        config={k: v for k, v in base.items() if v is not None},  # type: ignore[misc]
    )


def test_an_allowed_job_runs_the_bundle_controls_outputs_and_audits(site: Site) -> None:
    site.setup()
    app = site.app()
    reply = app.handle(_inst(site))
    assert reply.ok, reply.error
    assert reply.num_examples == 156
    assert dict(reply.metrics) == {}  # train_loss is not an allowed metric: dropped
    assert any(key[1] == f"bundle:{site.digest}" for key in app._nodes)

    evaluation = app.handle(_inst(site, MessageKind.EVALUATE, metrics="c_index"))
    assert evaluation.ok, evaluation.error
    assert set(evaluation.metrics) == {"c_index"}
    assert evaluation.num_examples == 40

    events = site.events()
    assert [e["event"] for e in events] == [
        "job.accepted",
        "round.sent",
        "job.accepted",
        "round.sent",
    ]
    accepted, sent = events[0]["data"], events[1]["data"]
    assert accepted["agreement"] == AGREEMENT
    assert accepted["bundle"] == site.digest
    assert accepted["dataset"] == "brca"
    assert (accepted["run_id"], accepted["round"], accepted["kind"]) == ("run-1", 1, "train")
    assert sent["dropped_metrics"] == ["train_loss"]
    assert sent["metrics"] == []
    assert sent["bytes"] > 0
    assert len(sent["payload_sha256"]) == 64
    assert events[3]["data"]["bytes"] == 0
    assert events[3]["data"]["metrics"] == ["c_index"]
    report = verify_log(
        site.audit, (site.fed / "a" / "cert.pem").read_bytes(), site.kits["a"].ca_pem
    )
    assert report.ok


def _refused(site: Site, inst: Instruction, rule: str, text: str) -> None:
    app = site.app()
    reply = app.handle(inst)
    assert reply.error is not None
    assert reply.error.startswith(f"policy: {rule}:"), reply.error
    assert text in reply.error, reply.error
    assert app._nodes == {}  # nothing was built, nothing ran
    events = site.events()
    assert [e["event"] for e in events if e["event"].startswith(("job.", "round."))] == [
        "job.refused"
    ]
    refused = next(e for e in events if e["event"] == "job.refused")["data"]
    assert refused["rule"] == reply.error.removeprefix("policy: ")
    assert (refused["run_id"], refused["round"]) == ("run-1", 1)


Setup = Callable[[Site], Instruction]


def _expired(site: Site) -> Instruction:
    site.registry.add("brca", site.csv, format="csv")
    site.approvals.approve(site.digest, by="operator")
    then = dt.datetime(2019, 6, 1, tzinfo=dt.timezone.utc)
    site.sign_and_place(site.agreement(expires=dt.date(2020, 1, 1)), now=then)
    return _inst(site)


def _unsigned_by_site(site: Site) -> Instruction:
    site.registry.add("brca", site.csv, format="csv")
    site.approvals.approve(site.digest, by="operator")
    site.sign_and_place(site.agreement(), signers=("b", "r", "coordinator"))
    return _inst(site)


def _edited(site: Site) -> Instruction:
    site.setup()
    file = site.root / "agreements" / f"{AGREEMENT}.toml"
    file.write_text(file.read_text().replace("min_cohort = 10", "min_cohort = 5"))
    return _inst(site)


def _dataset_outside(site: Site) -> Instruction:
    site.setup(datasets={"a": "other-data", "b": "brca"})
    return _inst(site)


def _dataset_changed(site: Site) -> Instruction:
    site.setup()
    with site.csv.open("a") as fh:
        fh.write("\n")
    return _inst(site)


def _cohort(site: Site) -> Instruction:
    site.setup(min_cohort=1000)
    return _inst(site)


def _not_approved(site: Site) -> Instruction:
    site.setup(approve=False)
    return _inst(site)


def _not_in_agreement(site: Site) -> Instruction:
    site.setup(approved_bundles=("ab" * 32,))
    return _inst(site)


def _tampered(site: Site) -> Instruction:
    site.setup()
    other = site.root / "evil"
    other.mkdir()
    (other / "task.py").write_text(TASK_PY + "import os\n")
    pack_bundle(other, site.root / "bundles" / f"{site.digest}.zip.new")
    (site.root / "bundles" / f"{site.digest}.zip.new").replace(
        site.root / "bundles" / f"{site.digest}.zip"
    )
    return _inst(site)


def _metric_not_allowed(site: Site) -> Instruction:
    site.setup()
    return _inst(site, MessageKind.EVALUATE, metrics="c_index,loss")


def _no_per_site(site: Site) -> Instruction:
    site.setup(outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=False))
    return _inst(site, MessageKind.EVALUATE)


def _dp_required(site: Site) -> Instruction:
    site.setup(
        privacy=PrivacyRequirements(
            dp_required=True,
            max_epsilon={"a": 1.0, "b": 1.0},
            max_delta={"a": 1e-5, "b": 1e-5},
        )
    )
    return _inst(site)


def _secagg_required(site: Site) -> Instruction:
    site.setup(privacy=PrivacyRequirements(secure_aggregation_required=True))
    return _inst(site)


def _no_agreement(site: Site) -> Instruction:
    site.setup()
    return _inst(site, agreement=None)


def _no_bundle(site: Site) -> Instruction:
    site.setup()
    return _inst(site, bundle=None)


@pytest.mark.parametrize(
    ("prepare", "rule", "text"),
    [
        (_expired, "agreement", "expired on 2020-01-01"),
        (_unsigned_by_site, "agreement", "not signed by site 'a'"),
        (_edited, "agreement", "edited after"),
        (_no_agreement, "agreement", "names no study agreement"),
        (_dataset_outside, "dataset", "puts only 'other-data'"),
        (_dataset_changed, "dataset", "changed since registration"),
        (_cohort, "cohort", "fewer than the minimum cohort of 1000"),
        (_no_bundle, "bundle", "names no task bundle"),
        (_not_approved, "bundle", "not approved by this site's operator"),
        (_not_in_agreement, "bundle", "not approved in agreement"),
        (_tampered, "bundle", "does not match the expected"),
        (_metric_not_allowed, "outputs", "loss are not allowed"),
        (_no_per_site, "outputs", "does not allow per-site metrics"),
        (_dp_required, "privacy", "requires differential privacy, which this job does not"),
        (_secagg_required, "privacy", "requires secure aggregation"),
    ],
)
def test_each_refusal_names_its_rule_is_audited_and_runs_nothing(
    site: Site, prepare: Setup, rule: str, text: str
) -> None:
    _refused(site, prepare(site), rule, text)


def test_a_changed_dataset_is_audited_as_changed(site: Site) -> None:
    inst = _dataset_changed(site)
    site.app().handle(inst)
    assert "dataset.changed" in [e["event"] for e in site.events()]


def test_reply_with_foreign_extras_is_withheld(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.setup()
    app = site.app()
    inst = _inst(site)
    from biofed.node import SiteNode

    def leaky(self: SiteNode, instruction: Instruction) -> Reply:
        return Reply(
            run_id=instruction.run_id,
            round=instruction.round,
            node_id="a",
            kind=instruction.kind,
            parameters=instruction.parameters,
            num_examples=156,
            extras={"rows": instruction.parameters},
        )

    monkeypatch.setattr(SiteNode, "handle", leaky)
    reply = app.handle(inst)
    assert reply.error is not None
    assert reply.error.startswith("policy: outputs:")
    assert [e["event"] for e in site.events()] == ["job.accepted", "round.withheld"]


def test_governance_needs_the_kit_and_a_complete_table(site: Site) -> None:
    config = NodeConfig.from_toml(site.root / "node.toml")
    assert config.governance is not None
    assert config.governance.bundles_dir == site.root / "bundles"
    with pytest.raises(ConfigurationError, match="needs its kit"):
        NodeApp("a", config)
    with pytest.raises(ConfigurationError, match="not site 'b'"):
        NodeApp("b", config, kit=site.kits["a"])
    bad = site.root / "bad.toml"
    bad.write_text('[governance]\nagreements_dir = "x"\n')
    with pytest.raises(ConfigurationError, match="needs certificates_dir"):
        NodeConfig.from_toml(bad)
    bad.write_text('[governance]\nsurprise = "x"\n')
    with pytest.raises(ConfigurationError, match="unknown key"):
        NodeConfig.from_toml(bad)


def test_job_carries_agreement_and_bundle(bundle_file: tuple[str, Path]) -> None:
    digest = bundle_file[0]
    job = JobSpec.from_toml(
        f'[run]\ndataset = "brca"\nagreement = "{AGREEMENT}"\nbundle = "{digest}"\n'
        '[task]\nname = "cox_ph"\nnum_features = 39\n'
    )
    config = job.instruction_config()
    assert config["agreement"] == AGREEMENT
    assert config["bundle"] == digest
    assert JobSpec.from_json(job.to_json()) == job
    plain = JobSpec.from_toml(
        '[run]\ndataset = "brca"\n[task]\nname = "cox_ph"\nnum_features = 39\n'
    )
    assert "agreement" not in plain.instruction_config()
    assert "agreement" not in plain.to_json()
    with pytest.raises(ConfigurationError, match="bundle"):
        JobSpec.from_toml('[run]\ndataset = "d"\nbundle = "xyz"\n[task]\nname = "cox_ph"\n')


def test_an_approved_bundle_missing_here_is_fetched_checked_and_kept(site: Site) -> None:
    packed = (site.root / "bundles" / f"{site.digest}.zip").read_bytes()
    (site.root / "bundles" / f"{site.digest}.zip").unlink()
    site.setup()
    app = site.app()
    asked: list[str] = []

    def wrong_bytes(digest: str) -> bytes:
        asked.append(digest)
        return packed[:-20] + b"\0" * 20

    app.fetch_bundle = wrong_bytes
    refused = app.handle(_inst(site))
    assert refused.error is not None
    assert "not at this site" in refused.error
    assert asked == [site.digest]

    app.fetch_bundle = lambda digest: packed
    reply = app.handle(_inst(site))
    assert reply.ok, reply.error
    assert (site.root / "bundles" / f"{site.digest}.zip").read_bytes() == packed
    events = [e["event"] for e in site.events()]
    assert events[:3] == ["bundle.fetch_failed", "job.refused", "bundle.fetched"]


def test_an_unapproved_bundle_is_never_fetched(site: Site) -> None:
    (site.root / "bundles" / f"{site.digest}.zip").unlink()
    site.setup(approve=False)
    app = site.app()
    asked: list[str] = []
    app.fetch_bundle = lambda digest: asked.append(digest) or b""  # type: ignore[func-returns-value]
    reply = app.handle(_inst(site))
    assert reply.error is not None
    assert asked == []


# -- differential privacy at the site ---------------------------------------------------------
DP_AGREEMENT = PrivacyRequirements(
    dp_required=True, max_epsilon={"a": 8.0, "b": 8.0}, max_delta={"a": 1e-5, "b": 1e-5}
)


def _dp_inst(site: Site, round: int = 1, **settings: Any) -> Instruction:
    from biofed.privacy import DPSettings

    table: dict[str, Any] = {
        "mode": "client",
        "delta": 1e-5,
        "noise_multiplier": 2.0,
        "max_grad_norm": 0.5,
        "noise": "distributed",
        **settings,
    }
    dp = DPSettings.from_table(table, rounds=4, min_replies=2)
    config: dict[str, Any] = {**dp.to_config(), "dp.clip_norm": 0.5}
    if dp.noise == "distributed":
        config["dp.noise_std_share"] = float(dp.noise_multiplier or 0) * 0.5 / np.sqrt(2)
    return dataclasses.replace(_inst(site, **config), round=round)


def _with_caps(site: Site, epsilon: float, delta: float = 1e-5) -> None:
    toml = site.root / "node.toml"
    toml.write_text(
        toml.read_text() + f"\n[privacy.caps.brca]\nepsilon = {epsilon}\ndelta = {delta}\n"
    )


def _ledger(site: Site) -> Any:
    from biofed.governance._ledger import PrivacyLedger

    return PrivacyLedger(site.fed / "a" / "privacy.db")


@pytest.fixture
def dp_site(site: Site) -> Site:
    (site.fed / "a" / "privacy.db").unlink(missing_ok=True)  # the kit folder is shared
    yield site
    (site.fed / "a" / "privacy.db").unlink(missing_ok=True)


def test_dp_round_is_debited_before_release_clipped_noised_and_reports_epsilon(
    dp_site: Site,
) -> None:
    from biofed.privacy import RdpAccountant

    site = dp_site
    _with_caps(site, 10.0)
    site.setup(privacy=DP_AGREEMENT)
    inst = _dp_inst(site)
    reply = site.app().handle(inst)
    assert reply.ok, reply.error
    # the site counts only the noise min_replies = 2 shares carry: z = share·√2 / C = 2
    expected = RdpAccountant()
    expected.step(2.0, 1.0, 1)
    assert reply.metrics["dp.epsilon"] == pytest.approx(expected.epsilon(1e-5))
    assert reply.metrics["dp.delta"] == 1e-5
    # the update left clipped to C = 0.5 plus a noise share of std 0.707 per coordinate
    assert reply.parameters is not None
    delta = np.concatenate(
        [(reply.parameters[n] - inst.parameters[n]).ravel() for n in inst.parameters]
    )
    assert 0.3 < float(np.std(delta)) < 1.2
    events = [e["event"] for e in site.events()]
    assert events.index("budget.debited") < events.index("round.sent")
    sent = next(e for e in site.events() if e["event"] == "round.sent")["data"]
    assert sent["dp_epsilon"] == reply.metrics["dp.epsilon"]
    spent = _ledger(site).spent("brca")
    assert spent.cap_epsilon == 10.0
    assert spent.jobs[0].epsilon == pytest.approx(reply.metrics["dp.epsilon"])


def test_a_round_that_would_exceed_the_budget_is_refused_and_audited(dp_site: Site) -> None:
    site = dp_site
    _with_caps(site, 1.0)  # one round at z = 2 costs more than ε = 1
    site.setup(privacy=DP_AGREEMENT)
    app = site.app()
    reply = app.handle(_dp_inst(site))
    assert reply.error is not None
    assert "privacy budget" in reply.error, reply.error
    events = site.events()
    names = [e["event"] for e in events]
    assert "budget.refused" in names
    assert "round.sent" not in names
    refused = next(e for e in events if e["event"] == "budget.refused")["data"]
    assert refused["cap_epsilon"] == 1.0
    assert refused["run_id"] == "run-1"
    assert _ledger(site).spent("brca").spent_epsilon == 0.0


def test_the_ledger_survives_a_node_restart_and_composes_the_jobs_rounds(dp_site: Site) -> None:
    from biofed.privacy import RdpAccountant

    site = dp_site
    _with_caps(site, 10.0)
    site.setup(privacy=DP_AGREEMENT)
    first = site.app().handle(_dp_inst(site, round=1))
    assert first.ok, first.error
    second = site.app().handle(_dp_inst(site, round=2))  # a new node process: new NodeApp
    assert second.ok, second.error
    two = RdpAccountant()
    two.step(2.0, 1.0, 2)
    assert second.metrics["dp.epsilon"] == pytest.approx(two.epsilon(1e-5))
    assert second.metrics["dp.epsilon"] > first.metrics["dp.epsilon"]
    again = site.app().handle(_dp_inst(site, round=2))  # a retried round costs nothing more
    assert again.metrics["dp.epsilon"] == pytest.approx(second.metrics["dp.epsilon"])
    assert sorted(_ledger(site).mechanisms("brca", "run-1")) == [1, 2]


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        (
            {"noise": "central", "noise_multiplier": None, "target_epsilon": 20.0},
            "above the agreement's ε=8",
        ),
        ({"noise_multiplier": 0.3}, "above the agreement's ε=8"),
        ({"delta": 1e-3}, "above the agreement's δ=1e-05"),
        ({"seeded": True}, "seeded DP noise"),
    ],
)
def test_a_job_whose_dp_settings_violate_the_agreement_is_refused(
    dp_site: Site, settings: dict[str, Any], text: str
) -> None:
    site = dp_site
    _with_caps(site, 100.0)
    site.setup(privacy=DP_AGREEMENT)
    _refused(site, _dp_inst(site, **settings), "privacy", text)


def _hand_approve(site: Site, digest: str) -> None:
    """What an operator bypassing the audited command does: edit approvals.json."""
    doc = json.loads((site.root / "approvals.json").read_text())
    doc["approvals"][digest] = {"by": "mallory", "note": "", "approved_at": "2026-01-01"}
    (site.root / "approvals.json").write_text(json.dumps(doc))


def test_a_hand_edited_approval_is_refused_at_start_and_at_use(site: Site) -> None:
    site.setup()
    other = "ab" * 32
    running = site.app()  # started before the edit
    _hand_approve(site, other)
    with pytest.raises(ConfigurationError, match="no approval of it in force") as refused:
        site.app()  # the node does not start
    assert "\n" not in str(refused.value)
    assert "approvals.json" in str(refused.value)
    assert "biofed node approve" in str(refused.value)
    # a node already running does not take the edit either: the log decides at use
    reply = running.handle(_inst(site, bundle=other))
    assert reply.error is not None
    assert "bundle" in reply.error
    assert running.policy is not None
    with pytest.raises(ConfigurationError, match="no approval of it in force"):
        running.policy.approvals.is_approved(other)
    # the genuine approval still counts; revoking it through the store is recorded and holds
    assert running.policy.approvals.is_approved(site.digest)
    site.approvals.revoke(site.digest)
    assert not running.policy.approvals.is_approved(site.digest)
    _hand_approve(site, site.digest)  # putting it back by hand does not re-approve it
    with pytest.raises(ConfigurationError, match="no approval of it in force"):
        running.policy.approvals.is_approved(site.digest)


def test_an_approval_written_into_the_log_by_another_key_does_not_count(site: Site) -> None:
    site.setup(approve=False)
    other_site = AuditLog(site.root / "b-audit.jsonl", AuditSigner.from_kit(site.kits["b"]))
    entry = other_site.append("bundle.approved", {"bundle": site.digest, "by": "b"})
    with site.audit.open("ab") as log:  # append b's signed entry to a's log
        log.write(entry.line())
    ApprovalStore(site.root / "approvals.json").approve(site.digest, by="x")  # file only
    with pytest.raises(BiofedError, match="signed by 'a'"):
        site.app()


def test_the_coordinator_head_is_recorded_and_the_reply_carries_the_node_head(
    site: Site,
) -> None:
    site.setup()
    app = site.app()
    coordinator_head = "7:" + "c" * 64
    inst = dataclasses.replace(_inst(site), audit_head=coordinator_head)
    reply = app.handle(inst)
    assert reply.ok, reply.error
    entries = [json.loads(line) for line in site.audit.read_text().splitlines()]
    anchored = [e for e in entries if e["event"] == "audit.anchored"]
    assert [e["data"]["anchor"] for e in anchored] == [
        {"peer": "coordinator", "seq": 7, "hash": "c" * 64}
    ]
    last = entries[-1]
    assert last["event"] == "round.sent"
    assert reply.audit_head == f"{last['seq']}:{last['hash']}"
    # the same head again is not recorded twice; a refusal carries the head too
    refused = app.handle(dataclasses.replace(inst, config={**inst.config, "dataset": "nope"}))
    assert refused.error is not None
    entries = [json.loads(line) for line in site.audit.read_text().splitlines()]
    assert len([e for e in entries if e["event"] == "audit.anchored"]) == 1
    assert entries[-1]["event"] == "job.refused"
    assert refused.audit_head == f"{entries[-1]['seq']}:{entries[-1]['hash']}"
