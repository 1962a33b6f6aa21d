"""A job's ``[contribution]`` table (issue 17): it wraps the job's strategy (after Robust or
DP-FedAvg) in ``Measured`` valued on the coordinator's trusted data, every refusal is one
line naming the keys, and at an in-process coordinator the run ends with the
``contributions`` event and one signed ``contribution.measured`` audit entry per site."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from test_robust_job import held_out, write_table

from biofed.attacks import FreeRiding
from biofed.contribution import (
    CONTRIBUTIONS_EVENT,
    Measured,
    ledger_from_run_record,
    shapley_from_table,
)
from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
from biofed.coordinator._job_schema import CONTRIBUTION
from biofed.core import ConfigurationError
from biofed.governance import AuditLog
from biofed.governance._audit._signer import AuditSigner
from biofed.simulation import TamperingBackend
from biofed.simulation._job_sites import site_recipes
from biofed.strategies import DPFedAvg, Robust
from biofed.transport import InMemoryTransport
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
RUN = {"dataset": "tcga-brca", "min_nodes": 6, "min_replies": 4}
TASK = {"name": "cox_ph", "num_features": 39}
MEASURED = {"trusted_dataset": "tcga-reference"}


def job(contribution: dict[str, Any] | None, **tables: Any) -> JobSpec:
    data: dict[str, Any] = {"run": dict(RUN), "task": dict(TASK), **tables}
    if contribution is not None:
        data["contribution"] = contribution
    return JobSpec.from_mapping(data)


def refusal(contribution: dict[str, Any] | None, **tables: Any) -> str:
    with pytest.raises(ConfigurationError) as caught:
        job(contribution, **tables)
    return str(caught.value)


def test_the_table_wraps_the_strategy_last_and_travels_with_the_job() -> None:
    spec = job({**MEASURED, "method": "gtg_shapley", "seed": 7, "max_evaluations": 300})
    assert spec.contribution is not None
    assert spec.trusted_dataset == "tcga-reference"
    assert spec.needs_trusted
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    rows = held_out()[1]
    from biofed.coordinator import TrustedData

    trusted = TrustedData(spec, rows, name="tcga-reference")
    built = spec.build_strategy(trusted=trusted)
    assert isinstance(built, Measured)
    assert (built.method, built.seed, built.max_evaluations) == ("gtg_shapley", 7, 300)
    assert built.describe()["contribution.metric"] == "c_index"
    robust = job(MEASURED, robust={"validation": True, **MEASURED})
    wrapped = robust.build_strategy(trusted=trusted)
    assert isinstance(wrapped, Measured)
    assert isinstance(wrapped.inner, Robust)
    private = job(
        MEASURED,
        privacy={"mode": "client", "delta": 1e-5, "noise_multiplier": 1.0},
    )
    assert isinstance(private.build_strategy(trusted=trusted).inner, DPFedAvg)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"\[contribution\] trusted_dataset"):
        spec.build_strategy()
    defaults = {f.name: f.default for f in CONTRIBUTION.fields}
    assert defaults["method"] == "auto"
    assert job(MEASURED).build_strategy(trusted=trusted).method == "auto"  # type: ignore[attr-defined]


def test_every_refusal_is_one_line_naming_the_keys(tmp_path: Path) -> None:
    secure = refusal(MEASURED, secure_aggregation={})
    assert "[contribution] cannot run with [secure_aggregation]" in secure
    assert "two coalition sums that differ by one site reveal" in secure
    bundle = refusal(MEASURED, run={**RUN, "bundle": "a" * 64, "agreement": "study-1"})
    assert "[contribution] cannot be used with [run] bundle" in bundle
    other = refusal(MEASURED, robust={"validation": True, "trusted_dataset": "other"})
    assert "differs from [robust] trusted_dataset 'other'" in other
    assert "trusted_dataset" in refusal({})
    assert "[contribution] method" in refusal({**MEASURED, "method": "banzhaf"})
    assert "[contribution] max_evaluations" in refusal({**MEASURED, "max_evaluations": 1})
    assert "unknown [contribution] key 'path'" in refusal({**MEASURED, "path": "/etc/passwd"})
    for text in (secure, bundle, other):
        lines = [ln for ln in text.splitlines() if "[contribution]" in ln]
        assert len(lines) == 1


# -- at the coordinator ---------------------------------------------------------------------


class Hub:
    """The six TCGA-BRCA sites as real in-process nodes, center-3 free-riding (and the
    sites of ``tamper`` lying as it says)."""

    def __init__(self, workdir: Path, tamper: dict[str, Any] | None = None) -> None:
        fed, _ = held_out()
        self.recipes = site_recipes(fed, "tcga-brca", workdir=workdir, needs_kits=False)
        self.backend = TamperingBackend({"center-3": FreeRiding(), **(tamper or {})})

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


def test_the_run_ends_with_its_ledger_and_a_signed_entry_per_site(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    audit = AuditLog(tmp_path / "audit.jsonl", AuditSigner("coordinator", key))
    reference = write_table(tmp_path / "reference.csv", held_out()[1])
    store = InMemoryStateStore()
    service = Coordinator(
        store,
        hub=lambda **_: Hub(tmp_path),  # type: ignore[arg-type,return-value]
        node_wait=5.0,
        audit=audit,
        trusted_data={"tcga-reference": reference},
    )
    spec = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 2, "min_nodes": 6, "min_replies": 6},
            "task": {"name": "cox_ph", "num_features": 39},
            "train": {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
            "contribution": MEASURED,
        }
    )
    unknown = JobSpec.from_mapping(
        {**json.loads(spec.to_json()), "contribution": {"trusted_dataset": "nowhere"}}
    )
    service.start()
    try:
        with pytest.raises(ConfigurationError, match=r"\[contribution\] trusted_dataset 'nowhere'"):
            service.submit_run(ALICE, unknown.to_json())
        run_id = service.submit_run(ALICE, spec.to_json()).run_id
        assert wait_terminal(service, run_id) == "finished"
    finally:
        service.stop()
    events = store.events(run_id)
    kinds = [e.kind for e in events]
    assert kinds.count("contribution") == 2
    final = [e for e in events if e.kind == CONTRIBUTIONS_EVENT]
    assert len(final) == 1
    assert kinds.index(CONTRIBUTIONS_EVENT) < kinds.index("finished")
    record = json.loads(final[0].message)
    ledger = ledger_from_run_record(final[0].message)
    first = json.loads(next(e.message for e in events if e.kind == "contribution"))
    assert len(first["coalitions"]) == 2**5 - 1  # center-3 is a null player: 5 players
    assert "coalitions" not in record  # they stay in each round's event
    # a site recomputes its exact Shapley value from the published round record
    recomputed = shapley_from_table(first)
    assert recomputed == pytest.approx(dict(ledger.rounds[0].values), abs=1e-12)
    assert record["outcome"] is None  # no incentive policy applied (yet)
    totals, shares = ledger.totals(), ledger.shares()
    entries, reset = audit.follower().read()  # checks every entry's chain and signature
    assert not reset
    measured = [e for e in entries if e.event == "contribution.measured"]
    assert sorted(e.data["site"] for e in measured) == sorted(totals)
    assert len(measured) == 6
    for entry in measured:
        assert entry.writer == "coordinator"
        assert entry.data["run_id"] == run_id
        assert entry.data["value"] == pytest.approx(totals[entry.data["site"]])
        assert entry.data["share"] == pytest.approx(shares[entry.data["site"]])
    rider = next(e for e in measured if e.data["site"] == "center-3")
    assert rider.data["value"] == 0.0
    assert rider.data["share"] == 0.0
    assert rider.data["free_rider_rounds"] == 2
    assert sum(e.data["share"] for e in measured) == pytest.approx(1.0)


def test_trusted_data_that_does_not_fit_names_the_contribution_table(tmp_path: Path) -> None:
    from biofed.coordinator import TrustedData

    spec = job(MEASURED)
    narrow = write_table(tmp_path / "narrow.csv", held_out()[1], drop=("age_at_index",))
    with pytest.raises(ConfigurationError, match=r"^\[contribution\] trusted_dataset 'ref' has"):
        TrustedData(spec, narrow, name="ref")
    both = job(MEASURED, robust={"validation": True, **MEASURED})
    with pytest.raises(ConfigurationError, match=r"^\[robust\] trusted_dataset 'ref' has"):
        TrustedData(both, narrow, name="ref")


def test_a_round_that_could_not_be_measured_is_a_problem_of_the_run() -> None:
    from biofed.coordinator._summaries import run_summary

    store = InMemoryStateStore()
    store.create_run("r-1", job(MEASURED).to_json(), "alice")
    store.append_event(
        "r-1", round=1, kind="contribution_failed", message="round 1: no finite c_index"
    )
    row = store.get_run("r-1")
    assert row is not None
    problems = json.loads(run_summary(store, row).summary_json)["problems"]
    assert [(p["kind"], p["message"]) for p in problems] == [
        ("contribution_failed", "round 1: no finite c_index")
    ]
