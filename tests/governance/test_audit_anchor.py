"""Audit heads anchored in the other party's log: what `check_against`, `check_expected_head`
and `reconcile` report for truncated, rewritten and incomplete logs (attacks on a real pair
of signed logs, written the way a node and the coordinator write them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.governance import (
    ANCHOR_EVENT,
    ANCHOR_KEY,
    COORDINATOR_PEER,
    RECEIVED_EVENT,
    SENT_EVENT,
    AuditHead,
    AuditLog,
    AuditSigner,
    AuditSource,
    anchor_data,
    check_against,
    check_expected_head,
    reconcile,
)
from biofed.identity import Consortium, load_kit


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    root = tmp_path_factory.mktemp("fed")
    return Consortium.create(
        root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"]
    )


def _log(fed: Consortium, name: str, folder: Path) -> AuditLog:
    kit = load_kit(fed.kit_directory(name))
    (folder / name).mkdir()
    (folder / name / "cert.pem").write_bytes(kit.cert_pem)
    (folder / name / "ca.pem").write_bytes(kit.ca_pem)
    return AuditLog(folder / name / "audit.jsonl", AuditSigner.from_kit(kit))


def _exchange(node: AuditLog, coordinator: AuditLog, rounds: int) -> None:
    """What the real parties write per round: the node records the coordinator's head that
    came with the instruction, decides, sends and gives its head with the reply; the
    coordinator records the receipt with the node's head in it."""
    for rnd in range(1, rounds + 1):
        where = {"run_id": "r1", "round": rnd, "kind": "train"}
        head = coordinator.head()
        if head:
            node.append(ANCHOR_EVENT, {ANCHOR_KEY: anchor_data(COORDINATOR_PEER, head), **where})
        node.append("job.accepted", {**where, "bundle": None})
        payload = b"update %d" % rnd
        digest = hashlib.sha256(payload).hexdigest()
        node.append(SENT_EVENT, {**where, "payload_sha256": digest, "bytes": len(payload)})
        coordinator.append(
            RECEIVED_EVENT,
            {
                **where,
                "node_id": node.writer,
                "payload_sha256": digest,
                "bytes": len(payload),
                ANCHOR_KEY: anchor_data(node.writer, node.head()),
            },
        )
    coordinator.append("run.finished", {"run_id": "r1"})


def _cut(log: AuditLog, keep: int) -> None:
    lines = log.path.read_bytes().splitlines(keepends=True)
    log.path.write_bytes(b"".join(lines[:keep]))


def _source(log: AuditLog) -> AuditSource:
    return AuditSource.beside(log.path)


def test_heads_parse_and_reject_garbage() -> None:
    head = AuditHead.parse("12:" + "ab" * 32)
    assert (head.seq, str(head)) == (12, "12:" + "ab" * 32)
    assert AuditHead.parse("AB" * 32).seq == 0
    for bad in ("", "0:" + "a" * 64, "1:" + "a" * 63, "x:" + "a" * 64, "1:" + "g" * 64):
        with pytest.raises(ConfigurationError, match="audit head"):
            AuditHead.parse(bad)
    with pytest.raises(ConfigurationError, match="audit_head"):
        Reply(run_id="r", round=1, node_id="a", kind=MessageKind.TRAIN, audit_head="1:zz")
    with pytest.raises(ConfigurationError, match="audit_head"):
        Instruction(
            run_id="r",
            round=1,
            node_id="a",
            kind=MessageKind.TRAIN,
            parameters=ParameterSet({"w": np.zeros(2, dtype=np.float32)}),
            audit_head="\n" + "a" * 64,
        )


def test_truncation_of_either_log_is_reported(fed: Consortium, tmp_path: Path) -> None:
    node, coordinator = _log(fed, "a", tmp_path), _log(fed, "coordinator", tmp_path)
    _exchange(node, coordinator, 4)
    assert check_against(_source(node), _source(coordinator)).ok
    assert check_against(_source(coordinator), _source(node)).ok
    report = reconcile(_source(coordinator), [_source(node)])
    assert report.ok, report

    total = len(node.path.read_bytes().splitlines())
    _cut(node, total - 1)  # drop the last round.sent: the coordinator holds its head
    report = check_against(_source(node), _source(coordinator))
    assert not report.ok
    assert report.log.ok  # the chain alone cannot tell
    [problem] = report.problems
    assert f"ends at entry {total - 1}, but coordinator recorded its head at entry {total}" in (
        problem
    )
    missing = reconcile(_source(coordinator), [_source(node)]).missing
    assert any("were removed" in line for line in missing)


def test_a_truncated_coordinator_log_and_its_unanchored_tail(
    fed: Consortium, tmp_path: Path
) -> None:
    node, coordinator = _log(fed, "a", tmp_path), _log(fed, "coordinator", tmp_path)
    _exchange(node, coordinator, 4)
    final = coordinator.head()
    # the node last saw the coordinator's head of entry 3 (before round 4's receipt)
    report = check_against(_source(coordinator), _source(node))
    assert report.latest is not None
    assert report.latest.seq == 3
    _cut(coordinator, 4)  # the tail (run.finished after receipt 4) is in no node log yet
    assert check_against(_source(coordinator), _source(node)).ok
    assert not check_expected_head(_source(coordinator), final).ok
    _cut(coordinator, 2)
    report = check_against(_source(coordinator), _source(node))
    assert not report.ok
    assert "ends at entry 2, but a recorded its head at entry 3" in report.problems[0]


def test_a_rewritten_log_and_a_broken_witness_are_reported(fed: Consortium, tmp_path: Path) -> None:
    node, coordinator = _log(fed, "a", tmp_path), _log(fed, "coordinator", tmp_path)
    _exchange(node, coordinator, 3)
    # the node's operator (who holds the node's key) rewrites its log from entry 4 on
    lines = node.path.read_bytes().splitlines(keepends=True)
    node.path.write_bytes(b"".join(lines[:3]))
    fresh = AuditLog(node.path, AuditSigner.from_kit(load_kit(fed.kit_directory("a"))))
    for _ in range(len(lines) - 3):
        fresh.append("dataset.registered", {"name": "innocent"})
    report = check_against(_source(node), _source(coordinator))
    assert report.log.ok
    assert any("was rewritten from that entry on" in p for p in report.problems)
    # a witness log that is itself damaged is named, and its verified part still counts
    raw = coordinator.path.read_bytes()
    coordinator.path.write_bytes(raw[:-10])
    report = check_against(_source(node), _source(coordinator))
    assert any("the other log" in p and "fails at entry" in p for p in report.problems)
    # an expected head given as a bare hash is looked for anywhere in the log
    first = lines[0].split(b'"hash":"')[1][:64].decode()
    assert check_expected_head(_source(node), first).ok
    assert not check_expected_head(_source(node), "f" * 64).ok


def test_reconcile_notices_missing_decisions_debits_and_approvals(
    fed: Consortium, tmp_path: Path
) -> None:
    node, coordinator = _log(fed, "b", tmp_path), _log(fed, "coordinator", tmp_path)
    where = {"run_id": "r1", "round": 1, "kind": "train"}
    node.append("job.accepted", {**where, "bundle": "c" * 64})  # never approved here
    node.append(SENT_EVENT, {**where, "payload_sha256": "0" * 64, "bytes": 0, "dp_epsilon": 1.0})
    evaluate = {**where, "kind": "evaluate"}
    node.append(SENT_EVENT, {**evaluate, "payload_sha256": "0" * 64, "bytes": 0})
    for data in (where, evaluate):
        coordinator.append(
            RECEIVED_EVENT, {**data, "node_id": "b", "payload_sha256": "0" * 64, "bytes": 0}
        )
    report = reconcile(_source(coordinator), [_source(node)])
    assert len(report.matched) == 2
    assert not report.ok
    text = "\n".join(report.missing)
    assert "no bundle.approved" in text
    assert "spent ε with no budget.debited" in text
    assert "(evaluate) has no job.accepted" in text
    assert len(report.missing) == 3
