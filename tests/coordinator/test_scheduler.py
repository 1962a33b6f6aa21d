"""The run scheduler: runs fail alone, a bounded number of starts, several runs at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from biofed.coordinator import InMemoryStateStore, RunRow, RunStatus, StateStore, open_store
from biofed.coordinator._scheduler import RunScheduler, failure_reason
from biofed.core import ConfigurationError, PolicyViolation


def _wait(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _fail(store: StateStore) -> Callable[[str, str], None]:
    def fail(run_id: str, reason: str) -> None:
        store.set_run_status(run_id, RunStatus.FAILED, error=reason)

    return fail


def _finish(store: StateStore, row: RunRow) -> None:
    if store.get_run(row.run_id).status is RunStatus.PENDING:  # type: ignore[union-attr]
        store.set_run_status(row.run_id, RunStatus.RUNNING)
    store.set_run_status(row.run_id, RunStatus.FINISHED)


@pytest.fixture
def store() -> Iterator[StateStore]:
    s = InMemoryStateStore()
    yield s
    s.close()


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (MemoryError("Unable to allocate 22.4 GiB"), "internal error: MemoryError: Unable to"),
        (ValueError("bad\nsecond line"), "internal error: ValueError: bad"),
        (KeyError("x"), "internal error: KeyError: 'x'"),
        (ConfigurationError("evaluate_every must be >= 0"), "evaluate_every must be >= 0"),
        (PolicyViolation("no"), "no"),
    ],
)
def test_any_exception_fails_that_run_only(
    store: StateStore, error: BaseException, reason: str
) -> None:
    store.create_run("poison", "{}", "alice")
    store.create_run("good", "{}", "bob")
    executed: list[str] = []

    def execute(row: RunRow, cancel: threading.Event) -> None:
        executed.append(row.run_id)
        if row.run_id == "poison":
            raise error
        _finish(store, row)

    scheduler = RunScheduler(store, execute, _fail(store), max_concurrent_runs=1).start()
    try:
        _wait(lambda: store.get_run("good").status is RunStatus.FINISHED)  # type: ignore[union-attr]
    finally:
        scheduler.stop()
    poison = store.get_run("poison")
    assert poison is not None
    assert poison.status is RunStatus.FAILED
    assert poison.error is not None
    assert poison.error.startswith(reason)
    assert "\n" not in poison.error
    assert executed == ["poison", "good"]


def test_failure_reason_is_one_bounded_line() -> None:
    assert failure_reason(RuntimeError("x" * 2000 + "\ny")) == "internal error: RuntimeError: " + (
        "x" * 470
    )
    assert failure_reason(RuntimeError()) == "internal error: RuntimeError"


def test_a_run_that_keeps_killing_the_process_is_failed_after_its_attempts(
    tmp_path: Path,
) -> None:
    """Three coordinator processes started the run and died (OOM-killed) before a round
    completed: the fourth does not start it again but fails it, and goes on."""
    url = f"sqlite:///{tmp_path}/state.db"
    with open_store(url) as first:
        first.create_run("oom", "{}", "alice")
        first.create_run("next", "{}", "bob")
        first.set_run_status("oom", RunStatus.RUNNING)
        for _ in range(3):  # what three killed processes left behind
            first.start_attempt("oom")
    with open_store(url) as store:
        executed: list[str] = []

        def execute(row: RunRow, cancel: threading.Event) -> None:
            executed.append(row.run_id)
            _finish(store, row)

        scheduler = RunScheduler(store, execute, _fail(store), max_attempts=3).start()
        try:
            _wait(lambda: store.get_run("next").status is RunStatus.FINISHED)  # type: ignore[union-attr]
        finally:
            scheduler.stop()
        oom = store.get_run("oom")
        assert oom is not None
        assert oom.status is RunStatus.FAILED
        assert oom.error == (
            "started 3 times without completing a round (the coordinator stopped or was "
            "killed each time); not started again"
        )
        assert executed == ["next"]


def test_runs_execute_concurrently_up_to_the_limit(store: StateStore) -> None:
    for i in range(5):
        store.create_run(f"run-{i}", "{}", "alice")
    release = threading.Event()
    lock = threading.Lock()
    running: set[str] = set()
    most = [0]

    def execute(row: RunRow, cancel: threading.Event) -> None:
        with lock:
            running.add(row.run_id)
            most[0] = max(most[0], len(running))
        release.wait(10)
        with lock:
            running.discard(row.run_id)
        _finish(store, row)

    scheduler = RunScheduler(store, execute, _fail(store), max_concurrent_runs=2).start()
    try:
        _wait(lambda: len(scheduler.active()) == 2)
        assert scheduler.active() == ["run-0", "run-1"]  # in submission order
        # a run is active once its thread is started; wait until both are inside execute
        # before releasing them (under load the second thread may not have got there yet)
        _wait(lambda: len(running) == 2)
        release.set()
        _wait(lambda: all(r.status is RunStatus.FINISHED for r in store.list_runs()))
    finally:
        scheduler.stop()
    assert most[0] == 2


def test_cancel_reaches_the_executing_run_and_a_queued_run_never_starts(
    store: StateStore,
) -> None:
    store.create_run("busy", "{}", "alice")
    store.create_run("queued", "{}", "alice")
    executed: list[str] = []

    def execute(row: RunRow, cancel: threading.Event) -> None:
        executed.append(row.run_id)
        assert cancel.wait(10)
        store.set_run_status(row.run_id, RunStatus.CANCELLED)

    scheduler = RunScheduler(store, execute, _fail(store), max_concurrent_runs=1).start()
    try:
        _wait(lambda: scheduler.active() == ["busy"])
        assert scheduler.cancel("queued") is False  # the caller records it
        store.set_run_status("queued", RunStatus.CANCELLED)
        assert scheduler.cancel("busy") is True
        _wait(lambda: store.get_run("busy").status is RunStatus.CANCELLED)  # type: ignore[union-attr]
        _wait(lambda: not scheduler.active())
    finally:
        scheduler.stop()
    assert executed == ["busy"]


def test_a_store_error_does_not_stop_the_scheduler(store: StateStore) -> None:
    store.create_run("run-1", "{}", "alice")
    real = store.list_runs
    failures = [2]

    def flaky(statuses: object = None) -> list[RunRow]:
        if failures[0] > 0:
            failures[0] -= 1
            raise OSError("database is locked")
        return real(statuses)  # type: ignore[arg-type]

    store.list_runs = flaky  # type: ignore[method-assign]

    def execute(row: RunRow, cancel: threading.Event) -> None:
        _finish(store, row)

    scheduler = RunScheduler(store, execute, _fail(store), poll_s=0.05).start()
    try:
        _wait(lambda: store.get_run("run-1").status is RunStatus.FINISHED)  # type: ignore[union-attr]
    finally:
        scheduler.stop()


@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_are_validated(store: StateStore, value: object) -> None:
    with pytest.raises(ConfigurationError, match="max_concurrent_runs must be an int >= 1"):
        RunScheduler(store, lambda r, c: None, _fail(store), max_concurrent_runs=value)  # type: ignore[arg-type]
