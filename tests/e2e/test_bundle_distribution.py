"""Bundles travel with the job: the coordinator checks and keeps them, nodes fetch them by
digest over mTLS (and still run them only if their own operator approved the digest)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from biofed.coordinator import JobSpec
from biofed.core import BiofedError, TransportError
from biofed.governance import pack_bundle
from biofed.identity import load_kit
from biofed.transport.grpc import DatasetDeclaration, NodeClient

from .conftest import Federation, job

pytestmark = pytest.mark.slow


def _bundle(tmp_path: Path) -> tuple[str, bytes]:
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "task.py").write_text(
        "from biofed.tasks import CoxPHTask\n\n"
        "def make_task(num_features):\n    return CoxPHTask(num_features=num_features)\n"
    )
    info = pack_bundle(folder, tmp_path / "task.zip")
    return info.digest, (tmp_path / "task.zip").read_bytes()


def test_a_node_fetches_the_bundle_a_job_brought(
    make_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    federation = make_federation(sites=["center-0"])
    federation.start_coordinator()
    digest, data = _bundle(tmp_path)
    client = federation.control()
    spec = job(name="bundled", rounds=1, min_nodes=1, min_replies=1).to_mapping()
    spec["run"]["bundle"] = digest

    with pytest.raises(BiofedError, match="send it with the job"):
        client.submit_run(JobSpec.from_mapping(spec).to_json())
    with pytest.raises(BiofedError):  # bytes that are not the named bundle
        client.submit_run(JobSpec.from_mapping(spec).to_json(), bundle=data[:-10] + b"0" * 10)
    run = client.submit_run(JobSpec.from_mapping(spec).to_json(), bundle=data)
    assert run.status in ("pending", "running")

    kit = load_kit(federation.kit("center-0"))
    node = NodeClient(
        federation.address,
        federation.tls("center-0"),
        node_id=kit.name,
        handler=lambda inst: None,  # type: ignore[arg-type, return-value]
        datasets=[DatasetDeclaration(name="x", num_examples=1, num_features=1)],
    )
    assert node.fetch_bundle(digest) == data
    with pytest.raises(TransportError, match="no bundle"):
        node.fetch_bundle("0" * 64)
    with pytest.raises(TransportError):
        node.fetch_bundle("../../etc/passwd")
