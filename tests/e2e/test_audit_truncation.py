"""Truncated audit logs are evident: each log's head is anchored in the other party's log.

Real logs of a real governed run: a coordinator and three governed site nodes over mTLS
(each site signed the study agreement, registered its data, approved the bundle through its
audited store and enforces all of it; the bundle runs in the sandboxed worker), then
``biofed audit verify --against`` and ``biofed audit reconcile`` on logs cut short.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.coordinator import JobSpec
from biofed.governance import (
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    OutputPolicy,
    Party,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    sign,
    write_agreement,
)
from biofed.identity import Kit, load_kit

from .conftest import DATASET, Federation, job, wait_online, wait_terminal

pytestmark = pytest.mark.slow

runner = CliRunner(env={"COLUMNS": "200"})
SITES = ["center-0", "center-1", "center-2"]
AGREEMENT = "brca-anchors"
TASK_PY = (
    "from biofed.tasks import CoxPHTask\n\n"
    "def make_task(num_features):\n    return CoxPHTask(num_features=num_features)\n"
)
GOVERNANCE_TOML = (
    '\n[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
    'approvals = "approvals.json"\nregistry = "datasets.json"\nbundles_dir = "bundles"\n'
)


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _govern(federation: Federation, digest: str) -> bytes:
    """Every party signs the agreement; each site registers its data, approves the bundle
    (recorded in its signed audit log) and turns governance on in node.toml."""
    kits = {n: load_kit(federation.kit(n)) for n in [*SITES, "researcher", "coordinator"]}
    agreement = StudyAgreement(
        agreement_id=AGREEMENT,
        title="Anchored audit logs",
        purpose="Train a Cox model.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium=kits["coordinator"].consortium,
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in [*SITES, "researcher"]),
        datasets=dict.fromkeys(SITES, DATASET),
        approved_bundles=(digest,),
        outputs=OutputPolicy(final_model=True, metrics=("c_index",), per_site_metrics=True),
        min_cohort=10,
        expires=dt.date.today() + dt.timedelta(days=30),
    )
    signed = SignedAgreement(agreement=agreement)
    for party in agreement.signers:
        signed = sign(signed, kits[party.name])
    for site in SITES:
        folder = federation.kit(site)
        log = AuditLog(folder / "audit.jsonl", AuditSigner.from_kit(kits[site]))
        DatasetRegistry(folder / "datasets.json", audit=log.append).add(
            DATASET,
            folder / "data" / "tcga-brca.csv",
            format="csv",
            targets={"event": "event", "time": "time"},
            split_column="split",
            min_cohort=10,
        )
        for sub in ("agreements", "certificates", "bundles"):
            (folder / sub).mkdir()
        for party in agreement.signers:
            shutil.copy(
                federation.kit(party.name) / "cert.pem",
                folder / "certificates" / f"{party.name}.pem",
            )
        write_agreement(folder / "agreements" / f"{AGREEMENT}.toml", signed)
        ApprovalStore(folder / "approvals.json", audit=log).approve(digest, by="steward")
        with (folder / "node.toml").open("a") as toml:
            toml.write(GOVERNANCE_TOML)
    return signed.to_toml().encode()


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory, site_files: dict[str, Path]) -> Path:
    """The kits' folders after an 8-round governed run (train and evaluate each round):
    about 50 entries in each log."""
    root = tmp_path_factory.mktemp("anchors")
    federation = Federation(root, site_files, sites=SITES)
    try:
        task = root / "task"
        task.mkdir()
        (task / "task.py").write_text(TASK_PY)
        info = pack_bundle(task, root / "task.zip")
        agreement = _govern(federation, info.digest)
        federation.start_coordinator()
        for site in SITES:
            federation.start_node(site)
        client = federation.control()
        wait_online(client, SITES, timeout=60)
        spec = job(
            name="anchored",
            rounds=8,
            min_nodes=3,
            min_replies=3,
            round_timeout=60.0,
            train={"local_steps": 5},
        ).to_mapping()
        spec["run"].update(agreement=AGREEMENT, bundle=info.digest)
        spec["evaluate"]["metrics"] = "c_index"
        signers = [*SITES, "researcher", "coordinator"]
        run = client.submit_run(
            JobSpec.from_mapping(spec).to_json(),
            bundle=(root / "task.zip").read_bytes(),
            agreement=agreement,  # the coordinator keeps the agreement the job runs under
            certificates={n: (federation.kit(n) / "cert.pem").read_bytes() for n in signers},
        )
        assert wait_terminal(client, run.run_id, timeout=240) == "finished"
    finally:
        federation.close()
    return root / "consortium"


def _copy(consortium: Path, name: str, into: Path, *, keep: int | None = None) -> Path:
    """A copy of ``name``'s log (with its certificate and the CA next to it), its first
    ``keep`` entries only when given."""
    folder = into / name
    folder.mkdir(parents=True)
    for file in ("cert.pem", "ca.pem"):
        shutil.copy(consortium / name / file, folder / file)
    lines = (consortium / name / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (folder / "audit.jsonl").write_bytes(b"".join(lines if keep is None else lines[:keep]))
    return folder / "audit.jsonl"


def _entries(log: Path) -> int:
    return len(log.read_bytes().splitlines())


def _verify(log: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["audit", "verify", str(log), *args])
    return result.exit_code, " ".join(result.output.split())


def _furthest_anchor(consortium: Path) -> int:
    """The furthest coordinator head any node recorded."""
    seqs = [
        entry["data"]["anchor"]["seq"]
        for site in SITES
        for entry in map(json.loads, (consortium / site / "audit.jsonl").read_text().splitlines())
        if entry["event"] == "audit.anchored"
    ]
    return max(seqs)


def test_untouched_logs_hold_each_others_heads(consortium: Path) -> None:
    coordinator = consortium / "coordinator" / "audit.jsonl"
    for site in SITES:
        node = consortium / site / "audit.jsonl"
        code, out = _verify(node, "--against", str(coordinator))
        assert code == 0, out
        assert "holds the" in out
        assert "recorded by coordinator" in out
    against = [
        arg for site in SITES for arg in ("--against", str(consortium / site / "audit.jsonl"))
    ]
    code, out = _verify(coordinator, *against)
    assert code == 0, out
    nodes = [str(consortium / site / "audit.jsonl") for site in SITES]
    result = runner.invoke(app, ["audit", "reconcile", str(coordinator), *nodes])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("cut", ["one entry", "head -n -3", "10 kept"])
def test_a_node_log_cut_short_is_reported(consortium: Path, tmp_path: Path, cut: str) -> None:
    original = consortium / "center-2" / "audit.jsonl"
    total = _entries(original)
    keep = {"one entry": total - 1, "head -n -3": total - 3, "10 kept": 10}[cut]
    node = _copy(consortium, "center-2", tmp_path, keep=keep)
    coordinator = _copy(consortium, "coordinator", tmp_path)
    code, out = _verify(node)
    assert code == 0, out  # the chain alone cannot tell: what is left is a valid log
    code, out = _verify(node, "--against", str(coordinator))
    assert code == 1, out
    assert f"ends at entry {keep}, but coordinator recorded its head at entry {total}" in out
    assert "were removed" in out
    assert "Traceback" not in out
    others = [str(consortium / site / "audit.jsonl") for site in SITES if site != "center-2"]
    result = runner.invoke(app, ["audit", "reconcile", str(coordinator), str(node), *others])
    assert result.exit_code == 1
    assert "missing:" in result.output


@pytest.mark.parametrize("cut", ["one entry", "10 kept"])
def test_a_coordinator_log_cut_short_is_reported(
    consortium: Path, tmp_path: Path, cut: str
) -> None:
    anchored = _furthest_anchor(consortium)
    # "one entry": the last entry any node holds the head of is cut off
    keep = {"one entry": anchored - 1, "10 kept": 10}[cut]
    coordinator = _copy(consortium, "coordinator", tmp_path, keep=keep)
    nodes = [_copy(consortium, site, tmp_path) for site in SITES]
    code, out = _verify(coordinator)
    assert code == 0, out
    code, out = _verify(coordinator, *[a for n in nodes for a in ("--against", str(n))])
    assert code == 1, out
    assert f"ends at entry {keep}, but center-" in out
    assert f"at entry {anchored}" in out
    result = runner.invoke(app, ["audit", "reconcile", str(coordinator), *map(str, nodes)])
    assert result.exit_code == 1
    assert "missing:" in result.output


def test_the_newest_entries_are_evident_against_a_head_kept_elsewhere(
    consortium: Path, tmp_path: Path
) -> None:
    """What came after the last exchange (the last round's receipts, ``run.finished``) is
    in no other log yet: `verify` says so, and a head kept elsewhere catches the cut."""
    full = consortium / "coordinator" / "audit.jsonl"
    code, out = _verify(full, "--against", str(consortium / "center-0" / "audit.jsonl"))
    assert code == 0
    assert "came after the last head center-0 recorded" in out
    head = out.rsplit("head ", 1)[1].strip()
    total = _entries(full)
    assert head.startswith(f"{total}:")
    cut = _copy(consortium, "coordinator", tmp_path, keep=total - 1)
    code, out = _verify(cut, "--expect-head", head)
    assert code == 1, out
    assert f"ends at entry {total - 1}" in out
    code, out = _verify(full, "--expect-head", head.split(":")[1])  # a bare hash works too
    assert code == 0, out
