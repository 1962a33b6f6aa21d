"""The coordinator's own audit log: signed, chained, and listing every payload it accepted."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from biofed.governance import RECEIVED_EVENT, verify_log
from biofed.identity import load_kit

from .conftest import Federation, job, wait_online, wait_terminal

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1"]


def test_coordinator_audits_submissions_receipts_and_the_end_of_a_run(
    make_federation: Callable[..., Federation],
) -> None:
    federation = make_federation(sites=SITES)
    federation.start_coordinator()
    for site in SITES:
        federation.start_node(site)
    client = federation.control()
    wait_online(client, SITES)
    spec = job(
        name="audited",
        rounds=2,
        seed=3,
        min_nodes=2,
        min_replies=2,
        round_timeout=20.0,
        train={"local_steps": 10, "learning_rate": 0.003},
    )
    run = client.submit_run(spec.to_json())
    assert wait_terminal(client, run.run_id, timeout=60) == "finished"
    kit = load_kit(federation.kit("coordinator"))
    log = kit.directory / "audit.jsonl"
    report = verify_log(log, kit.cert_pem, kit.ca_pem)
    assert report.ok, report.reason

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    events = [e["event"] for e in entries]
    assert events[0] == "run.submitted"
    assert events[-1] == "run.finished"
    receipts = [e["data"] for e in entries if e["event"] == RECEIVED_EVENT]
    # 2 rounds x 2 sites x (train + evaluate)
    assert len(receipts) == 8
    assert {r["node_id"] for r in receipts} == set(SITES)
    assert all(len(r["payload_sha256"]) == 64 for r in receipts)
    assert {r["kind"] for r in receipts} == {"train", "evaluate"}
