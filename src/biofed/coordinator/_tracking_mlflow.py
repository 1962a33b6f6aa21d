"""The MLflow backend of experiment tracking (:mod:`._tracking`): one MLflow run per biofed
run, through :class:`mlflow.tracking.MlflowClient` (imported here only, when tracking is on).

What a biofed run becomes:

* tags ``biofed.run_id`` (how a resumed run finds its MLflow run), ``biofed.status``;
  ``privacy.guarantee``, ``privacy.trust`` and ``privacy.label`` for a job with DP;
* params: the job's settings flattened (``run.rounds``, ``strategy.name``, ``privacy.mode``,
  ``privacy.enabled``, ``secure_aggregation.enabled`` …);
* metrics with ``step`` = the round: ``round.replies``, ``round.selected``,
  ``round.rejected``, ``round.failed``, ``round.duration_s``, ``train.<metric>``,
  ``eval.<metric>``, ``site.<site>.eval.<metric>``, ``privacy.epsilon.<site>`` and
  ``privacy.delta.<site>`` (each site's ε(δ) so far, as it reported it), and at the end
  ``privacy.client_level_epsilon``, ``contribution.value.<site>`` and
  ``contribution.share.<site>``;
* artifacts ``job/job.json``, ``privacy/report.json``, ``contributions/contributions.json``
  and ``model/model.safetensors`` (``biofed run result``'s bytes).

MLflow 3.18 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set (the store is
"in maintenance mode"; MLflow recommends SQLite, whose schema migrations need ``alembic``,
which ``mlflow-skinny`` does not install, and take seconds to run). The file store is what
works without a server or more packages, so for a ``file:`` URI the variable is set when
this process has not set it.

Security notes
--------------
Every key and name is passed through :func:`._tracking_values.safe_key` and ``safe_text``
(MLflow's key alphabet, no path separators, no ``..``, MLflow's length limits) and every
artifact has a fixed name, so names from job files and site replies cannot write outside the
store (CWE-22) or make MLflow refuse a batch.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from biofed.coordinator._tracking import TrackedEnd, TrackedRound, TrackedStart
from biofed.coordinator._tracking_values import (
    MAX_KEY,
    end_values,
    round_values,
    safe_key,
    safe_text,
)

#: MLflow's limits (``mlflow.utils.validation``): param / tag value length and entries per
#: ``log_batch``.
MAX_PARAM, MAX_TAG, MAX_METRICS, MAX_PARAMS = 6000, 8000, 1000, 100
_RUN_TAG = "biofed.run_id"
_STATUS = {"finished": "FINISHED", "finished_with_failures": "FINISHED", "cancelled": "KILLED"}


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MlflowTracker:
    """Logs biofed runs to the MLflow tracking store at ``uri`` under ``experiment``."""

    def __init__(self, uri: str, experiment: str) -> None:
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see the module
        self.client = MlflowClient(tracking_uri=uri)
        name = safe_text(experiment, MAX_KEY)
        found = self.client.get_experiment_by_name(name)
        self.experiment_id = (
            found.experiment_id if found is not None else self.client.create_experiment(name)
        )
        self._runs: dict[str, str] = {}

    wants_model = True

    # -- runs ----------------------------------------------------------------------------------
    def _find(self, run_id: str) -> str | None:
        if run_id in self._runs:
            return self._runs[run_id]
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", run_id):
            return None  # not a biofed run id: never put in a filter
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{_RUN_TAG}` = '{run_id}'", max_results=1
        )
        if not found:
            return None
        self._runs[run_id] = found[0].info.run_id
        return self._runs[run_id]

    def on_start(self, start: TrackedStart) -> None:
        mlflow_run = self._find(start.run_id)
        if mlflow_run is None:  # first start; a resumed run goes on in its MLflow run
            run = self.client.create_run(
                self.experiment_id,
                run_name=safe_text(start.run_id, MAX_KEY),
                tags={_RUN_TAG: safe_text(start.run_id, MAX_TAG)},
            )
            mlflow_run = self._runs[start.run_id] = run.info.run_id
            # two names may make one safe key: MLflow refuses a batch with a key twice
            safe = {safe_key(k): safe_text(v, MAX_PARAM) for k, v in start.params.items()}
            params = [Param(k, v) for k, v in safe.items()]
            for chunk in _chunks(params, MAX_PARAMS):
                self.client.log_batch(mlflow_run, params=chunk, synchronous=True)
            self.client.log_text(mlflow_run, start.job_json, "job/job.json")
        self.client.set_tag(mlflow_run, "biofed.status", "running")

    def on_round(self, update: TrackedRound) -> None:
        mlflow_run = self._find(update.run_id)
        if mlflow_run is None:
            raise LookupError(f"no MLflow run for {update.run_id!r}")
        self._log(mlflow_run, round_values(update), update.record.round)

    def on_end(self, end: TrackedEnd) -> None:
        mlflow_run = self._find(end.run_id)
        if mlflow_run is None:
            return  # ended before it started (cancelled while pending): nothing to close
        tags = {"biofed.status": end.status}
        if end.error:
            tags["biofed.error"] = end.error
        if end.privacy is not None:
            self.client.log_dict(mlflow_run, dict(end.privacy), "privacy/report.json")
            tags["privacy.guarantee"] = json.dumps(end.privacy.get("guarantee"), sort_keys=True)
            tags["privacy.trust"] = str(end.privacy.get("trust", ""))
            if "label" in end.privacy:
                tags["privacy.label"] = str(end.privacy["label"])
        if end.contributions is not None:
            self.client.log_dict(
                mlflow_run, dict(end.contributions), "contributions/contributions.json"
            )
        self._log(mlflow_run, end_values(end), end.rounds)
        for key, value in tags.items():
            self.client.set_tag(mlflow_run, safe_key(key), safe_text(value, MAX_TAG))
        if end.model is not None:
            with tempfile.TemporaryDirectory(prefix="biofed-model-") as folder:
                path = Path(folder) / "model.safetensors"
                path.write_bytes(end.model)
                self.client.log_artifact(mlflow_run, str(path), "model")
        self.client.set_terminated(mlflow_run, _STATUS.get(end.status, "FAILED"))
        self._runs.pop(end.run_id, None)

    def _log(self, mlflow_run: str, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(mlflow_run, metrics=chunk, synchronous=True)
