"""The coordinator is assembled from parts: the node hub is injected (as the in-memory
transport is in a simulation), and the package's public door lists what the parts offer."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import biofed.coordinator as coordinator
from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
from biofed.transport.grpc import DatasetDeclaration, NodeEvent, NodeHub, Peer

ALICE = Peer(name="alice", role="researcher")


def test_the_coordinator_takes_its_hub_from_the_factory_it_is_given() -> None:
    made: list[NodeHub] = []

    def factory(
        *,
        on_node_event: Callable[[str, NodeEvent], None],
        on_wire_error: Callable[[str, int, str, str], None],
    ) -> NodeHub:
        hub = NodeHub(
            heartbeat_interval=7.0, on_node_event=on_node_event, on_wire_error=on_wire_error
        )
        made.append(hub)
        return hub

    store = InMemoryStateStore()
    service = Coordinator(store, hub=factory)
    assert made == [service.hub]
    assert service.hub.heartbeat_interval == 7.0
    # the hub reports to the coordinator it was made for: a node connecting is registered
    service.hub.open_session(
        "center-0", "s1", [DatasetDeclaration(name="ds", num_examples=12, num_features=3)]
    )
    (node,) = store.list_nodes()
    assert (node.node_id, node.status) == ("center-0", "online")
    assert node.properties["dataset.ds.examples"] == 12
    # and a run executes over that hub (here with no site: every round fails, the run ends)
    spec = JobSpec.from_mapping(
        {
            "run": {"name": "t", "dataset": "other", "rounds": 1, "seed": 1},
            "task": {"name": "cox_ph", "num_features": 3},
            "strategy": {"name": "fedavg"},
        }
    )
    service.node_wait = service.executor.node_wait = 0.1
    run = service.submit_run(ALICE, spec.to_json())
    row = store.get_run(run.run_id)
    assert row is not None
    service._execute(row, threading.Event())
    events = [e.message for e in store.events(run.run_id) if e.kind == "waiting_for_nodes"]
    assert events == ["no connected site offers dataset 'other' (1 sites connected)"]


def test_a_partial_of_the_hub_class_is_a_factory() -> None:
    service = Coordinator(
        InMemoryStateStore(), hub=functools.partial(NodeHub, heartbeat_interval=0.5)
    )
    assert service.hub.heartbeat_interval == 0.5
    assert Coordinator(InMemoryStateStore(), heartbeat_interval=3.0).hub.heartbeat_interval == 3.0


def test_the_public_names_of_the_coordinator() -> None:
    assert coordinator.__all__ == [
        "ANALYSIS_EVENT",
        "PASS_EVENT",
        "PREPROCESSING_EVENT",
        "PRIVACY_EVENT",
        "RESULT_PREPROCESSING",
        "SUMMARIES_EVENT",
        "TRACKING_FAILED_EVENT",
        "AfterRound",
        "AgreementKeeper",
        "AnalysisFailed",
        "AnalysisJob",
        "BeforeRound",
        "BundleStore",
        "Checkpoint",
        "Coordinator",
        "EngineConfig",
        "EngineListener",
        "EventRow",
        "Exchange",
        "Exchanged",
        "HubFactory",
        "InMemoryStateStore",
        "JobLimits",
        "JobSpec",
        "KitAuthenticator",
        "NodeExchange",
        "NodeRow",
        "NodeStatus",
        "PlainRound",
        "PreprocessingFailed",
        "QueryListener",
        "RoundEngine",
        "RoundRecord",
        "RoundRow",
        "RunAccess",
        "RunCancelled",
        "RunEvent",
        "RunResult",
        "RunRow",
        "RunSpec",
        "RunStatus",
        "RunTracker",
        "RunningCoordinator",
        "SecureRound",
        "SecureSum",
        "SqlStateStore",
        "StateStore",
        "StoreListener",
        "TrackedEnd",
        "TrackedRound",
        "TrackedStart",
        "Tracking",
        "TrackingConfig",
        "TrainingRound",
        "TrustedData",
        "analyze_over",
        "build_instruction",
        "canonical_json",
        "check_summary",
        "job_from_file",
        "open_store",
        "privacy_report",
        "round_record_from_json",
        "round_record_to_json",
        "run_analysis",
        "run_event_from_json",
        "run_event_to_json",
        "run_spec_from_json",
        "run_summary",
        "serve_coordinator",
        "site_spend",
        "spend_event",
        "summaries_json",
        "tls_of",
        "trusted_data_from_kit",
    ]
    for name in coordinator.__all__:
        assert getattr(coordinator, name) is not None
