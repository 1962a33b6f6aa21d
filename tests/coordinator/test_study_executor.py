"""A study run at the coordinator: the executor runs the preprocessing phase before round 1,
stores the fit as a run event, hands it out with the model, and a resumed run reuses it
instead of asking the sites again."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from biofed.coordinator import (
    PREPROCESSING_EVENT,
    RESULT_PREPROCESSING,
    Coordinator,
    InMemoryStateStore,
    JobSpec,
    RoundRecord,
    RunStatus,
    StoreListener,
)
from biofed.coordinator._executor import RunExecutor
from biofed.core import (
    Instruction,
    MessageKind,
    NodeInfo,
    Reply,
    decode_metadata,
    decode_parameters,
)
from biofed.data import Preprocessing
from biofed.datasets import gi_bleed_study, write_eunomia_sites
from biofed.node import NodeApp, NodeConfig
from biofed.tasks import parameter_spec
from biofed.transport import InMemoryTransport
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
SITES = ("site-0", "site-1")


class Sites:
    """The executor's node directory: real site nodes behind a fresh in-memory transport per
    run, recording the kind of every instruction they were sent."""

    def __init__(self, cdms: dict[str, Path]) -> None:
        self.apps = {s: NodeApp(s, NodeConfig(datasets={}), data={"cdm": cdms[s]}) for s in SITES}
        self.kinds: list[MessageKind] = []
        self.transport: InMemoryTransport | None = None

    def _handler(self, app: NodeApp) -> Callable[[Instruction], Reply]:
        def handle(instruction: Instruction) -> Reply:
            self.kinds.append(instruction.kind)
            return app.handle(instruction)

        return handle

    def transport_for(self, run_id: str, dataset: str) -> InMemoryTransport:
        handlers = {s: self._handler(a) for s, a in self.apps.items()}
        self.transport = InMemoryTransport(handlers, info={s: NodeInfo(node_id=s) for s in SITES})
        return self.transport

    def sessions(self) -> list[object]:
        return []


class StopAfterRound1(StoreListener):
    """Stops the coordinator once round 1 is stored (its sites drop off), as a shutdown
    between rounds would."""

    def __init__(self, store: InMemoryStateStore, run_id: str, stop: threading.Event, sites: Sites):
        super().__init__(store, run_id)
        self.stop = stop
        self.sites = sites

    def on_round_end(self, record: RoundRecord) -> None:
        super().on_round_end(record)
        if record.round == 1 and self.sites.transport is not None:
            self.stop.set()
            for site in SITES:
                self.sites.transport.set_online(site, False)


def test_a_study_run_fits_once_stores_the_fit_with_the_model_and_resumes_without_refitting(
    tmp_path: Path,
) -> None:
    cdms = dict(zip(SITES, write_eunomia_sites(tmp_path / "cdm", 2).values(), strict=True))
    (tmp_path / "study.json").write_text(gi_bleed_study().to_json(), encoding="utf-8")
    job = JobSpec.from_mapping(
        {
            "run": {"name": "gi", "dataset": "cdm", "rounds": 2, "min_nodes": 2, "min_replies": 2},
            "study": {"spec": "study.json"},
            "task": {"name": "logistic_regression"},
            "train": {"local_steps": 5},
        },
        base=tmp_path,
    )
    store = InMemoryStateStore()
    service = Coordinator(store)
    run_id = service.submit_run(ALICE, job.to_json()).run_id
    sites = Sites(cdms)
    stop = threading.Event()
    executor = RunExecutor(
        store,
        sites,
        lambda rid: StopAfterRound1(store, rid, stop, sites),
        stop,
        node_wait=0.5,
    )
    row = store.get_run(run_id)
    assert row is not None
    executor.execute(row, threading.Event())  # stops after round 1, the run stays running
    first = list(sites.kinds)
    assert MessageKind.SUMMARISE in first
    assert MessageKind.TRAIN in first
    assert first.index(MessageKind.SUMMARISE) < first.index(MessageKind.TRAIN)
    row = store.get_run(run_id)
    assert row is not None
    assert row.status is RunStatus.RUNNING
    assert row.completed_rounds == 1
    fitted_events = [e for e in store.events(run_id) if e.kind == PREPROCESSING_EVENT]
    assert len(fitted_events) == 1
    assert fitted_events[0].round == 0

    stop.clear()
    sites.kinds.clear()
    executor.execute(row, threading.Event())  # the restarted coordinator resumes the run
    assert MessageKind.SUMMARISE not in sites.kinds
    assert MessageKind.TRAIN in sites.kinds
    row = store.get_run(run_id)
    assert row is not None
    assert row.status is RunStatus.FINISHED, store.events(run_id)
    assert len([e for e in store.events(run_id) if e.kind == PREPROCESSING_EVENT]) == 1

    result = service.run_result(ALICE, run_id)
    fitted = Preprocessing.from_json(decode_metadata(result)[RESULT_PREPROCESSING])
    assert fitted.to_json() == fitted_events[0].message
    layout = parameter_spec("logistic_regression", num_features=len(fitted.feature_names))
    layout.validate(decode_parameters(result))


def test_a_study_whose_fitted_model_exceeds_the_coordinators_limits_fails_before_training(
    tmp_path: Path,
) -> None:
    """The feature count is unknown at submit; once fitted, the model's size meets the same
    ``[limits] max_model_bytes`` as any job's (a spec cannot smuggle a huge model past it)."""
    from biofed.coordinator import JobLimits
    from biofed.core import ConfigurationError

    cdms = dict(zip(SITES, write_eunomia_sites(tmp_path / "cdm", 2).values(), strict=True))
    (tmp_path / "study.json").write_text(gi_bleed_study().to_json(), encoding="utf-8")
    job = JobSpec.from_mapping(
        {
            "run": {"name": "gi", "dataset": "cdm", "rounds": 1, "min_nodes": 2, "min_replies": 2},
            "study": {"spec": "study.json"},
            "task": {"name": "logistic_regression"},
        },
        base=tmp_path,
    )
    limits = JobLimits(max_model_bytes=16)  # smaller than 7 features' weights and a bias
    store = InMemoryStateStore()
    run_id = Coordinator(store, limits=limits).submit_run(ALICE, job.to_json()).run_id
    sites = Sites(cdms)
    stop = threading.Event()
    executor = RunExecutor(
        store, sites, lambda rid: StoreListener(store, rid), stop, node_wait=0.5, limits=limits
    )
    row = store.get_run(run_id)
    assert row is not None
    try:
        executor.execute(row, threading.Event())
    except ConfigurationError as exc:
        message = str(exc)
    else:
        raise AssertionError("the oversized fitted model was not refused")
    assert "num_features must be at most" in message
    assert "max_model_bytes" in message
    assert MessageKind.SUMMARISE in sites.kinds
    assert MessageKind.TRAIN not in sites.kinds
