"""The TensorBoard backend of experiment tracking (:mod:`._tracking`): each run's metrics as
TensorBoard event files, one folder per run (``<folder>/<run id>``), written with
TensorBoard's own event writer (imported here only, when the kit's ``[tracking]`` names a
``tensorboard`` folder). The metric names and steps are MLflow's
(:func:`._tracking_values.round_values`); parameters, tags and artifacts are MLflow's alone.

Security notes
--------------
A run's folder name is :func:`._tracking_values.safe_component` of its id, checked to sit
directly inside the configured folder, so a hostile run id cannot write elsewhere (CWE-22).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from biofed.coordinator._tracking import TrackedEnd, TrackedRound, TrackedStart
from biofed.coordinator._tracking_values import end_values, round_values, safe_component


class TensorBoardTracker:
    """Writes each run's metrics under ``folder`` (one sub-folder per run)."""

    wants_model = False

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, EventFileWriter] = {}

    def run_folder(self, run_id: str) -> Path:
        """Where ``run_id``'s event files go (inside :attr:`folder`, always)."""
        path = (self.folder / safe_component(run_id)).resolve()
        if path.parent != self.folder:  # pragma: no cover - safe_component keeps it so
            raise ValueError(f"run id {run_id!r} does not name a folder of its own")
        return path

    def _writer(self, run_id: str) -> EventFileWriter:
        writer = self._writers.get(run_id)
        if writer is None:
            writer = self._writers[run_id] = EventFileWriter(str(self.run_folder(run_id)))
        return writer

    def on_start(self, start: TrackedStart) -> None:
        self._writer(start.run_id)

    def on_round(self, update: TrackedRound) -> None:
        self._write(update.run_id, round_values(update), update.record.round)

    def on_end(self, end: TrackedEnd) -> None:
        if end.run_id not in self._writers:
            return  # ended before it started: nothing written
        self._write(end.run_id, end_values(end), end.rounds)
        self._writers.pop(end.run_id).close()

    def _write(self, run_id: str, values: Mapping[str, float], step: int) -> None:
        if not values:
            return
        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        writer = self._writer(run_id)
        writer.add_event(Event(wall_time=time.time(), step=step, summary=summary))
        writer.flush()
