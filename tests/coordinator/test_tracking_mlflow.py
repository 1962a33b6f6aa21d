"""Experiment tracking (issue 16, item 3): a DP run at an in-process coordinator with
``[tracking]`` leaves its settings, every round's metrics, each site's privacy spend, the
privacy report and the final model (``biofed run result``'s bytes) in the MLflow store; a
broken store does not fail the run; hostile names stay inside the store; a model the study
agreement keeps is not logged."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

mlflow_tracking = pytest.importorskip("mlflow.tracking")

from test_robust_job import held_out  # noqa: E402

from biofed.coordinator import (  # noqa: E402
    TRACKING_FAILED_EVENT,
    Coordinator,
    InMemoryStateStore,
    JobSpec,
    RoundRecord,
    RunStatus,
    StoreListener,
    TrackedEnd,
    TrackedRound,
    TrackedStart,
    Tracking,
    TrackingConfig,
)
from biofed.coordinator._executor import RunExecutor  # noqa: E402
from biofed.coordinator._tracking_mlflow import MlflowTracker  # noqa: E402
from biofed.core import ConfigurationError  # noqa: E402
from biofed.node import NodeConfig, PrivacyConfig  # noqa: E402
from biofed.simulation import InProcessBackend  # noqa: E402
from biofed.simulation._job_sites import site_recipes  # noqa: E402
from biofed.transport import InMemoryTransport  # noqa: E402
from biofed.transport.grpc import Peer  # noqa: E402

ALICE = Peer(name="alice", role="researcher")
SITES = [f"center-{k}" for k in range(6)]


class Hub:
    """The six TCGA-BRCA sites as real in-process nodes (development sites: their DP-SGD
    figures for the numpy Cox model are labelled heuristic, which they accept)."""

    def __init__(self, workdir: Path) -> None:
        heuristic = NodeConfig(datasets={}, privacy=PrivacyConfig(allow_heuristic=True))
        self.recipes = site_recipes(
            held_out()[0],
            "tcga-brca",
            workdir=workdir,
            needs_kits=False,
            node_configs=dict.fromkeys(SITES, heuristic),
        )

    def transport_for(self, run_id: str, dataset: str) -> InMemoryTransport:
        return InProcessBackend().transport(self.recipes)

    def sessions(self) -> list[Any]:
        return []

    def cancel_run(self, run_id: str) -> int:
        return 0


def _job(rounds: int = 2, **run: Any) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "tracked",
                "dataset": "tcga-brca",
                "rounds": rounds,
                "min_nodes": 6,
                "min_replies": 6,
                **run,
            },
            "task": {"name": "cox_ph", "num_features": 39},
            "train": {"local_steps": 3, "batch_size": 16, "learning_rate": 0.05},
            "evaluate": {"split": "test"},
            "privacy": {
                "mode": "client",
                "noise_multiplier": 1.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
            },
        }
    )


def _wait(service: Coordinator, run_id: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = service.get_run(ALICE, run_id).status
        if status in ("finished", "finished_with_failures", "failed", "cancelled"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} did not end")


@pytest.fixture(scope="module")
def allow_file_store() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # MLflow 3.18 asks for the file store
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, allow_file_store: None) -> dict[str, Any]:
    """One DP run at a coordinator whose kit says ``[tracking]`` (the default store)."""
    kit = tmp_path_factory.mktemp("kit")
    board = 'tensorboard = "tb"\n' if importlib.util.find_spec("tensorboard") else ""
    (kit / "kit.toml").write_text(f'[tracking]\nexperiment = "brca"\n{board}', encoding="utf-8")
    config = TrackingConfig.from_kit(kit)
    assert config is not None
    assert config.mlflow_uri == (kit / "mlruns").resolve().as_uri()
    store = InMemoryStateStore()
    hub = Hub(kit)
    service = Coordinator(store, hub=lambda **_: hub, node_wait=5.0, tracking=config)  # type: ignore[arg-type,return-value]
    service.start()
    try:
        run_id = service.submit_run(ALICE, _job().to_json()).run_id
        assert _wait(service, run_id) == "finished", store.events(run_id)
        result = service.run_result(ALICE, run_id)
        summary = service.get_run(ALICE, run_id)
    finally:
        service.stop()  # hands what is queued to MLflow
    return {
        "kit": kit,
        "hub": hub,
        "config": config,
        "store": store,
        "run_id": run_id,
        "result": result,
        "privacy": json.loads(summary.summary_json).get("privacy"),
    }


def _mlflow_run(uri: str, run_id: str, experiment: str = "brca") -> Any:
    client = mlflow_tracking.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    query = f"tags.`biofed.run_id` = '{run_id}'"
    runs = client.search_runs([found.experiment_id], filter_string=query)
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_the_run_its_rounds_privacy_spend_and_model_are_in_the_store(
    tracked: dict[str, Any],
) -> None:
    client, run = _mlflow_run(tracked["config"].mlflow_uri, tracked["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == tracked["run_id"]
    assert run.data.tags["biofed.status"] == "finished"
    params = run.data.params
    assert params["run.rounds"] == "2"
    assert params["task.name"] == "cox_ph"
    assert params["strategy.name"] == "fedavg"
    assert params["privacy.mode"] == "client"
    assert params["privacy.enabled"] == "true"
    assert params["secure_aggregation.enabled"] == "false"

    # every round's metrics, one point per round, equal to the store's round records
    records: list[RoundRecord] = [r.record for r in tracked["store"].rounds(tracked["run_id"])]
    assert [r.round for r in records] == [1, 2]
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        assert record.failed is None
        for key, value in record.train_metrics.items():
            expected.setdefault(f"train.{key}", {})[record.round] = value
        for key, value in record.eval_metrics.items():
            expected.setdefault(f"eval.{key}", {})[record.round] = value
        for site, metrics in record.node_eval_metrics.items():
            for key, value in metrics.items():
                expected.setdefault(f"site.{site}.eval.{key}", {})[record.round] = value
        expected.setdefault("round.replies", {})[record.round] = record.num_replies
    assert "eval.c_index" in expected
    assert "site.center-1.eval.c_index" in expected
    for key, by_round in expected.items():
        history = client.get_metric_history(run.info.run_id, key)
        assert {m.step: m.value for m in history} == pytest.approx(by_round), key
        assert len(history) == len(by_round), key

    # each site's ε: per round as its events say, last value = the run's privacy report
    report = tracked["privacy"]
    assert report is not None
    assert set(report["sites"]) == set(SITES)
    spends: dict[str, dict[int, float]] = {}
    for event in tracked["store"].events(tracked["run_id"]):
        if event.kind == "privacy_spent":
            spends.setdefault(event.node_id, {})[event.round] = event.data["epsilon"]
    for site in SITES:
        history = client.get_metric_history(run.info.run_id, f"privacy.epsilon.{site}")
        assert {m.step: m.value for m in history} == spends[site]
        last = max(history, key=lambda m: m.step)
        assert last.value == report["sites"][site]["epsilon"]
    assert json.loads(run.data.tags["privacy.guarantee"]) == report["guarantee"]
    assert run.data.tags["privacy.trust"] == report["trust"]

    # the model: the very bytes `biofed run result` gives; the report next to it
    folder = tracked["kit"] / "downloaded"
    model = client.download_artifacts(run.info.run_id, "model/model.safetensors", str(folder))
    assert Path(model).read_bytes() == tracked["result"]
    logged = client.download_artifacts(run.info.run_id, "privacy/report.json", str(folder))
    assert json.loads(Path(logged).read_text(encoding="utf-8")) == report
    job = client.download_artifacts(run.info.run_id, "job/job.json", str(folder))
    assert JobSpec.from_json(Path(job).read_text(encoding="utf-8")) == _job()
    # the store is in the kit and nowhere else
    assert (tracked["kit"] / "mlruns").is_dir()


@pytest.mark.slow
def test_a_failing_tracking_store_does_not_fail_the_run(tracked: dict[str, Any]) -> None:
    blocked = tracked["kit"] / "not-a-folder"
    blocked.write_text("a file where the store should be", encoding="utf-8")
    config = TrackingConfig.from_table({"mlflow_uri": str(blocked)})
    store = InMemoryStateStore()
    service = Coordinator(store, hub=lambda **_: tracked["hub"], node_wait=5.0, tracking=config)  # type: ignore[arg-type,return-value]
    service.start()
    try:
        run_id = service.submit_run(ALICE, _job(rounds=1).to_json()).run_id
        assert _wait(service, run_id) == "finished"
        assert service.tracking is not None
        assert service.tracking.flush(10.0)
        assert service.run_result(ALICE, run_id)
        summary = service.get_run(ALICE, run_id)
    finally:
        service.stop()
    failed = [e for e in store.events(run_id) if e.kind == TRACKING_FAILED_EVENT]
    assert len(failed) == 1, failed  # said once, though every report failed
    assert "the run goes on untracked: mlflow: " in failed[0].message
    assert "not-a-folder" in failed[0].message or "directory" in failed[0].message.lower()
    problems = json.loads(summary.summary_json)["problems"]
    assert any(TRACKING_FAILED_EVENT in json.dumps(p) for p in problems)  # `run status` says so


def test_hostile_names_stay_inside_the_store(tmp_path: Path, allow_file_store: None) -> None:
    # a job cannot even be named so
    with pytest.raises(ConfigurationError, match=r"\[run\] name"):
        _job(name="../../escape")
    # the tracker, handed hostile names directly (a run id, metric names, a site id)
    root = tmp_path / "store" / "mlruns"
    tracker = MlflowTracker(root.as_uri(), "../../experiment")
    evil = "../../../../escape"
    tracker.on_start(
        TrackedStart(
            run_id=evil,
            params={"../../param": "x" * 10_000, "run.name": "a\nb"},
            job_json="{}",
        )
    )
    record = RoundRecord(
        round=1,
        num_selected=1,
        num_replies=1,
        num_rejected=0,
        train_metrics={"../../../loss": 1.0, "/abs": 2.0, "bad": float("inf")},
        node_eval_metrics={"../../site": {"c_index": 0.5}},
    )
    tracker.on_round(
        TrackedRound(run_id=evil, record=record, privacy={"../x": {"epsilon": 1.0, "delta": 1e-5}})
    )
    tracker.on_end(
        TrackedEnd(
            run_id=evil,
            status="finished",
            rounds=1,
            model=b"model",
            contributions={"totals": {"../a": 0.25}, "shares": {"../a": 1.0}, "outcome": None},
        )
    )
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)]
    assert [p for p in outside if p != root.parent] == []
    client = mlflow_tracking.MlflowClient(root.as_uri())
    experiment = client.get_experiment_by_name("../../experiment")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert set(run.data.metrics) >= {
        "train.______loss",
        "train._abs",
        "site.____site.eval.c_index",
        "privacy.epsilon.__x",
        "contribution.value.__a",
        "contribution.share.__a",
    }
    assert "train.bad" not in run.data.metrics  # not a finite number: not logged
    assert all(".." not in k and "/" not in k for k in (*run.data.metrics, *run.data.params))
    assert len(run.data.params["____param"]) == 6000  # MLflow's limit, marked as cut
    assert run.data.params["____param"].endswith("…[truncated]")
    assert run.data.params["run.name"] == "a b"


@pytest.mark.slow
def test_a_model_the_agreement_keeps_is_not_logged(tracked: dict[str, Any], tmp_path: Path) -> None:
    store = InMemoryStateStore()
    spec = _job(rounds=1, agreement="study-1")
    run_id = "kept-00000000"
    store.create_run(run_id, spec.to_json(), "alice")
    config = TrackingConfig.from_table({"experiment": "brca"}, tracked["kit"])
    reported: list[str] = []
    tracking = Tracking(
        lambda: MlflowTracker(config.mlflow_uri, config.experiment),
        on_failure=lambda run, reason: reported.append(reason),
    )
    executor = RunExecutor(
        store,
        tracked["hub"],
        lambda rid: StoreListener(store, rid),
        threading.Event(),
        node_wait=5.0,
        tracker=tracking,
        releases_model=lambda agreement: False,  # outputs.final_model = false
    )
    row = store.get_run(run_id)
    assert row is not None
    executor.execute(row, threading.Event())
    assert tracking.flush(20.0)
    tracking.close()
    assert reported == []
    row = store.get_run(run_id)
    assert row is not None
    assert row.status is RunStatus.FINISHED
    client, run = _mlflow_run(config.mlflow_uri, run_id)
    assert run.info.status == "FINISHED"
    assert "eval.c_index" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == []
    assert "privacy" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_the_table_is_checked_like_every_kit_table(tmp_path: Path) -> None:
    def refusal(text: str) -> str:
        (tmp_path / "kit.toml").write_text(text, encoding="utf-8")
        with pytest.raises(ConfigurationError) as caught:
            TrackingConfig.from_kit(tmp_path)
        return str(caught.value)

    assert "unknown [tracking] key 'mlflow_url'" in refusal('[tracking]\nmlflow_url = "x"\n')
    assert "[tracking] enabled must be true or false" in refusal("[tracking]\nenabled = 1\n")
    assert "[tracking] experiment" in refusal('[tracking]\nexperiment = "../x"\n')
    assert "[tracking] must be a table" in refusal('tracking = "on"\n')
    (tmp_path / "kit.toml").write_text("[tracking]\nenabled = false\n", encoding="utf-8")
    assert TrackingConfig.from_kit(tmp_path) is None
    (tmp_path / "kit.toml").write_text('role = "coordinator"\n', encoding="utf-8")
    assert TrackingConfig.from_kit(tmp_path) is None
    remote = TrackingConfig.from_table({"mlflow_uri": "http://mlflow.example:5000"})
    assert remote.mlflow_uri == "http://mlflow.example:5000"
    assert os.sep not in TrackingConfig.from_table({}, tmp_path).experiment


def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path: Path, allow_file_store: None) -> None:
    uri = (tmp_path / "mlruns").as_uri()
    start = TrackedStart(run_id="job-0123abcd", params={"run.rounds": "2"}, job_json="{}")
    first = MlflowTracker(uri, "biofed")
    first.on_start(start)
    record = RoundRecord(round=1, num_selected=2, num_replies=2, num_rejected=0)
    first.on_round(TrackedRound(run_id=start.run_id, record=record))
    again = MlflowTracker(uri, "biofed")  # the coordinator restarted
    again.on_start(start)
    again.on_round(TrackedRound(run_id=start.run_id, record=dataclasses.replace(record, round=2)))
    again.on_end(TrackedEnd(run_id=start.run_id, status="cancelled", rounds=2))
    client, run = _mlflow_run(uri, start.run_id, "biofed")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "round.replies")] == [1, 2]
    assert run.info.status == "KILLED"


@pytest.mark.slow
def test_tensorboard_gets_the_same_metrics(tracked: dict[str, Any]) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    assert tracked["config"].tensorboard == (tracked["kit"] / "tb").resolve()
    events = accumulator.EventAccumulator(str(tracked["kit"] / "tb" / tracked["run_id"]))
    events.Reload()
    records = [r.record for r in tracked["store"].rounds(tracked["run_id"])]
    loss = {s.step: s.value for s in events.Scalars("eval.c_index")}
    assert loss == pytest.approx({r.round: r.eval_metrics["c_index"] for r in records}, rel=1e-6)
    report = tracked["privacy"]
    for site in SITES:
        (last,) = [s for s in events.Scalars(f"privacy.epsilon.{site}") if s.step == 2]
        assert last.value == pytest.approx(report["sites"][site]["epsilon"], rel=1e-6)


def test_a_hostile_run_id_gets_a_tensorboard_folder_inside(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from biofed.coordinator._tracking_tensorboard import TensorBoardTracker

    tracker = TensorBoardTracker(tmp_path / "tb")
    for evil in ("../../escape", "/etc/cron.d/x", "..", "a/../../b"):
        tracker.on_start(TrackedStart(run_id=evil, params={}, job_json="{}"))
        tracker.on_end(TrackedEnd(run_id=evil, status="finished", rounds=0))
        assert tracker.run_folder(evil).parent == (tmp_path / "tb").resolve()
    assert {p.parent for p in (tmp_path / "tb").rglob("*") if p.is_file()} <= {
        tracker.run_folder(e) for e in ("../../escape", "/etc/cron.d/x", "..", "a/../../b")
    }
    assert [p.name for p in tmp_path.iterdir()] == ["tb"]
