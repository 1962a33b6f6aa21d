"""Red team: hostile names and values on their way into MLflow.

Metric names and site ids come from site replies, run ids and settings from job files: every
key the tracker makes must pass MLflow's own validators (a refused batch would stop a run's
tracking), land inside the store, and values that are not finite or too long must be left
out or cut. A real :class:`MlflowTracker` on a local file store; MLflow's validators from
``mlflow.utils.validation``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

mlflow_tracking = pytest.importorskip("mlflow.tracking")

from mlflow.utils import validation  # noqa: E402

from biofed.coordinator import RoundRecord, TrackedEnd, TrackedRound, TrackedStart  # noqa: E402
from biofed.coordinator._tracking_mlflow import MAX_TAG, MlflowTracker  # noqa: E402
from biofed.coordinator._tracking_values import safe_component, safe_key  # noqa: E402

HOSTILE = [
    "../../etc/passwd", "/abs", "a/./b", "..", ".", " ", "", "a..b", "a. .b", "é", "名前",
    "x" * 249 + "..y", "a" * 300 + ".", "tab\there", "nl\nhere", "nul\x00", "%2e%2e",
    "C:\\windows", "~/.ssh", "a:b", "-", "'; DROP TABLE runs; --", "tags.`x` = 'y'",
]  # fmt: skip


def _fuzz(n: int = 2000) -> list[str]:
    alphabet = "./\\ :-_aZ09é\x00\n\t'\"`%~"
    rng = random.Random(16)
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)
    ] + HOSTILE


def test_every_key_made_from_hostile_names_passes_mlflows_validators() -> None:
    for name in _fuzz():
        for key in (
            safe_key("train", name),
            safe_key("site", name, "eval", name),
            safe_key("privacy.epsilon", name),
        ):
            validation._validate_metric_name(key)
            validation._validate_param_name(key)
            validation._validate_tag_name(key)
            assert ".." not in key
            assert "/" not in key
            assert len(key) <= 250
        part = safe_component(name)
        assert part not in ("", ".", "..")
        assert "/" not in part
        assert "\\" not in part


@pytest.fixture
def allow_file_store() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:  # MLflow 3.18 asks for the file store
        patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        yield


def test_a_round_of_hostile_metrics_is_logged_inside_the_store(
    tmp_path: Path, allow_file_store: None
) -> None:
    root = tmp_path / "store" / "mlruns"
    tracker = MlflowTracker(root.as_uri(), "biofed")
    # two settings whose names make one safe key: MLflow refuses a batch with a key twice
    tracker.on_start(
        TrackedStart(run_id="r-1", params={"task.a/b": "1", "task.a_b": "2"}, job_json="{}")
    )
    values = {name: float(i) for i, name in enumerate(HOSTILE)}
    values |= {"nan": float("nan"), "inf": float("inf"), "huge": 1e308}
    values |= {f"m{i}": 1.0 for i in range(3000)}  # a site that names thousands of metrics
    record = RoundRecord(
        round=1,
        num_selected=2,
        num_replies=2,
        num_rejected=0,
        train_metrics=values,
        node_eval_metrics={name: {name: 0.5} for name in HOSTILE[:8]},
    )
    spend = {"../x": {"epsilon": float("nan"), "delta": 1e-5}, "s": {"epsilon": 1.0, "delta": 0}}
    tracker.on_round(TrackedRound(run_id="r-1", record=record, privacy=spend))
    tracker.on_end(
        TrackedEnd(
            run_id="r-1",
            status="finished",
            rounds=1,
            error="boom\n" * 10_000,
            privacy={"guarantee": {"epsilon": float("inf")}, "trust": "<b>", "label": "l" * 20_000},
        )
    )
    assert [p for p in tmp_path.rglob("*") if not p.is_relative_to(root)] == [root.parent]
    client = mlflow_tracking.MlflowClient(root.as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("biofed").experiment_id])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert "train.nan" not in metrics  # not finite: left out
    assert "train.inf" not in metrics
    assert metrics["train.huge"] == 1e308
    assert "privacy.epsilon.__x" not in metrics
    assert metrics["privacy.epsilon.s"] == 1.0
    assert sum(k.startswith("train.m") for k in metrics) == 3000
    assert run.data.params["task.a_b"] in ("1", "2")  # one of them, and the run tracked
    assert len(run.data.tags["biofed.error"]) <= MAX_TAG
    assert "\n" not in run.data.tags["biofed.error"]
    assert len(run.data.tags["privacy.label"]) <= MAX_TAG
