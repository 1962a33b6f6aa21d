"""The coordinator's bundle store keeps exactly the bundle a job names, by digest, and
refuses what would let a researcher swap it or write outside the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.coordinator import BundleStore, Coordinator, InMemoryStateStore, JobSpec
from biofed.core import BiofedError, ConfigurationError
from biofed.governance import pack_bundle
from biofed.transport.grpc import Peer


def _bundle(tmp_path: Path, body: str = "x = 1\n") -> tuple[str, bytes]:
    folder = tmp_path / f"task-{abs(hash(body))}"
    folder.mkdir()
    (folder / "task.py").write_text(body)
    out = tmp_path / f"{folder.name}.zip"
    info = pack_bundle(folder, out)
    return info.digest, out.read_bytes()


def test_a_kept_bundle_is_served_by_its_digest(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles")
    digest, data = _bundle(tmp_path)
    store.keep(digest, data)
    assert store.get(digest) == data
    assert store.path(digest) == tmp_path / "bundles" / f"{digest}.zip"
    store.keep(digest, b"")  # already kept: the job may name it without sending it again
    assert not list((tmp_path / "bundles").glob("*.part*"))  # no half-written file left


def test_a_bundle_that_is_not_the_named_one_is_refused(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles")
    digest, _ = _bundle(tmp_path, "a = 1\n")
    _, other = _bundle(tmp_path, "b = 2\n")
    with pytest.raises(BiofedError):
        store.keep(digest, other)
    with pytest.raises(BiofedError):
        store.keep(digest, b"not a zip")
    assert not store.path(digest).exists()


@pytest.mark.parametrize("digest", ["../../etc/passwd", "a" * 63, "A" * 64 + "/x", ""])
def test_a_digest_that_is_not_a_sha256_never_becomes_a_path(tmp_path: Path, digest: str) -> None:
    store = BundleStore(tmp_path / "bundles")
    with pytest.raises(BiofedError):
        store.path(digest)
    with pytest.raises(BiofedError):
        store.get(digest)


def test_what_a_job_and_its_bundle_must_agree_on(tmp_path: Path) -> None:
    store = BundleStore(tmp_path / "bundles")
    digest, data = _bundle(tmp_path)
    with pytest.raises(ConfigurationError, match="a bundle was sent with a job that names none"):
        store.keep(None, data)
    store.keep(None, b"")
    with pytest.raises(ConfigurationError, match="send it with the job"):
        store.keep(digest, b"")
    with pytest.raises(LookupError, match="no bundle"):
        store.get(digest)
    with pytest.raises(ConfigurationError, match="keeps no task bundles"):
        BundleStore(None).keep(digest, data)


def test_the_coordinator_keeps_a_submitted_bundle_in_its_store(tmp_path: Path) -> None:
    digest, data = _bundle(tmp_path)
    coordinator = Coordinator(InMemoryStateStore(), bundles_dir=tmp_path / "b")
    spec = JobSpec.from_mapping(
        {
            "run": {"name": "t", "dataset": "ds", "rounds": 1, "bundle": digest},
            "task": {"name": "cox_ph", "num_features": 3},
            "strategy": {"name": "fedavg"},
        }
    )
    alice = Peer(name="alice", role="researcher")
    coordinator.submit_run(alice, spec.to_json(), bundle=data)
    assert coordinator.bundle(Peer(name="center-0", role="node"), digest) == data
    assert coordinator.bundles.get(digest) == data
