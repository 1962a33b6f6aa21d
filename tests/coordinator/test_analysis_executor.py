"""An analysis run at the coordinator: submitted, scheduled, executed over the sites, its
result stored as a run event and read back under the run's access rules; failures name the
sites' reasons; cancel works; a restart starts the query again from pass 1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_analysis_kinds import MOMENTS
from test_analysis_loop import Handler, honest, tables

from biofed.analytics import Query, result_from_json
from biofed.coordinator import (
    ANALYSIS_EVENT,
    PASS_EVENT,
    AnalysisJob,
    Coordinator,
    InMemoryStateStore,
    RunStatus,
    StoreListener,
)
from biofed.coordinator._executor import RunExecutor
from biofed.core import Instruction, NodeInfo, PolicyViolation, ProtocolError, Reply
from biofed.transport import InMemoryTransport
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
MALLORY = Peer(name="mallory", role="researcher")
ADMIN = Peer(name="root", role="admin")


class Hub:
    """The coordinator's node directory over in-memory sites (a fresh transport per run)."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.cancelled: list[str] = []

    def transport_for(self, run_id: str, dataset: str) -> InMemoryTransport:
        return InMemoryTransport(
            self.handlers, info={s: NodeInfo(node_id=s, num_examples=1000) for s in self.handlers}
        )

    def sessions(self) -> list[Any]:
        return []

    def cancel_run(self, run_id: str) -> int:
        self.cancelled.append(run_id)
        return 0


def coordinator(handlers: dict[str, Handler]) -> tuple[Coordinator, InMemoryStateStore, Hub]:
    store = InMemoryStateStore()
    hub = Hub(handlers)

    def factory(**_: object) -> Hub:
        return hub

    return Coordinator(store, hub=factory, node_wait=0.5), store, hub  # type: ignore[arg-type]


def job(**run: object) -> AnalysisJob:
    table = {"dataset": "t", "min_nodes": 4, "min_replies": 3, "round_timeout": 10.0, **run}
    return AnalysisJob.from_mapping({"run": table, "analysis": {"kind": MOMENTS, "column": "x"}})


def wait_terminal(service: Coordinator, run_id: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.get_run(ALICE, run_id).status
        if status in ("finished", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end")


def test_an_analysis_run_finishes_with_its_result_as_a_run_event() -> None:
    data = tables()
    service, store, _ = coordinator({s: honest(t) for s, t in data.items()})
    service.start()
    try:
        run_id = service.submit_run(ALICE, job().to_json()).run_id
        assert wait_terminal(service, run_id) == "finished"
    finally:
        service.stop()
    events = store.events(run_id)
    passes = [e for e in events if e.kind == PASS_EVENT]
    assert [(e.round, e.message) for e in passes] == [
        (1, "pass 1 (sums): 4 sites asked, 4 answered"),
        (2, "pass 2 (squares): 4 sites asked, 4 answered"),
    ]
    assert sum(e.kind == "query_reply" for e in events) == 8  # every accepted answer
    text = service.analysis_result(ALICE, run_id)
    assert text == [e.message for e in events if e.kind == ANALYSIS_EVENT][-1]
    result = result_from_json(text).to_dict()
    pooled = np.concatenate([t.column("x") for t in data.values()])
    assert result["n"] == pooled.size
    assert result["mean"] == pytest.approx(pooled.mean(), rel=1e-12)
    status = service.get_run(ALICE, run_id)
    summary = json.loads(status.summary_json)
    assert summary == {
        "analysis": MOMENTS,
        "dataset": "t",
        "secure": False,
        "passes": 2,
        "result": True,
        "last_pass": "pass 2 (squares): 4 sites asked, 4 answered",
    }
    assert (status.completed_rounds, status.total_rounds) == (0, 0)
    # the same access rules as run status: another researcher sees nothing; an admin may
    with pytest.raises(PolicyViolation, match="no run with that id is visible to you"):
        service.analysis_result(MALLORY, run_id)
    with pytest.raises(PolicyViolation, match="no run with that id is visible to you"):
        service.analysis_result(MALLORY, "no-such-run")
    assert service.analysis_result(ADMIN, run_id) == text
    with pytest.raises(ProtocolError, match="is an analysis: its result is its analysis_result"):
        service.run_result(ALICE, run_id)


def test_a_run_with_too_few_answers_fails_naming_the_sites_reasons() -> None:
    data = tables()

    def refuses(instruction: Instruction) -> Reply:
        return Reply.error_for(instruction, "policy: the agreement allows no test_moments")

    handlers: dict[str, Handler] = {s: honest(t) for s, t in data.items()}
    handlers["a"] = handlers["b"] = refuses
    service, store, hub = coordinator(handlers)
    service.start()
    try:
        run_id = service.submit_run(ALICE, job().to_json()).run_id
        assert wait_terminal(service, run_id) == "failed"
    finally:
        service.stop()
    row = store.get_run(run_id)
    assert row is not None
    assert row.error is not None
    assert row.error.startswith("analysis: 2 of 4 sites answered pass 1, the run needs 3 (")
    assert "a: node reported an error: policy: the agreement allows no test_moments" in row.error
    assert "b: node reported an error" in row.error
    with pytest.raises(ProtocolError, match="is failed; an analysis has a result once finished"):
        service.analysis_result(ALICE, run_id)
    assert run_id in hub.cancelled  # the sites are told to drop what they hold of it
    problems = json.loads(service.get_run(ALICE, run_id).summary_json)["problems"]
    assert {p["node"] for p in problems if p["kind"] == "reply_rejected"} == {"a", "b"}


def test_a_run_waits_for_its_sites_then_fails_without_enough() -> None:
    data = tables()
    service, store, _ = coordinator({s: honest(t) for s, t in list(data.items())[:2]})
    service.start()
    try:
        run_id = service.submit_run(ALICE, job().to_json()).run_id
        assert wait_terminal(service, run_id) == "failed"
    finally:
        service.stop()
    row = store.get_run(run_id)
    assert row is not None
    assert row.error == "analysis: 2 sites available, the run needs 4"
    assert any(e.kind == "waiting_for_nodes" for e in store.events(run_id))


def test_cancel_abandons_the_query() -> None:
    data = tables()
    started = threading.Event()
    release = threading.Event()

    def slow(inner: Handler) -> Handler:
        def handle(instruction: Instruction) -> Reply | None:
            started.set()
            release.wait(10)
            return inner(instruction)

        return handle

    service, store, _ = coordinator({s: slow(honest(t)) for s, t in data.items()})
    service.start()
    try:
        run_id = service.submit_run(ALICE, job().to_json()).run_id
        assert started.wait(10)
        service.cancel_run(ALICE, run_id)
        release.set()
        assert wait_terminal(service, run_id) == "cancelled"
    finally:
        release.set()
        service.stop()
    assert not any(e.kind == ANALYSIS_EVENT for e in store.events(run_id))
    cancelled = [e.message for e in store.events(run_id) if e.kind == "cancelled"]
    assert cancelled == ["the query abandoned; nodes told to drop the run"]


def test_a_restarted_coordinator_starts_the_query_again_from_pass_1() -> None:
    data = tables()
    rounds: list[int] = []

    def counting(inner: Handler) -> Callable[[Instruction], Reply | None]:
        def handle(instruction: Instruction) -> Reply | None:
            rounds.append(instruction.round)
            return inner(instruction)

        return handle

    store = InMemoryStateStore()
    service = Coordinator(store)
    run_id = service.submit_run(ALICE, job().to_json()).run_id
    # the coordinator's last life: pass 1 ran, then it stopped
    store.set_run_status(run_id, RunStatus.RUNNING)
    store.append_event(
        run_id, round=1, kind=PASS_EVENT, message="pass 1 (sums): 4 sites asked, 4 answered"
    )
    hub = Hub({s: counting(honest(t)) for s, t in data.items()})
    executor = RunExecutor(
        store, hub, lambda rid: StoreListener(store, rid), threading.Event(), node_wait=0.5
    )
    row = store.get_run(run_id)
    assert row is not None
    executor.execute(row, threading.Event())
    assert sorted(set(rounds)) == [1, 2]
    assert rounds.count(1) == 4
    resumed = [e for e in store.events(run_id) if e.kind == "resumed"]
    assert [e.message for e in resumed] == [
        "the query restarts from pass 1 (passes of the coordinator's last life are not reused)"
    ]
    row = store.get_run(run_id)
    assert row is not None
    assert row.status is RunStatus.FINISHED
    assert service.analysis_result(ALICE, run_id)
    assert json.loads(service.get_run(ALICE, run_id).summary_json)["passes"] == 2


def test_submit_refuses_a_bundle_with_an_analysis_and_applies_the_limits() -> None:
    service, _, _ = coordinator({})
    with pytest.raises(ProtocolError, match="an analysis job runs no task bundle"):
        service.submit_run(ALICE, job().to_json(), bundle=b"zip")
    with pytest.raises(Exception, match=r"\[run\] min_nodes must be at most"):
        service.submit_run(ALICE, job(min_nodes=5000, min_replies=3).to_json())
    query = Query(MOMENTS, {"column": "x"})
    assert AnalysisJob(dataset="t", query=query).query == query
