"""The tamper-evident audit log: appending, verifying, tampering and reconciling."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import threading
from pathlib import Path

import pytest

from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance._audit import AuditLog
from biofed.governance._audit._entry import GENESIS, AuditLogError, canonical, entry_hash
from biofed.governance._audit._reconcile import RECEIVED_EVENT, SENT_EVENT, reconcile
from biofed.governance._audit._signer import AuditSigner
from biofed.governance._audit._verify import AuditSource, verify_log
from biofed.identity import Consortium, Kit, load_kit


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    root = tmp_path_factory.mktemp("fed")
    return Consortium.create(
        root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"]
    )


@pytest.fixture(scope="module")
def kit_a(fed: Consortium) -> Kit:
    return load_kit(fed.kit_directory("a"))


@pytest.fixture(scope="module")
def kit_b(fed: Consortium) -> Kit:
    return load_kit(fed.kit_directory("b"))


def _write(path: Path, kit: Kit, n: int) -> AuditLog:
    log = AuditLog(path, AuditSigner.from_kit(kit), clock=lambda: 1767225600.5)
    for i in range(n):
        log.append("dataset.registered", {"name": f"ds{i}", "rows": i, "note": "héllo"})
    return log


def _verify(path: Path, kit: Kit) -> tuple[bool, int | None, str]:
    report = verify_log(path, kit.cert_pem, kit.ca_pem)
    return report.ok, report.first_bad, report.reason


def test_appends_chain_and_verify(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    log = _write(path, kit_a, 3)
    entry = log.append("bundle.approved", {"digest": "ab" * 32})
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4
    assert entry.seq == 4
    first = json.loads(lines[0])
    assert sorted(first) == ["data", "event", "hash", "prev", "seq", "sig", "time", "writer"]
    assert first["prev"] == GENESIS
    assert first["writer"] == "a"
    assert first["seq"] == 1
    body = {k: v for k, v in first.items() if k not in ("hash", "sig")}
    assert first["hash"] == hashlib.sha256(canonical(body)).hexdigest()
    assert json.loads(lines[1])["prev"] == first["hash"]
    assert lines[3] + b"\n" == entry.line()
    report = verify_log(path, kit_a.cert_pem, kit_a.ca_pem)
    assert report.ok
    assert report.entries == 4
    assert report.first_bad is None
    assert report.head == entry.hash
    assert report.writer == "a"


def test_reopen_continues_the_chain(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 2)
    again = AuditLog(path, AuditSigner.from_kit(kit_a))
    assert again.append("config.changed", {"key": "min_cohort", "value": 20}).seq == 3
    assert verify_log(path, kit_a.cert_pem, kit_a.ca_pem).entries == 3


def test_bad_data_is_refused_and_nothing_written(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    log = _write(path, kit_a, 1)
    with pytest.raises(ConfigurationError, match="NaN"):
        log.append("x.y", {"eps": float("nan")})
    with pytest.raises(ConfigurationError, match="string keys"):
        log.append("x.y", {1: "a"})  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match="audit event"):
        log.append("bad event!", {})
    assert len(path.read_bytes().splitlines()) == 1


def test_concurrent_threads_keep_one_chain(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, AuditSigner.from_kit(kit_a))

    def work(t: int) -> None:
        for i in range(25):
            log.append("round.sent", {"thread": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = verify_log(path, kit_a.cert_pem, kit_a.ca_pem)
    assert report.ok, report.reason
    assert report.entries == 100


def _process_writer(path: str, kit_dir: str, tag: int) -> None:
    log = AuditLog(path, AuditSigner.from_kit(load_kit(kit_dir)))
    for i in range(20):
        log.append("round.sent", {"process": tag, "i": i})


def test_concurrent_processes_keep_one_chain(tmp_path: Path, kit_a: Kit, fed: Consortium) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 1)
    ctx = multiprocessing.get_context("spawn")
    kit_dir = str(fed.kit_directory("a"))
    procs = [ctx.Process(target=_process_writer, args=(str(path), kit_dir, t)) for t in (1, 2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    report = verify_log(path, kit_a.cert_pem, kit_a.ca_pem)
    assert report.ok, report.reason
    assert report.entries == 41


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_flipped_byte_is_named(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 5)
    lines = _lines(path)
    for field in (b'"ds2"', b'"rows":2', b'"time":', b'"prev":"', b'"hash":"', b'"sig":"'):
        changed = bytearray(lines[2])
        at = changed.index(field) + len(field) - 1
        changed[at] ^= 0x01
        path.write_bytes(b"".join([*lines[:2], bytes(changed), *lines[3:]]))
        ok, bad, reason = _verify(path, kit_a)
        assert (ok, bad) == (False, 3), (field, reason)


def test_deleted_line_is_named(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 5)
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    ok, bad, reason = _verify(path, kit_a)
    assert (ok, bad) == (False, 2)
    assert "deleted" in reason


def test_swapped_lines_are_named(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 5)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"".join(lines))
    ok, bad, _ = _verify(path, kit_a)
    assert (ok, bad) == (False, 3)


def test_truncated_last_line_is_named_and_blocks_appends(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 4)
    path.write_bytes(path.read_bytes()[:-20])
    ok, bad, reason = _verify(path, kit_a)
    assert (ok, bad) == (False, 4)
    assert "truncated" in reason
    with pytest.raises(AuditLogError, match="incomplete"):
        AuditLog(path, AuditSigner.from_kit(kit_a))
    path.write_bytes(path.read_bytes() + b"\n")  # a damaged but complete last line
    with pytest.raises(AuditLogError, match="damaged"):
        AuditLog(path, AuditSigner.from_kit(kit_a))


def test_other_writer_cannot_append(tmp_path: Path, kit_a: Kit, kit_b: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, kit_a, 1)
    with pytest.raises(AuditLogError, match="one log per writer"):
        AuditLog(path, AuditSigner.from_kit(kit_b))


def _forge(path: Path, signer: AuditSigner, writer: str, n: int) -> None:
    """A chain rebuilt from scratch, hashes correct, signed with ``signer``'s key."""
    import base64

    prev, out = GENESIS, b""
    for seq in range(1, n + 1):
        body = {"seq": seq, "time": 1.5, "writer": writer, "event": "job.accepted"}
        digest = entry_hash(**body, data={"forged": True}, prev=prev)  # type: ignore[arg-type]
        sig = base64.b64encode(signer.sign(digest.encode("ascii"))).decode("ascii")
        entry = {**body, "data": {"forged": True}, "prev": prev, "hash": digest, "sig": sig}
        out += canonical(entry) + b"\n"
        prev = digest
    path.write_bytes(out)


def test_chain_rewritten_with_another_key_fails(tmp_path: Path, kit_a: Kit, kit_b: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    _forge(path, AuditSigner.from_kit(kit_b), "a", 3)  # b forges a's log
    ok, bad, reason = _verify(path, kit_a)
    assert (ok, bad) == (False, 1)
    assert "signature" in reason
    _forge(path, AuditSigner.from_kit(kit_b), "b", 3)  # b's own chain, checked as a's
    ok, bad, reason = _verify(path, kit_a)
    assert (ok, bad) == (False, 1)
    assert "writer 'b'" in reason
    with pytest.raises(PolicyViolation, match="should be 'a'"):
        verify_log(path, kit_b.cert_pem, kit_b.ca_pem, writer="a")


def test_cert_from_another_ca_is_refused(tmp_path: Path, kit_a: Kit) -> None:
    other = Consortium.create(
        tmp_path / "other", consortium="t", coordinator="127.0.0.1:7443", sites=["a"]
    )
    foreign = load_kit(other.kit_directory("a"))
    path = tmp_path / "audit.jsonl"
    _write(path, foreign, 2)
    with pytest.raises(PolicyViolation, match="not issued by this consortium"):
        verify_log(path, foreign.cert_pem, kit_a.ca_pem)


def test_empty_and_missing_logs(tmp_path: Path, kit_a: Kit) -> None:
    path = tmp_path / "audit.jsonl"
    AuditLog(path, AuditSigner.from_kit(kit_a))
    report = verify_log(path, kit_a.cert_pem, kit_a.ca_pem)
    assert report.ok
    assert report.entries == 0
    assert report.head == GENESIS
    with pytest.raises(ConfigurationError, match="cannot read"):
        verify_log(tmp_path / "nope.jsonl", kit_a.cert_pem, kit_a.ca_pem)
    with pytest.raises(ConfigurationError, match="no such folder"):
        AuditLog(tmp_path / "missing" / "audit.jsonl", AuditSigner.from_kit(kit_a))


def _sent(log: AuditLog, round_: int, payload: bytes) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    data = {"run_id": "r1", "round": round_, "kind": "train"}
    log.append("job.accepted", data)  # a governed node decides before it sends
    log.append(SENT_EVENT, {**data, "payload_sha256": digest, "bytes": len(payload)})


def _received(log: AuditLog, node: str, round_: int, payload: bytes) -> None:
    digest = hashlib.sha256(payload).hexdigest()
    data = {"run_id": "r1", "round": round_, "kind": "train", "node_id": node}
    log.append(RECEIVED_EVENT, {**data, "payload_sha256": digest, "bytes": len(payload)})


def test_reconcile_finds_mismatch_and_missing_receipt(fed: Consortium, tmp_path: Path) -> None:
    kits = {name: load_kit(fed.kit_directory(name)) for name in ("coordinator", "a", "b")}
    logs = {}
    for name, kit in kits.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "cert.pem").write_bytes(kit.cert_pem)
        (folder / "ca.pem").write_bytes(kit.ca_pem)
        logs[name] = AuditLog(folder / "audit.jsonl", AuditSigner.from_kit(kit))
    for rnd in (1, 2):
        _sent(logs["a"], rnd, b"a%d" % rnd)
        _received(logs["coordinator"], "a", rnd, b"a%d" % rnd)
    _sent(logs["b"], 1, b"b1")
    _received(logs["coordinator"], "b", 1, b"b1-altered")
    _sent(logs["b"], 2, b"b2")  # never arrived
    logs["coordinator"].append("run.submitted", {"run_id": "r1"})
    report = reconcile(logs["coordinator"].path, [logs["a"].path, logs["b"].path])
    assert not report.ok
    assert report.coordinator == "coordinator"
    assert report.nodes == ("a", "b")
    assert len(report.matched) == 2
    assert [(p.sent.node_id, p.sent.round, p.differs) for p in report.mismatched] == [
        ("b", 1, ("payload_sha256", "bytes"))
    ]
    assert [(t.node_id, t.round) for t in report.sent_not_received] == [("b", 2)]
    assert report.received_not_sent == ()
    only_a = reconcile(AuditSource.beside(logs["coordinator"].path), [logs["a"].path])
    assert only_a.ok
    assert only_a.unchecked_nodes == ("b",)
    with pytest.raises(PolicyViolation, match="role"):
        reconcile(logs["a"].path, [logs["b"].path])


def test_reconcile_refuses_a_broken_log(fed: Consortium, tmp_path: Path) -> None:
    kit = load_kit(fed.kit_directory("coordinator"))
    node = load_kit(fed.kit_directory("a"))
    coordinator = tmp_path / "coordinator.jsonl"
    _write(coordinator, kit, 2)
    node_log = tmp_path / "a.jsonl"
    _write(node_log, node, 3)
    node_log.write_bytes(b"".join(_lines(node_log)[1:]))
    sources = [
        AuditSource(path=coordinator, cert_pem=kit.cert_pem, ca_pem=kit.ca_pem),
        AuditSource(path=node_log, cert_pem=node.cert_pem, ca_pem=node.ca_pem),
    ]
    with pytest.raises(AuditLogError, match="FAILED at entry 1"):
        reconcile(sources[0], sources[1:])
