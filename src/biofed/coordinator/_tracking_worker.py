"""Tracking that never fails nor slows a run: :class:`Tracking` hands every report to one
worker thread, which passes it to each backend (MLflow, and TensorBoard when the kit asks for
it); a backend that fails for a run is reported once (the coordinator's log and the run
event ``tracking_failed``) and skipped for that run, while the run and the other backends
go on.

Own code rather than a library's: MLflow's own asynchronous logging
(``log_batch(synchronous=False)``) still creates runs and uploads artifacts on the caller's
thread and raises there; one queue in front of every backend keeps every call off the run's
thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Mapping

from biofed.coordinator._tracking import (
    RunTracker,
    TrackedEnd,
    TrackedRound,
    TrackedStart,
    TrackingConfig,
)

_LOG = logging.getLogger("biofed.coordinator.tracking")
_STOP = object()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:500]


class Tracking:
    """A :class:`~biofed.coordinator.RunTracker` that hands every report to a worker thread
    and never raises.

    Parameters
    ----------
    backends:
        Name → a function making that tracker (called once, on the worker thread: MLflow is
        imported there, not on a run's thread); or one such function (named ``"mlflow"``).
    on_failure:
        Told ``(run_id, reason)`` once per run and backend that failed (the coordinator
        writes the run event ``tracking_failed``); that backend does not track the run
        further.
    wants_model:
        Whether the final model is passed on (``[tracking] log_model``).
    max_pending:
        Reports queued at most; one more (the trackers are far behind) fails that run's
        tracking instead of holding the run up or growing without bound.
    """

    def __init__(
        self,
        backends: Mapping[str, Callable[[], RunTracker]] | Callable[[], RunTracker],
        *,
        on_failure: Callable[[str, str], None] = lambda run_id, reason: None,
        wants_model: bool = True,
        max_pending: int = 10_000,
    ) -> None:
        self._makers = dict(backends) if isinstance(backends, Mapping) else {"mlflow": backends}
        self._backends: dict[str, RunTracker] = {}
        self._broken: dict[str, str] = {}
        self.on_failure = on_failure
        self._wants_model = wants_model
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._failed: set[tuple[str, str]] = set()
        self._closed = False
        self._idle = threading.Condition()
        self._pending = 0
        self._thread = threading.Thread(target=self._work, name="biofed-tracking", daemon=True)
        self._thread.start()

    @property
    def wants_model(self) -> bool:
        return self._wants_model

    def on_start(self, start: TrackedStart) -> None:
        self._put(start.run_id, "on_start", start)

    def on_round(self, update: TrackedRound) -> None:
        self._put(update.run_id, "on_round", update)

    def on_end(self, end: TrackedEnd) -> None:
        self._put(end.run_id, "on_end", end)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every report so far is handled (True) or ``timeout`` passed (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Handle what is queued (for at most ``timeout`` seconds) and stop the worker;
        later reports are dropped."""
        self.flush(timeout)
        self._closed = True
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:  # pragma: no cover - flush timed out with a full queue
            return
        self._thread.join(timeout)

    # -- the worker --------------------------------------------------------------------------
    def _put(self, run_id: str, method: str, report: object) -> None:
        if self._closed or all((run_id, name) in self._failed for name in self._makers):
            return
        with self._idle:
            self._pending += 1
        try:
            self._queue.put_nowait((run_id, method, report))
        except queue.Full:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            for name in self._makers:
                self._fail(run_id, name, f"the tracker fell {self._queue.maxsize} reports behind")

    def _work(self) -> None:
        for name in self._makers:  # at start-up: MLflow's import and a bad store show now
            try:
                self._tracker(name)
            except Exception as exc:
                _LOG.warning("%s tracking is unavailable, runs go on untracked: %s", name, exc)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, tuple)
            run_id: str = item[0]
            method: str = item[1]
            report: object = item[2]
            try:
                for name in self._makers:
                    if (run_id, name) in self._failed:
                        continue
                    if name in self._broken:  # the store could not be opened
                        self._fail(run_id, name, self._broken[name])
                        continue
                    try:
                        getattr(self._tracker(name), method)(report)
                    except Exception as exc:  # tracking must never fail a run
                        self._fail(run_id, name, _reason(exc))
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _tracker(self, name: str) -> RunTracker:
        if name not in self._backends:
            try:
                self._backends[name] = self._makers[name]()
            except Exception as exc:
                self._broken[name] = _reason(exc)  # not retried for every report
                raise
        return self._backends[name]

    def _fail(self, run_id: str, name: str, reason: str) -> None:
        if (run_id, name) in self._failed:
            return
        self._failed.add((run_id, name))
        _LOG.warning("%s tracking of run %s failed, the run goes on: %s", name, run_id, reason)
        try:
            self.on_failure(run_id, f"{name}: {reason}")
        except Exception:  # reporting the failure must not fail either
            _LOG.exception("could not record the tracking failure of run %s", run_id)


def make_tracking(config: TrackingConfig, *, on_failure: Callable[[str, str], None]) -> Tracking:
    """The :class:`Tracking` of ``config``: MLflow, and TensorBoard when it names a folder."""

    def mlflow() -> RunTracker:
        from biofed.coordinator._tracking_mlflow import MlflowTracker

        return MlflowTracker(config.mlflow_uri, config.experiment)

    backends: dict[str, Callable[[], RunTracker]] = {"mlflow": mlflow}
    folder = config.tensorboard
    if folder is not None:

        def tensorboard() -> RunTracker:
            from biofed.coordinator._tracking_tensorboard import TensorBoardTracker

            return TensorBoardTracker(folder)

        backends["tensorboard"] = tensorboard
    return Tracking(backends, on_failure=on_failure, wants_model=config.log_model)
