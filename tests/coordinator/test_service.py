"""The coordinator's control API, without the network: submission, status, cancel, results."""

from __future__ import annotations

import json
import threading

import pytest

from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
from biofed.core import ConfigurationError, PolicyViolation, ProtocolError
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
JOB = JobSpec.from_mapping(
    {
        "run": {"name": "t", "dataset": "ds", "rounds": 2, "seed": 1},
        "task": {"name": "cox_ph", "num_features": 3},
        "strategy": {"name": "fedavg"},
        "train": {"local_steps": 2},
    }
)


@pytest.fixture
def coordinator() -> Coordinator:
    return Coordinator(InMemoryStateStore(), node_wait=0.1)  # runner not started


def test_submit_status_list_and_events(coordinator: Coordinator) -> None:
    run = coordinator.submit_run(ALICE, JOB.to_json())
    assert run.status == "pending"
    assert run.owner == "alice"
    assert run.total_rounds == 2
    assert coordinator.get_run(ALICE, run.run_id) == run
    assert [r.run_id for r in coordinator.list_runs(ALICE)] == [run.run_id]
    events = list(coordinator.watch_run(ALICE, run.run_id, 0, False, lambda: True))
    assert [e.kind for e in events] == ["submitted"]
    assert json.loads(run.summary_json)["strategy"] == "fedavg"


def test_invalid_job_is_refused_before_anything_is_stored(coordinator: Coordinator) -> None:
    with pytest.raises(ConfigurationError):
        coordinator.submit_run(ALICE, '{"run": {"name": "x"}}')
    assert coordinator.list_runs(ALICE) == []


def test_cancel_pending_and_results_only_when_finished(coordinator: Coordinator) -> None:
    run = coordinator.submit_run(ALICE, JOB.to_json())
    with pytest.raises(ProtocolError, match="results exist once finished"):
        coordinator.run_result(ALICE, run.run_id)
    cancelled = coordinator.cancel_run(ALICE, run.run_id)
    assert cancelled.status == "cancelled"
    with pytest.raises(ProtocolError, match="already ended"):
        coordinator.cancel_run(ALICE, run.run_id)
    with pytest.raises(PolicyViolation, match="no run with that id is visible to you"):
        coordinator.get_run(ALICE, "no-such-run")


def test_a_run_whose_every_round_failed_ends_failed_without_a_result(
    coordinator: Coordinator,
) -> None:
    run = coordinator.submit_run(ALICE, JOB.to_json())
    row = coordinator.store.get_run(run.run_id)
    assert row is not None
    coordinator._execute(row, threading.Event())  # what a run's thread does, synchronously
    done = coordinator.get_run(ALICE, run.run_id)
    assert done.status == "failed"
    assert done.completed_rounds == 2
    assert done.error.startswith("no round completed: all 2 rounds failed")
    assert json.loads(done.summary_json)["rounds"] == {"completed": 0, "failed": 2}
    events = list(coordinator.watch_run(ALICE, run.run_id, 0, False, lambda: True))
    kinds = [e.kind for e in events]
    waiting = [e.message for e in events if e.kind == "waiting_for_nodes"]
    assert waiting[0] == "no site connected; the run needs 1 offering dataset 'ds'"
    assert "round_failed" in kinds
    assert kinds[-1] == "failed"
    with pytest.raises(ProtocolError, match="results exist once finished"):
        coordinator.run_result(ALICE, run.run_id)


def test_status_lists_the_problems_of_a_run(coordinator: Coordinator) -> None:
    run = coordinator.submit_run(ALICE, JOB.to_json())
    coordinator.store.append_event(
        run.run_id,
        round=1,
        kind="reply_rejected",
        node_id="site-a",
        message="node reported an error: policy: agreement: not in force",
    )
    summary = json.loads(coordinator.get_run(ALICE, run.run_id).summary_json)
    assert summary["problems"] == [
        {
            "round": 1,
            "node": "site-a",
            "kind": "reply_rejected",
            "message": "node reported an error: policy: agreement: not in force",
        }
    ]
