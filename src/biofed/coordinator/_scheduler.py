"""The run scheduler: which runs execute, how many at once, and what happens when one breaks.

The scheduler knows nothing about rounds (the round engine and
:mod:`biofed.coordinator._executor` do); it owns the queue of runs and their threads:

* runs found ``running`` in the store (a restarted coordinator) start first, then ``pending``
  runs in submission order, at most ``max_concurrent_runs`` at a time, each on its own
  thread;
* **a run fails alone**: any exception escaping a run (a :class:`~biofed.core.BiofedError`,
  but equally ``MemoryError``, ``ValueError`` or a database error) marks *that* run
  ``failed`` with its reason, and the scheduler goes on with the others;
* **no run is retried for ever**: every start is counted in the store
  (:meth:`~biofed.coordinator.StateStore.start_attempt`, reset when a round completes), so a
  run that kills the whole process (the kernel's OOM killer) is failed after
  ``max_attempts`` starts without progress instead of killing every restart;
* **cancel at any moment**: :meth:`cancel` sets the run's cancel event, which the engine
  observes while it waits for replies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from biofed.coordinator._store import RunRow, RunStatus, StateStore
from biofed.core import BiofedError, ConfigurationError

_log = logging.getLogger("biofed.coordinator")

#: Runs executed at the same time unless the coordinator's configuration says otherwise.
DEFAULT_MAX_CONCURRENT_RUNS = 4
#: Starts without a completed round after which a run is failed rather than resumed again.
DEFAULT_MAX_ATTEMPTS = 3

#: Executes one run until it ends, is cancelled (its event) or the coordinator stops.
RunExecute = Callable[[RunRow, threading.Event], None]
#: Marks a run failed with a one-line reason (must not raise for a run already ended).
RunFail = Callable[[str, str], None]


def failure_reason(exc: BaseException) -> str:
    """One line saying why a run failed: biofed's own message, or the exception's type and
    first line for anything else (an internal error, not the researcher's fault)."""
    if isinstance(exc, BiofedError):
        text = str(exc)
    else:
        first = (str(exc).splitlines() or [""])[0]
        text = f"internal error: {type(exc).__name__}" + (f": {first}" if first else "")
    return text[:500]


@dataclass(slots=True)
class _Active:
    thread: threading.Thread
    cancel: threading.Event = field(default_factory=threading.Event)


class RunScheduler:
    """Executes the store's runs, several at once, each isolated from the others.

    Parameters
    ----------
    store:
        Where the runs are.
    execute:
        Runs one run (:meth:`biofed.coordinator._executor.RunExecutor.execute`).
    fail:
        Marks a run failed with a reason (called when ``execute`` raises, or a run has used
        up its attempts).
    max_concurrent_runs:
        Runs executing at the same time (≥ 1).
    max_attempts:
        Starts without a completed round before a run is failed instead of started again.
    poll_s:
        Longest wait between two looks at the store when nothing wakes the scheduler.
    """

    def __init__(
        self,
        store: StateStore,
        execute: RunExecute,
        fail: RunFail,
        *,
        max_concurrent_runs: int = DEFAULT_MAX_CONCURRENT_RUNS,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        poll_s: float = 1.0,
    ) -> None:
        for name, value in (
            ("max_concurrent_runs", max_concurrent_runs),
            ("max_attempts", max_attempts),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}")
        self.store = store
        self.max_concurrent_runs = max_concurrent_runs
        self.max_attempts = max_attempts
        self._execute = execute
        self._fail = fail
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._active: dict[str, _Active] = {}
        self._cancel_requested: set[str] = set()
        #: Runs that failed in this process but whose status could not be stored: not
        #: started again here (the attempt bound settles them after a restart).
        self._given_up: set[str] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="biofed-scheduler", daemon=True)

    @property
    def stopping(self) -> threading.Event:
        """Set when the coordinator stops: runs end after their current round and stay
        ``running`` in the store, to resume at the next start."""
        return self._stopping

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> RunScheduler:
        """Start scheduling (interrupted runs first)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop starting runs and wait up to ``timeout`` seconds for the running ones."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            threads = [a.thread for a in self._active.values()]
        for thread in threads:
            thread.join(timeout / max(1, len(threads)))

    def wake(self) -> None:
        """Look at the store now (a run was submitted, a node connected…)."""
        self._wake.set()

    # -- runs --------------------------------------------------------------------------------
    def active(self) -> list[str]:
        """Ids of the runs executing now."""
        with self._lock:
            return sorted(self._active)

    def cancel(self, run_id: str) -> bool:
        """Ask ``run_id`` to stop at once; True if it is executing here (its executor then
        records the cancellation), False if it is not (the caller records it)."""
        with self._lock:
            self._cancel_requested.add(run_id)
            active = self._active.get(run_id)
            if active is not None:
                active.cancel.set()
        return active is not None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._fill()
            except Exception:  # the store is unreachable for a moment: keep scheduling
                _log.exception("biofed scheduler: cannot read the run queue")
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def _candidates(self) -> list[RunRow]:
        # Interrupted runs resume before queued runs start.
        return self.store.list_runs([RunStatus.RUNNING]) + self.store.list_runs([RunStatus.PENDING])

    def _fill(self) -> None:
        with self._lock:
            free = self.max_concurrent_runs - len(self._active)
            busy = set(self._active) | self._given_up | self._cancel_requested
        if free <= 0:
            return
        for row in self._candidates():
            if free <= 0 or self._stopping.is_set():
                return
            if row.run_id in busy:
                continue
            if self._launch(row):
                free -= 1

    def _launch(self, row: RunRow) -> bool:
        run_id = row.run_id
        try:
            attempts = self.store.start_attempt(run_id)
        except BiofedError:
            return False  # ended meanwhile (cancelled while pending)
        except Exception as exc:
            self._give_up(run_id, failure_reason(exc))
            return False
        if attempts > self.max_attempts:
            self._give_up(
                run_id,
                f"started {attempts - 1} times without completing a round (the coordinator "
                f"stopped or was killed each time); not started again",
            )
            return False
        with self._lock:
            if run_id in self._cancel_requested or self._stopping.is_set():
                return False
            active = _Active(
                thread=threading.Thread(
                    target=self._run, args=(row,), name=f"biofed-run-{run_id}", daemon=True
                )
            )
            self._active[run_id] = active
        active.thread.start()
        return True

    def _run(self, row: RunRow) -> None:
        with self._lock:
            cancel = self._active[row.run_id].cancel
        try:
            self._execute(row, cancel)
        except Exception as exc:  # fails this run only, whatever it was
            _log.warning("biofed run %s failed", row.run_id, exc_info=True)
            self._give_up(row.run_id, failure_reason(exc))
        finally:
            with self._lock:
                self._active.pop(row.run_id, None)
            self._wake.set()

    def _give_up(self, run_id: str, reason: str) -> None:
        with self._lock:
            self._given_up.add(run_id)
        try:
            self._fail(run_id, reason)
        except Exception:
            _log.exception("biofed run %s: cannot record its failure", run_id)
