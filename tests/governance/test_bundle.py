"""Task bundles: deterministic packing, content digests, tamper and zip-slip refusal, approvals."""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli._task import app as task_app
from biofed.cli._task import node_bundle_app
from biofed.core import ConfigurationError, PayloadError
from biofed.governance._approvals import ApprovalStore
from biofed.governance._bundle import (
    MANIFEST_NAME,
    Bundle,
    check_digest,
    pack_bundle,
    read_bundle,
    unpack_bundle,
)

TASK = (
    "from biofed.tasks import CoxPHTask\n\n\n"
    "def make_task(num_features):\n    return CoxPHTask(num_features=num_features)\n"
)


def _task_dir(root: Path) -> Path:
    d = root / "task"
    (d / "lib").mkdir(parents=True)
    (d / "task.py").write_text(TASK)
    (d / "lib" / "helpers.py").write_text("X = 1\n")
    (d / "weights.bin").write_bytes(bytes(range(256)))
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "task.cpython-311.pyc").write_bytes(b"\x00")
    (d / ".env").write_text("SECRET=1")
    return d


def test_pack_is_deterministic_and_skips_hidden(tmp_path: Path) -> None:
    d = _task_dir(tmp_path)
    first = pack_bundle(d, tmp_path / "a.zip")
    for path in d.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    second = pack_bundle(d, tmp_path / "b.zip")
    assert first.digest == second.digest
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()
    assert first.files == ("lib/helpers.py", "task.py", "weights.bin")
    bundle = read_bundle(tmp_path / "a.zip", expected_digest=first.digest)
    assert bundle.digest == first.digest
    assert bundle.files["task.py"] == TASK.encode()


def test_digest_ignores_archive_metadata(tmp_path: Path) -> None:
    bundle = Bundle.from_files({"task.py": b"x", "b.py": b"y"})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as z:  # other order, times
        z.writestr("task.py", b"x")
        z.writestr("b.py", b"y")
        z.writestr(MANIFEST_NAME, bundle.manifest)
    assert read_bundle(buffer.getvalue()).digest == bundle.digest


def test_one_byte_changes_the_digest(tmp_path: Path) -> None:
    d = _task_dir(tmp_path)
    before = pack_bundle(d, tmp_path / "a.zip").digest
    (d / "weights.bin").write_bytes(bytes(range(255)) + b"\x00")
    assert pack_bundle(d, tmp_path / "b.zip").digest != before


def _rewrite(raw: bytes, edit: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buffer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, edit.get(info.filename, src.read(info)))
    return buffer.getvalue()


def test_tampered_archive_is_refused(tmp_path: Path) -> None:
    info = pack_bundle(_task_dir(tmp_path), tmp_path / "a.zip")
    raw = (tmp_path / "a.zip").read_bytes()
    evil = TASK.replace("CoxPHTask(", "__import__('os').system('id') or CoxPHTask(").encode()
    with pytest.raises(PayloadError, match="does not match its manifest"):
        read_bundle(_rewrite(raw, {"task.py": evil}))
    # Rewriting the manifest too yields a different digest, which an approval check refuses.
    forged = Bundle.from_files({**read_bundle(raw).files, "task.py": evil})
    repacked = _rewrite(raw, {"task.py": evil, MANIFEST_NAME: forged.manifest})
    assert read_bundle(repacked).digest != info.digest
    with pytest.raises(PayloadError, match="does not match the expected"):
        read_bundle(repacked, expected_digest=info.digest)
    # A flipped byte in the compressed data fails the archive's CRC.
    flipped = bytearray(raw)
    flipped[60] ^= 0xFF
    with pytest.raises(PayloadError):
        read_bundle(bytes(flipped))


@pytest.mark.parametrize(
    "name", ["../evil.py", "/etc/cron.d/evil", "a/../../evil.py", ".hidden.py", "a\\b.py", "a//b"]
)
def test_zip_slip_paths_are_refused(name: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("task.py", TASK)
        z.writestr(name, b"x")
    with pytest.raises(PayloadError, match="unsafe path"):
        read_bundle(buffer.getvalue())


def test_symlink_and_duplicate_entries_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("task.py", TASK)
        link = zipfile.ZipInfo("data.txt")
        link.external_attr = (0o120777) << 16
        z.writestr(link, "/root/.ssh/id_rsa")
    with pytest.raises(PayloadError, match="symlink"):
        read_bundle(buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("task.py", TASK)
        with pytest.warns(UserWarning, match="Duplicate name"):
            z.writestr("task.py", "evil")
    with pytest.raises(PayloadError, match="duplicate"):
        read_bundle(buffer.getvalue())


def test_pack_refuses_symlinks_and_missing_task(tmp_path: Path) -> None:
    d = _task_dir(tmp_path)
    secret = tmp_path / "secret.pem"
    secret.write_text("key")
    (d / "key.pem").symlink_to(secret)
    with pytest.raises(ConfigurationError, match="symlink"):
        pack_bundle(d, tmp_path / "a.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.py").write_text("")
    with pytest.raises(ConfigurationError, match=r"task\.py"):
        pack_bundle(empty, tmp_path / "b.zip")


def test_unpack_writes_only_inside(tmp_path: Path) -> None:
    bundle = read_bundle(
        pack_bundle(_task_dir(tmp_path), tmp_path / "a.zip") and tmp_path / "a.zip"
    )
    out = unpack_bundle(bundle, tmp_path / "out")
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["lib/helpers.py", "task.py", "weights.bin"]
    with pytest.raises(ConfigurationError, match="non-empty"):
        unpack_bundle(bundle, out)


def test_source_listing_shows_code_and_digest() -> None:
    bundle = Bundle.from_files({"task.py": TASK.encode(), "w.bin": b"\xff\x00"})
    listing = bundle.source_listing()
    assert bundle.digest in listing
    assert "def make_task(num_features):" in listing
    assert "<binary file, not shown>" in listing


def test_approval_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "node" / "approvals.json"
    clock = lambda: datetime(2025, 1, 2, tzinfo=UTC)  # noqa: E731
    store = ApprovalStore(path, clock=clock)
    digest = "ab" * 32
    assert not store.is_approved(digest)
    approval = store.approve(digest, by="dr-who", note="IRB 42")
    assert approval.approved_at.startswith("2025-01-02")
    assert ApprovalStore(path).is_approved(digest)
    assert [a.digest for a in ApprovalStore(path).list()] == [digest]
    assert json.loads(path.read_text())["approvals"][digest]["by"] == "dr-who"
    store.revoke(digest)
    assert not store.is_approved(digest)
    with pytest.raises(ConfigurationError, match="not approved"):
        store.revoke(digest)
    assert [p.name for p in path.parent.iterdir()] == ["approvals.json"]  # no temp files left


def test_approval_store_validates(tmp_path: Path) -> None:
    store = ApprovalStore(tmp_path / "a.json")
    for bad in ["", "AB" * 32, "ab" * 31, "zz" * 32]:
        with pytest.raises(ConfigurationError, match="64 lowercase hex"):
            store.approve(bad, by="x")
    with pytest.raises(ConfigurationError):
        check_digest("../../etc/passwd")
    (tmp_path / "a.json").write_text('{"version": 1, "approvals": {"nothex": {}}}')
    with pytest.raises(ConfigurationError):
        store.is_approved("ab" * 32)


def test_cli_pack_review_approve(tmp_path: Path) -> None:
    runner = CliRunner()
    d = _task_dir(tmp_path)
    result = runner.invoke(task_app, ["pack", str(d), "--out", str(tmp_path / "t.zip")])
    assert result.exit_code == 0, result.output
    digest = read_bundle(tmp_path / "t.zip").digest
    assert digest in result.output
    result = runner.invoke(node_bundle_app, ["review", str(tmp_path / "t.zip")])
    assert result.exit_code == 0
    assert digest in result.output
    assert "return CoxPHTask(num_features=num_features)" in result.output
    store = str(tmp_path / "approvals.json")
    result = runner.invoke(node_bundle_app, ["approve", digest, "--store", store, "--by", "op"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(node_bundle_app, ["approvals", "--store", store, "--format", "json"])
    assert json.loads(result.output)[0]["digest"] == digest
    result = runner.invoke(node_bundle_app, ["revoke", digest, "--store", store])
    assert result.exit_code == 0
    result = runner.invoke(node_bundle_app, ["revoke", "nothex", "--store", store])
    assert result.exit_code == 2
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    result = runner.invoke(task_app, ["show", str(tmp_path / "bad.zip")])
    assert result.exit_code == 2
