"""A federated query over the real networked runtime: a coordinator and three governed site
node processes over mutual TLS (each site signed the study agreement, whose ``[analytics]``
allows the kinds asked, registered its data and audits every instruction), an analysis job
submitted by the researcher, plain and under SecAgg+; the result read back through the
control API; and ``biofed audit reconcile`` finds the coordinator's and the sites' logs in
agreement, pass by pass."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.analytics import QueryTable, result_from_json
from biofed.cli import app
from biofed.coordinator import ANALYSIS_EVENT, PASS_EVENT, AnalysisJob
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    AnalyticsPolicy,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    Party,
    SignedAgreement,
    StudyAgreement,
    sign,
    write_agreement,
)
from biofed.identity import Kit, load_kit

from .conftest import DATASET, Federation, events_of, format_events, wait_online, wait_terminal

pytestmark = pytest.mark.slow

runner = CliRunner(env={"COLUMNS": "200"})
SITES = ["center-0", "center-1", "center-2"]
AGREEMENT = "brca-queries"
GOVERNANCE_TOML = (
    '\n[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
    'approvals = "approvals.json"\nregistry = "datasets.json"\nbundles_dir = "bundles"\n'
)


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _govern(federation: Federation) -> bytes:
    """Every party signs an agreement that allows count and describe queries; each site
    registers its data and turns governance on in node.toml."""
    kits = {n: load_kit(federation.kit(n)) for n in [*SITES, "researcher", "coordinator"]}
    agreement = StudyAgreement(
        agreement_id=AGREEMENT,
        title="Counts and moments of TCGA-BRCA",
        purpose="Describe the cohort before modelling.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium=kits["coordinator"].consortium,
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in [*SITES, "researcher"]),
        datasets=dict.fromkeys(SITES, DATASET),
        approved_bundles=(),
        analytics=AnalyticsPolicy(allowed=("count", "describe"), rules={"min_cell": 12}),
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
        with (folder / "node.toml").open("a") as toml:
            toml.write(GOVERNANCE_TOML)
    return signed.to_toml().encode()


def _job(name: str, analysis: dict[str, object], secure: bool) -> AnalysisJob:
    tables: dict[str, object] = {
        "run": {
            "name": name,
            "dataset": DATASET,
            "min_nodes": 3,
            "min_replies": 3,
            "round_timeout": 120.0,
            "agreement": AGREEMENT,
        },
        "analysis": analysis,
    }
    if secure:
        tables["secure_aggregation"] = {}
    return AnalysisJob.from_mapping(tables)


def test_a_query_runs_over_mtls_governed_nodes_and_both_sides_audit_logs_reconcile(
    make_federation: Callable[..., Federation],
) -> None:
    federation = make_federation(sites=SITES)
    agreement = _govern(federation)
    federation.start_coordinator()
    for site in SITES:
        federation.node_process(site)
    client = federation.control(timeout=30.0)
    wait_online(client, SITES, timeout=120)
    signers = [*SITES, "researcher", "coordinator"]
    certificates = {n: (federation.kit(n) / "cert.pem").read_bytes() for n in signers}
    fed = load_tcga_brca()
    ages = np.concatenate(
        [QueryTable.from_site_data(fed.sites[s]).column("age_at_index") for s in SITES]
    )
    where = [{"column": "age_at_index", "op": ">=", "value": 50}]
    counted = {}
    for secure in (False, True):
        job = _job(
            "secure-count" if secure else "count",
            {"kind": "count", "where": where},
            secure,
        )
        run = client.submit_run(job.to_json(), agreement=agreement, certificates=certificates)
        status = wait_terminal(client, run.run_id, timeout=300)
        events = events_of(client, run.run_id)
        assert status == "finished", format_events(events)
        assert [e.round for e in events if e.kind == PASS_EVENT] == [1], format_events(events)
        assert not [e for e in events if e.kind == "reply_rejected"], format_events(events)
        result = result_from_json(next(e.message for e in events if e.kind == ANALYSIS_EVENT))
        counted[secure] = result.to_dict()
        summary = json.loads(client.get_run(run.run_id).summary_json)
        assert summary["analysis"] == "count"
        assert summary["secure"] is secure
    assert counted[False]["count"] == counted[True]["count"] == int((ages >= 50).sum())

    # a kind the agreement does not allow is refused by every site: the run fails, saying why
    refused = client.submit_run(
        _job("km", {"kind": "km", "time": "time", "event": "event"}, False).to_json(),
        agreement=agreement,
        certificates=certificates,
    )
    assert wait_terminal(client, refused.run_id, timeout=300) == "failed"
    error = client.get_run(refused.run_id).error
    assert "0 of 3 sites answered pass 1" in error
    assert "km" in error

    federation.close()  # every log is complete once the processes have exited
    consortium = federation.consortium.directory
    coordinator = consortium / "coordinator" / "audit.jsonl"
    nodes = [str(federation.kit(site) / "audit.jsonl") for site in SITES]
    result = runner.invoke(app, ["audit", "reconcile", str(coordinator), *nodes])
    assert result.exit_code == 0, result.output
    receipts = [
        json.loads(line)["data"]
        for line in coordinator.read_text().splitlines()
        if json.loads(line)["event"] == "round.received"
    ]
    assert {r["kind"] for r in receipts} == {"query", "secagg"}
    assert {r["node_id"] for r in receipts} == set(SITES)
