"""A [robust] job at an in-process coordinator: its trusted data comes from the operator's
registry, and every decision about a site's update is a run event ``update_<action>`` and a
signed entry ``update.<action>`` in the coordinator's audit log (issue 15)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_robust_job import flip_boosted, held_out, write_table

from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
from biofed.governance import AuditLog
from biofed.governance._audit._signer import AuditSigner
from biofed.simulation import TamperingBackend
from biofed.simulation._job_sites import site_recipes
from biofed.transport import InMemoryTransport
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")


class Hub:
    """The coordinator's node directory: the six TCGA-BRCA sites as real in-process nodes,
    center-0 lying (a fresh transport per run)."""

    def __init__(self, workdir: Path) -> None:
        fed, _ = held_out()
        self.recipes = site_recipes(fed, "tcga-brca", workdir=workdir, needs_kits=False)
        self.backend = TamperingBackend({"center-0": flip_boosted})

    def transport_for(self, run_id: str, dataset: str) -> InMemoryTransport:
        return self.backend.transport(self.recipes)

    def sessions(self) -> list[Any]:
        return []

    def cancel_run(self, run_id: str) -> int:
        return 0


def wait_terminal(service: Coordinator, run_id: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.get_run(ALICE, run_id).status
        if status in ("finished", "finished_with_failures", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end")


def test_each_decision_reaches_the_coordinators_signed_audit_log(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    audit = AuditLog(tmp_path / "audit.jsonl", AuditSigner("coordinator", key))
    reference = write_table(tmp_path / "reference.csv", held_out()[1])
    hub = Hub(tmp_path)
    store = InMemoryStateStore()
    service = Coordinator(
        store,
        hub=lambda **_: hub,  # type: ignore[arg-type,return-value]
        node_wait=5.0,
        audit=audit,
        trusted_data={"tcga-reference": reference},
    )
    job = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 2, "min_nodes": 6, "min_replies": 6},
            "task": {"name": "cox_ph", "num_features": 39},
            "train": {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
            "robust": {"validation": True, "trusted_dataset": "tcga-reference"},
        }
    )
    service.start()
    try:
        run_id = service.submit_run(ALICE, job.to_json()).run_id
        assert wait_terminal(service, run_id) == "finished"
    finally:
        service.stop()
    events = [(e.round, e.kind, e.node_id) for e in store.events(run_id)]
    rejected = [(r, node) for r, kind, node in events if kind == "update_rejected"]
    assert rejected == [(1, "center-0"), (2, "center-0")]
    entries, reset = audit.follower().read()  # checks every entry's chain and signature
    assert not reset
    decided = [e for e in entries if e.event.startswith("update.")]
    assert [(e.data["round"], e.data["node"]) for e in decided if e.event == "update.rejected"] == [
        (1, "center-0"),
        (2, "center-0"),
    ]
    honest = {e.data["node"] for e in decided if e.event == "update.accepted"}
    assert honest == {f"center-{i}" for i in range(1, 6)}
    assert len(decided) == 12  # six decisions a round, each audited once
    for entry in decided:
        assert entry.data["run_id"] == run_id
        assert entry.writer == "coordinator"
        assert "c_index on the trusted data" in entry.data["reason"]
    lie = next(e for e in decided if e.event == "update.rejected")
    assert lie.data["weight"] == 0.0
    assert lie.data["score"] < -0.05  # it lowered the trusted C-index by more than max_drop
