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
Every key and name is passed through :func:`safe_key` / :func:`safe_text` (MLflow's key
alphabet, no path separators, no ``..``, MLflow's length limits) and every artifact has a
fixed name, so names from job files and site replies cannot write outside the store
(CWE-22) or make MLflow refuse a batch.
"""

from __future__ import annotations

import json
import math
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

#: MLflow's limits (``mlflow.utils.validation``): key length, param / tag value length, and
#: entries per ``log_batch``.
MAX_KEY, MAX_PARAM, MAX_TAG, MAX_METRICS, MAX_PARAMS = 250, 6000, 8000, 1000, 100
_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. :]")
_TEXT_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TRUNCATED = "…[truncated]"
_RUN_TAG = "biofed.run_id"
_STATUS = {"finished": "FINISHED", "finished_with_failures": "FINISHED", "cancelled": "KILLED"}


def safe_key(*parts: str) -> str:
    """An MLflow key from parts joined by ``.``: in each part, characters outside MLflow's
    key alphabet (and ``/``) become ``_``, runs of dots one ``_``, and leading or trailing
    dots and spaces go; at most 250 characters."""
    cleaned = (re.sub(r"\.{2,}", "_", _KEY_BAD.sub("_", p)).strip(" .") or "_" for p in parts)
    return ".".join(cleaned)[:MAX_KEY]


def safe_text(value: str, limit: int) -> str:
    """``value`` without control characters, cut to ``limit`` characters (marked so)."""
    text = _TEXT_BAD.sub(" ", value)
    if len(text) > limit:
        text = text[: limit - len(_TRUNCATED)] + _TRUNCATED
    return text


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
            params = [Param(safe_key(k), safe_text(v, MAX_PARAM)) for k, v in start.params.items()]
            for chunk in _chunks(params, MAX_PARAMS):
                self.client.log_batch(mlflow_run, params=chunk, synchronous=True)
            self.client.log_text(mlflow_run, start.job_json, "job/job.json")
        self.client.set_tag(mlflow_run, "biofed.status", "running")

    def on_round(self, update: TrackedRound) -> None:
        mlflow_run = self._find(update.run_id)
        if mlflow_run is None:
            raise LookupError(f"no MLflow run for {update.run_id!r}")
        record = update.record
        values: dict[str, float] = {
            "round.selected": record.num_selected,
            "round.replies": record.num_replies,
            "round.rejected": record.num_rejected,
            "round.failed": float(record.failed is not None),
            "round.duration_s": record.duration_s,
        }
        for key, value in record.train_metrics.items():
            values[safe_key("train", key)] = value
        for key, value in record.eval_metrics.items():
            values[safe_key("eval", key)] = value
        for site, metrics in record.node_eval_metrics.items():
            for key, value in metrics.items():
                values[safe_key("site", site, "eval", key)] = value
        for site, spend in update.privacy.items():
            values[safe_key("privacy.epsilon", site)] = spend["epsilon"]
            values[safe_key("privacy.delta", site)] = spend["delta"]
        self._log(mlflow_run, values, record.round)

    def on_end(self, end: TrackedEnd) -> None:
        mlflow_run = self._find(end.run_id)
        if mlflow_run is None:
            return  # ended before it started (cancelled while pending): nothing to close
        values: dict[str, float] = {}
        tags = {"biofed.status": end.status}
        if end.error:
            tags["biofed.error"] = end.error
        if end.privacy is not None:
            self.client.log_dict(mlflow_run, dict(end.privacy), "privacy/report.json")
            tags["privacy.guarantee"] = json.dumps(end.privacy.get("guarantee"), sort_keys=True)
            tags["privacy.trust"] = str(end.privacy.get("trust", ""))
            if "label" in end.privacy:
                tags["privacy.label"] = str(end.privacy["label"])
            client_level = end.privacy.get("client_level_epsilon")
            if isinstance(client_level, int | float):
                values["privacy.client_level_epsilon"] = float(client_level)
        if end.contributions is not None:
            self.client.log_dict(
                mlflow_run, dict(end.contributions), "contributions/contributions.json"
            )
            for name, figures in (
                ("value", end.contributions.get("totals", {})),
                ("share", end.contributions.get("shares", {})),
            ):
                for site, value in figures.items():
                    if isinstance(value, int | float):
                        values[safe_key("contribution", name, site)] = float(value)
        self._log(mlflow_run, values, end.rounds)
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
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in values.items()
            if math.isfinite(float(value))
        ]
        for chunk in _chunks(metrics, MAX_METRICS):
            self.client.log_batch(mlflow_run, metrics=chunk, synchronous=True)
