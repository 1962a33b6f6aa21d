"""A run under a study agreement that states ``[incentives]`` (issue 17, item 3): the
coordinator measures with the agreed measure, applies the policy to the run's ledger, writes
its outcome into the ``contributions`` event, the signed audit log (``incentive.outcome``
per site) and the result's metadata; a job that would escape the policy is refused at
submit."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_contrib_job import Hub
from test_robust_job import flip_boosted, held_out, write_table

from biofed.contribution import CONTRIBUTIONS_EVENT, verify_outcome
from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
from biofed.coordinator._agreements import AgreementKeeper
from biofed.core import ConfigurationError, decode_metadata
from biofed.governance import (
    AuditLog,
    IncentivePolicy,
    OutputPolicy,
    Party,
    SignedAgreement,
    StudyAgreement,
    sign,
)
from biofed.governance._audit._signer import AuditSigner
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
SIGNERS = ("coordinator", "a", "alice")
ID = "study-1"
POLICY = IncentivePolicy(
    measure="shapley",
    reward="proportional",
    min_share=0.05,
    below_min="delayed",
    delay_days=30,
)


def _agreement_file(fed: Path) -> bytes:
    def party(name: str) -> Party:
        kit = load_kit(fed / name)
        return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)

    agreement = StudyAgreement(
        agreement_id=ID,
        title="t",
        purpose="p",
        legal_basis="l",
        consortium="t",
        coordinator=party("coordinator"),
        parties=tuple(party(n) for n in SIGNERS[1:]),
        datasets={"a": "tcga-brca"},
        approved_bundles=(),
        outputs=OutputPolicy(),
        expires=dt.date(2099, 1, 1),
        incentives=POLICY,
    )
    signed = SignedAgreement(agreement=agreement)
    for name in SIGNERS:
        signed = sign(signed, load_kit(fed / name))
    return signed.to_toml().encode()


def _job(**contribution: Any) -> JobSpec:
    tables: dict[str, Any] = {
        "run": {
            "dataset": "tcga-brca",
            "rounds": 2,
            "min_nodes": 6,
            "min_replies": 6,
            "agreement": ID,
        },
        "task": {"name": "cox_ph", "num_features": 39},
        "train": {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
        "robust": {"validation": True, "trusted_dataset": "ref"},
    }
    if contribution:
        tables["contribution"] = contribution
    return JobSpec.from_mapping(tables)


def _wait(service: Coordinator, run_id: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = service.get_run(ALICE, run_id).status
        if status in ("finished", "finished_with_failures", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end")


def test_the_agreed_policy_is_applied_audited_and_travels_with_the_model(
    tmp_path: Path,
) -> None:
    fed = tmp_path / "consortium"
    Consortium.create(
        fed, consortium="t", coordinator="127.0.0.1:7443", sites=["a"], researchers=["alice"]
    )
    kit = load_kit(fed / "coordinator")
    keeper = AgreementKeeper(
        tmp_path / "agreements",
        ca_pem=kit.ca_pem,
        crl=lambda: (fed / "coordinator" / "crl.pem").read_bytes(),
        coordinator="coordinator",
        coordinator_pem=kit.cert_pem,
    )
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    audit = AuditLog(tmp_path / "audit.jsonl", AuditSigner("coordinator", key))
    store = InMemoryStateStore()
    service = Coordinator(
        store,
        hub=lambda **_: Hub(tmp_path, {"center-0": flip_boosted}),  # type: ignore[arg-type,return-value]
        node_wait=5.0,
        audit=audit,
        agreements=keeper,
        trusted_data={"ref": write_table(tmp_path / "ref.csv", held_out()[1])},
    )
    agreement = _agreement_file(fed)
    certs = {n: (fed / n / "cert.pem").read_bytes() for n in SIGNERS}
    service.start()
    try:
        with pytest.raises(ConfigurationError, match=r"states \[incentives\]: the job needs"):
            service.submit_run(ALICE, _job().to_json(), agreement=agreement, certificates=certs)
        other = _job(trusted_dataset="ref", method="leave_one_out").to_json()
        with pytest.raises(ConfigurationError, match="differs from the \\[incentives\\] measure"):
            service.submit_run(ALICE, other, agreement=agreement, certificates=certs)
        run_id = service.submit_run(
            ALICE, _job(trusted_dataset="ref").to_json(), agreement=agreement, certificates=certs
        ).run_id
        assert _wait(service, run_id) == "finished"
        result = service.run_result(ALICE, run_id)
    finally:
        service.stop()
    final = next(e for e in store.events(run_id) if e.kind == CONTRIBUTIONS_EVENT)
    record = json.loads(final.message)
    assert {r["method"] for r in record["ledger"]["rounds"]} == {"shapley"}  # auto → agreed
    outcome = record["outcome"]
    rider = outcome["sites"]["center-3"]
    assert rider["free_rider"] is True
    assert rider["reward_share"] == 0.0
    assert rider["access"] == "delayed"
    assert rider["delay_days"] == 30
    # center-0's every update was rejected: never measured, still given the policy's figures
    assert "center-0" not in record["ledger"]["totals"]
    rejected = outcome["sites"]["center-0"]
    assert (rejected["value"], rejected["free_rider"], rejected["access"]) == (
        0.0,
        True,
        "delayed",
    )
    paid = sum(s["reward_share"] for s in outcome["sites"].values())
    assert paid == pytest.approx(1.0)
    # each site recomputes its own figures from what was published
    ledger_json = json.dumps(record["ledger"])
    for site in outcome["sites"]:
        assert verify_outcome(POLICY, ledger_json, json.dumps(outcome), site) == []
    entries, reset = audit.follower().read()
    assert not reset
    audited = {e.data["site"]: e.data for e in entries if e.event == "incentive.outcome"}
    assert set(audited) == set(outcome["sites"])
    assert audited["center-3"]["free_rider"] is True
    assert all(e.data["run_id"] == run_id for e in entries if e.event == "incentive.outcome")
    metadata = decode_metadata(result)
    carried = json.loads(metadata["contributions"])
    assert carried["outcome"] == outcome
    assert carried["shares"]["center-3"] == 0.0
