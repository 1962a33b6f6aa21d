"""Contract suite for StateStore implementations, plus what only the SQL store can show.

Every test that takes the ``store`` fixture runs against the in-memory store, the SQLite store
and (when ``BIOFED_TEST_POSTGRES_URL`` names a scratch database) the PostgreSQL store.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import biofed.coordinator._store_sql as store_sql
from biofed.coordinator import RoundRecord
from biofed.coordinator._checkpoint import write_checkpoint
from biofed.coordinator._records import RunEvent
from biofed.coordinator._store import (
    Checkpoint,
    EventRow,
    NodeRow,
    RunStatus,
    StateStore,
    open_store,
)
from biofed.coordinator._store_memory import InMemoryStateStore
from biofed.coordinator._store_sql import SqlStateStore
from biofed.core import ConfigurationError, ParameterSet, PayloadError, ProtocolError

PG_URL = os.environ.get("BIOFED_TEST_POSTGRES_URL")


class Clock:
    """A wall clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.now += 1.0
            return self.now


def make_memory(tmp_path: Path, clock: Clock) -> StateStore:
    return InMemoryStateStore(clock=clock)


def make_sqlite(tmp_path: Path, clock: Clock) -> StateStore:
    return SqlStateStore(f"sqlite:///{tmp_path}/state.db", tmp_path / "ckpt", clock=clock)


def _worker_database() -> str:
    """A database of this test process's own (pytest-xdist workers run at the same time and
    each test starts by dropping the tables)."""
    assert PG_URL is not None
    url = sa.make_url(PG_URL)
    name = f"biofed_test_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
        if exists.first() is None:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def make_postgres(tmp_path: Path, clock: Clock) -> StateStore:
    url = _worker_database()
    engine = sa.create_engine(url)
    store_sql.METADATA.drop_all(engine)
    engine.dispose()
    return SqlStateStore(url, tmp_path / "ckpt", clock=clock)


BACKENDS = [
    pytest.param(make_memory, id="memory"),
    pytest.param(make_sqlite, id="sqlite"),
    pytest.param(
        make_postgres,
        id="postgres",
        marks=pytest.mark.skipif(
            PG_URL is None, reason="set BIOFED_TEST_POSTGRES_URL to a scratch PostgreSQL database"
        ),
    ),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    factory: Callable[[Path, Clock], StateStore] = request.param
    s = factory(tmp_path, Clock())
    yield s
    s.close()


SPEC = '{"rounds":3,"strategy":"fedavg"}'


def params(round: int) -> ParameterSet:
    return ParameterSet(
        {
            "layer.w": np.arange(6, dtype=np.float32).reshape(2, 3) + round,
            "layer.b": np.array([round], dtype=np.float64),
            "steps": np.array(round, dtype=np.int64),
            "mask": np.array([True, False, True]),
        }
    )


def checkpoint(run_id: str, round: int) -> Checkpoint:
    return Checkpoint(
        run_id=run_id,
        round=round,
        parameters=params(round),
        state={
            "momentum": ParameterSet({"layer.w": np.full((2, 3), 0.5 * round, np.float32)}),
            "control": ParameterSet({"c": np.zeros(0, np.float16)}),
            "empty": ParameterSet({}),
        },
    )


def record(round: int, **kwargs: object) -> RoundRecord:
    return RoundRecord(
        round=round,
        num_selected=3,
        num_replies=2,
        num_rejected=1,
        train_metrics={"loss": 1.0 / round},
        **kwargs,  # type: ignore[arg-type]
    )


def complete(store: StateStore, run_id: str, round: int, **kwargs: object) -> None:
    store.complete_round(run_id, record(round, **kwargs), checkpoint(run_id, round))


# Runs ----------------------------------------------------------------------------------------
def test_create_and_get_run(store: StateStore) -> None:
    created = store.create_run("run-1", SPEC, "alice")
    got = store.get_run("run-1")
    assert got == created
    assert got.status is RunStatus.PENDING
    assert (got.spec, got.owner, got.completed_rounds, got.error) == (SPEC, "alice", 0, None)
    assert got.created_at == got.updated_at > 0
    assert store.get_run("nope") is None


def test_duplicate_run_is_refused(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    with pytest.raises(ConfigurationError, match="already exists"):
        store.create_run("run-1", SPEC, "bob")
    assert store.get_run("run-1").owner == "alice"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("run_id", "spec", "owner"),
    [("bad id", SPEC, "alice"), ("run-1", "{not json", "alice"), ("run-1", SPEC, "")],
)
def test_create_run_validates(store: StateStore, run_id: str, spec: str, owner: str) -> None:
    with pytest.raises(ConfigurationError):
        store.create_run(run_id, spec, owner)
    assert store.list_runs() == []


def test_list_runs_in_creation_order_and_by_status(store: StateStore) -> None:
    for run_id in ("b", "a", "c"):
        store.create_run(run_id, SPEC, "alice")
    store.set_run_status("a", RunStatus.RUNNING)
    store.set_run_status("c", "finished")
    assert [r.run_id for r in store.list_runs()] == ["b", "a", "c"]
    unfinished = store.list_runs([RunStatus.PENDING, RunStatus.RUNNING])
    assert [r.run_id for r in unfinished] == ["b", "a"]
    assert [r.run_id for r in store.list_runs(["finished"])] == ["c"]
    assert store.list_runs([]) == []
    with pytest.raises(ConfigurationError, match="run status"):
        store.list_runs(["paused"])


def test_status_lifecycle(store: StateStore) -> None:
    created = store.create_run("run-1", SPEC, "alice")
    running = store.set_run_status("run-1", RunStatus.RUNNING)
    assert running.status is RunStatus.RUNNING
    assert running.updated_at > created.updated_at
    assert running.created_at == created.created_at
    failed = store.set_run_status("run-1", RunStatus.FAILED, error="3 rounds failed in a row")
    assert failed == store.get_run("run-1")
    assert failed.error == "3 rounds failed in a row"
    assert failed.status.is_terminal


@pytest.mark.parametrize("final", [s for s in RunStatus if s.is_terminal])
def test_terminal_status_is_final(store: StateStore, final: RunStatus) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.set_run_status("run-1", final)
    for status in RunStatus:
        with pytest.raises(ProtocolError, match="final"):
            store.set_run_status("run-1", status)
    with pytest.raises(ProtocolError):
        complete(store, "run-1", 1)
    assert store.get_run("run-1").status is final  # type: ignore[union-attr]


def test_run_status_enum() -> None:
    assert [s.is_terminal for s in RunStatus] == [False, False, True, True, True, True]
    assert [s.value for s in RunStatus if s.has_result] == ["finished", "finished_with_failures"]
    assert RunStatus("running") is RunStatus.RUNNING
    assert RunStatus.RUNNING.value == "running"
    assert isinstance(RunStatus.RUNNING, str)


def test_round_event_commits_with_the_round(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.append_event("run-1", round=1, kind="round_started", message="3 sites")
    done = RunEvent(round=1, kind="round_completed", message="2/3 replies")
    row = store.complete_round("run-1", record(1), checkpoint("run-1", 1), done)
    events = store.events("run-1")
    assert [(e.seq, e.kind, e.message) for e in events] == [
        (1, "round_started", "3 sites"),
        (2, "round_completed", "2/3 replies"),
    ]
    assert events[-1].time == row.completed_at
    with pytest.raises(ConfigurationError, match="event is for round 3"):
        store.complete_round(
            "run-1", record(2), checkpoint("run-1", 2), RunEvent(round=3, kind="x", message="")
        )
    assert store.get_run("run-1").completed_rounds == 1  # type: ignore[union-attr]
    assert len(store.events("run-1")) == 2


def test_attempts_count_starts_until_a_round_completes(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    assert store.get_run("run-1").attempts == 0  # type: ignore[union-attr]
    assert store.start_attempt("run-1") == 1
    assert store.start_attempt("run-1") == 2
    assert store.get_run("run-1").attempts == 2  # type: ignore[union-attr]
    complete(store, "run-1", 1)
    assert store.get_run("run-1").attempts == 0  # type: ignore[union-attr]
    assert store.start_attempt("run-1") == 1
    store.set_run_status("run-1", RunStatus.FAILED, error="x")
    with pytest.raises(ProtocolError, match="cannot start"):
        store.start_attempt("run-1")
    with pytest.raises(ProtocolError):
        store.start_attempt("no-such-run")


def test_a_crash_inside_the_round_transaction_leaves_no_part_of_the_round(
    store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the parts of a round commit (injected as an exception in the middle
    of the backend's commit) leaves the whole previous round and nothing of the new one:
    no round row, no checkpoint, no event."""
    store.create_run("run-1", SPEC, "alice")
    first = RunEvent(round=1, kind="round_completed", message="round 1")
    store.complete_round("run-1", record(1), checkpoint("run-1", 1), first)
    target = store_sql if isinstance(store, SqlStateStore) else None

    def crash(*args: object, **kwargs: object) -> object:
        raise KeyboardInterrupt("simulated kill between the round row and its event")

    if target is not None:
        monkeypatch.setattr(f"{store_sql.__name__}._insert_event", crash)
    else:
        monkeypatch.setattr(store, "_append_event", crash)
    second = RunEvent(round=2, kind="round_completed", message="round 2")
    with pytest.raises(KeyboardInterrupt):
        store.complete_round("run-1", record(2), checkpoint("run-1", 2), second)
    monkeypatch.undo()
    run = store.get_run("run-1")
    assert run is not None
    assert run.completed_rounds == 1
    assert [r.round for r in store.rounds("run-1")] == [1]
    assert store.latest_checkpoint("run-1") == checkpoint("run-1", 1)
    assert [e.message for e in store.events("run-1")] == ["round 1"]
    store.complete_round("run-1", record(2), checkpoint("run-1", 2), second)  # the redo
    assert [e.message for e in store.events("run-1")] == ["round 1", "round 2"]


def test_unknown_run_is_a_protocol_error(store: StateStore) -> None:
    with pytest.raises(ProtocolError, match="unknown run"):
        store.set_run_status("ghost", RunStatus.RUNNING)
    with pytest.raises(ProtocolError, match="unknown run"):
        complete(store, "ghost", 1)
    with pytest.raises(ProtocolError, match="unknown run"):
        store.append_event("ghost", round=0, kind="k", message="m")
    for call in (store.rounds, store.latest_checkpoint, store.events):
        with pytest.raises(ProtocolError, match="unknown run"):
            call("ghost")


# Rounds and checkpoints ----------------------------------------------------------------------
def test_rounds_and_latest_checkpoint(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.set_run_status("run-1", RunStatus.RUNNING)
    assert store.latest_checkpoint("run-1") is None
    assert store.rounds("run-1") == []
    for rnd in (1, 2, 3):
        row = store.complete_round("run-1", record(rnd), checkpoint("run-1", rnd))
        assert (row.run_id, row.round, row.record) == ("run-1", rnd, record(rnd))
    run = store.get_run("run-1")
    assert run is not None
    assert run.completed_rounds == 3
    rows = store.rounds("run-1")
    assert [r.round for r in rows] == [1, 2, 3]
    assert [r.record for r in rows] == [record(1), record(2), record(3)]
    assert rows[0].completed_at < rows[1].completed_at < rows[2].completed_at
    assert run.updated_at == rows[-1].completed_at

    latest = store.latest_checkpoint("run-1")
    expected = checkpoint("run-1", 3)
    assert latest == expected
    assert latest is not None
    assert list(latest.parameters) == ["layer.w", "layer.b", "steps", "mask"]
    for name, array in expected.parameters.items():
        assert latest.parameters[name].dtype == array.dtype
        assert latest.parameters[name].shape == array.shape
    assert list(latest.state) == ["momentum", "control", "empty"]
    assert latest.state["control"]["c"].dtype == np.float16
    assert len(latest.state["empty"]) == 0


def test_rounds_must_be_consecutive(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    with pytest.raises(ProtocolError, match="gap"):
        complete(store, "run-1", 2)
    complete(store, "run-1", 1)
    complete(store, "run-1", 2)
    with pytest.raises(ProtocolError, match="replay"):
        complete(store, "run-1", 2)  # replay of the last round
    with pytest.raises(ProtocolError, match="replay"):
        complete(store, "run-1", 1)  # replay of an older one
    with pytest.raises(ProtocolError, match="gap"):
        complete(store, "run-1", 4)
    assert store.get_run("run-1").completed_rounds == 2  # type: ignore[union-attr]
    assert [r.round for r in store.rounds("run-1")] == [1, 2]
    assert store.latest_checkpoint("run-1") == checkpoint("run-1", 2)


def test_record_and_checkpoint_must_agree(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.create_run("run-2", SPEC, "alice")
    with pytest.raises(ConfigurationError):
        store.complete_round("run-1", record(1), checkpoint("run-1", 2))
    with pytest.raises(ConfigurationError):
        store.complete_round("run-1", record(1), checkpoint("run-2", 1))
    assert store.get_run("run-1").completed_rounds == 0  # type: ignore[union-attr]


def test_runs_are_independent(store: StateStore) -> None:
    for run_id in ("a", "b"):
        store.create_run(run_id, SPEC, "alice")
    complete(store, "a", 1)
    complete(store, "a", 2)
    complete(store, "b", 1)
    assert store.latest_checkpoint("a") == checkpoint("a", 2)
    assert store.latest_checkpoint("b") == checkpoint("b", 1)
    assert [r.round for r in store.rounds("b")] == [1]


def test_nan_metrics_and_failed_rounds_survive(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    rec = RoundRecord(
        round=1,
        num_selected=2,
        num_replies=0,
        num_rejected=2,
        eval_metrics={"auc": math.nan, "loss": math.inf},
        node_eval_metrics={"site-a": {"auc": math.nan}, "site-b": {"auc": 0.7}},
        duration_s=0.25,
        failed="0 valid training replies, the run needs 1",
    )
    store.complete_round("run-1", rec, checkpoint("run-1", 1))
    got = store.rounds("run-1")[0].record
    assert math.isnan(got.eval_metrics["auc"])
    assert got.eval_metrics["loss"] == math.inf
    assert math.isnan(got.node_eval_metrics["site-a"]["auc"])
    assert got.node_eval_metrics["site-b"] == {"auc": 0.7}
    assert (got.failed, got.duration_s, got.num_rejected) == (rec.failed, 0.25, 2)


# Events --------------------------------------------------------------------------------------
def test_events_are_numbered_and_filtered(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.create_run("run-2", SPEC, "alice")
    first = store.append_event("run-1", round=0, kind="run_started", message="started")
    assert first.seq == 1
    assert first.node_id is None
    assert first.time > 0
    store.append_event("run-2", round=0, kind="run_started", message="other run")
    for i in range(2, 6):
        row = store.append_event(
            "run-1", round=1, kind="reply_rejected", message=f"bad {i}", node_id="site-a"
        )
        assert row.seq == i
    explicit = store.append_event("run-1", round=2, kind="k", message="m", time=12.5)
    assert (explicit.seq, explicit.time) == (6, 12.5)

    every = store.events("run-1")
    assert [e.seq for e in every] == [1, 2, 3, 4, 5, 6]
    assert every[0] == first
    assert every[1] == EventRow(
        run_id="run-1",
        seq=2,
        time=every[1].time,
        round=1,
        kind="reply_rejected",
        message="bad 2",
        node_id="site-a",
    )
    assert every[1].to_event().node_id == "site-a"
    assert [e.seq for e in store.events("run-1", after_seq=4)] == [5, 6]
    assert [e.seq for e in store.events("run-1", after_seq=1, limit=2)] == [2, 3]
    assert store.events("run-1", after_seq=6) == []
    assert [e.message for e in store.events("run-2")] == ["other run"]


def test_event_arguments_are_validated(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    with pytest.raises(ConfigurationError):
        store.events("run-1", after_seq=-1)
    with pytest.raises(ConfigurationError):
        store.events("run-1", limit=0)
    with pytest.raises(ConfigurationError):
        store.append_event("run-1", round=-1, kind="k", message="m")
    with pytest.raises(ConfigurationError):
        store.append_event("run-1", round=0, kind="", message="m")
    with pytest.raises(ConfigurationError):
        store.append_event("run-1", round=0, kind="k", message="m", node_id="no spaces")
    with pytest.raises(ConfigurationError):
        store.append_event("run-1", round=0, kind="k", message="m", time=math.nan)
    assert store.events("run-1") == []


def test_concurrent_appends_get_unique_consecutive_seqs(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    threads, per_thread = 8, 10
    seqs: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            row = store.append_event("run-1", round=1, kind="k", message=f"{t}/{i}")
            with lock:
                seqs.append(row.seq)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    total = threads * per_thread
    assert sorted(seqs) == list(range(1, total + 1))
    stored = store.events("run-1")
    assert [e.seq for e in stored] == list(range(1, total + 1))
    assert len({e.message for e in stored}) == total


# Nodes ---------------------------------------------------------------------------------------
def test_node_upsert_replaces(store: StateStore) -> None:
    assert store.list_nodes() == []
    b = NodeRow(node_id="site-b", status="online", last_seen=10.0)
    a = NodeRow(
        node_id="site-a",
        status="online",
        last_seen=11.0,
        properties={"dataset": "brca", "n": 120, "gpu": False, "mem_gb": 15.5},
    )
    store.upsert_node(b)
    store.upsert_node(a)
    assert store.list_nodes() == [a, b]
    lost = NodeRow(node_id="site-a", status="lost", last_seen=42.0, properties={"n": 121})
    store.upsert_node(lost)
    assert store.list_nodes() == [lost, b]
    got = store.list_nodes()[1]
    assert got.properties == {}
    assert type(store.list_nodes()[0].properties["n"]) is int


def test_node_row_validates() -> None:
    with pytest.raises(ConfigurationError):
        NodeRow(node_id="site-a", status="gone", last_seen=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        NodeRow(node_id="bad id", status="online", last_seen=1.0)
    with pytest.raises(ConfigurationError):
        NodeRow(node_id="site-a", status="online", last_seen=1.0, properties={"x": math.nan})
    with pytest.raises(ConfigurationError):
        NodeRow(node_id="site-a", status="online", last_seen=1.0, properties={"x": [1]})  # type: ignore[dict-item]


# Lifecycle -----------------------------------------------------------------------------------
def test_closed_store_refuses(store: StateStore) -> None:
    store.create_run("run-1", SPEC, "alice")
    store.close()
    store.close()
    with pytest.raises(ProtocolError, match="closed"):
        store.get_run("run-1")


# SQLite only ---------------------------------------------------------------------------------
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/data/state.db"


def test_sqlite_data_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    url = sqlite_url(tmp_path)
    with open_store(url, clock=clock) as store:
        store.create_run("run-1", SPEC, "alice")
        store.create_run("run-2", SPEC, "bob")
        store.set_run_status("run-1", RunStatus.RUNNING)
        store.set_run_status("run-2", RunStatus.CANCELLED, error="operator")
        complete(store, "run-1", 1)
        complete(store, "run-1", 2, eval_metrics={"auc": math.nan})
        store.append_event("run-1", round=2, kind="no_reply", message="m", node_id="site-a")
        store.upsert_node(NodeRow(node_id="site-a", status="lost", last_seen=3.0))
        before = (
            store.list_runs(),
            store.rounds("run-1"),
            store.events("run-1"),
            store.list_nodes(),
        )

    # A new process: only the URL is known.
    with open_store(url, clock=clock) as store:
        runs, rounds, events, nodes = before
        assert store.list_runs() == runs
        assert [r.run_id for r in store.list_runs([RunStatus.RUNNING])] == ["run-1"]
        after = store.rounds("run-1")
        assert [(r.round, r.completed_at) for r in after] == [
            (r.round, r.completed_at) for r in rounds
        ]
        assert math.isnan(after[1].record.eval_metrics["auc"])
        assert store.events("run-1") == events
        assert store.list_nodes() == nodes
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", 2)
        # The run resumes where it stopped.
        complete(store, "run-1", 3)
        assert store.append_event("run-1", round=3, kind="k", message="m").seq == 2


def _damage(path: Path, page: int, page_size: int = 4096) -> None:
    """Flip every byte of one database page (a disk fault or a bad copy)."""
    data = bytearray(path.read_bytes())
    start = page * page_size
    assert len(data) >= start + page_size, "the database is smaller than expected"
    for i in range(start + 8, start + page_size - 8):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("page", [0, 1, 3])
def test_sqlite_damaged_store_is_refused_at_open(tmp_path: Path, page: int) -> None:
    url = sqlite_url(tmp_path)
    with open_store(url) as store:
        for i in range(30):
            store.create_run(f"run-{i}", SPEC, "alice")
            store.append_event(f"run-{i}", round=0, kind="submitted", message="x" * 200)
    database = tmp_path / "data" / "state.db"
    wal = tmp_path / "data" / "state.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # everything is in the main file
    _damage(database, page)
    with pytest.raises(ConfigurationError) as info:
        open_store(url)
    message = str(info.value)
    assert "\n" not in message
    assert "damaged" in message or "not a database" in message


def test_sqlite_schema_version_is_recorded_checked_and_upgraded(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    engine = sa.create_engine(url)
    with open_store(url):
        pass
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version FROM biofed_schema")).scalar_one() == 2
        conn.execute(sa.text("UPDATE biofed_schema SET version = 99"))
    with pytest.raises(ConfigurationError, match="schema version 99; this biofed knows up to 2"):
        open_store(url)
    # A store from before the version table (schema 1: no runs.attempts) is upgraded.
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE biofed_schema"))
        conn.execute(sa.text("ALTER TABLE runs DROP COLUMN attempts"))
        conn.execute(
            sa.text(
                "INSERT INTO runs (run_id, spec, owner, status, created_at, updated_at, "
                "completed_rounds, last_event_seq) VALUES ('old', '{}', 'a', 'running', 1, 1, 0, 0)"
            )
        )
    engine.dispose()
    with open_store(url) as store:
        assert store.get_run("old").attempts == 0  # type: ignore[union-attr]
        assert store.start_attempt("old") == 1


@pytest.mark.skipif(PG_URL is None, reason="set BIOFED_TEST_POSTGRES_URL")
def test_postgres_schema_1_is_upgraded(tmp_path: Path) -> None:
    """A PostgreSQL store from before the version table (runs.status VARCHAR(16), no
    runs.attempts) takes the new status names after the upgrade."""
    url = _worker_database()
    engine = sa.create_engine(url)
    store_sql.METADATA.drop_all(engine)
    SqlStateStore(url, tmp_path / "ckpt").close()
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE biofed_schema"))
        conn.execute(sa.text("ALTER TABLE runs DROP COLUMN attempts"))
        conn.execute(sa.text("ALTER TABLE runs ALTER COLUMN status TYPE VARCHAR(16)"))
    engine.dispose()
    with SqlStateStore(url, tmp_path / "ckpt") as store:
        store.create_run("run-1", SPEC, "alice")
        store.set_run_status("run-1", RunStatus.FINISHED_WITH_FAILURES)
        assert store.get_run("run-1").status is RunStatus.FINISHED_WITH_FAILURES  # type: ignore[union-attr]


def test_sqlite_uses_wal_and_default_checkpoint_dir(tmp_path: Path) -> None:
    with open_store(sqlite_url(tmp_path)) as store:
        assert isinstance(store, SqlStateStore)
        assert store.checkpoint_dir == tmp_path / "data" / "state.db.checkpoints"
        store.create_run("run-1", SPEC, "alice")
        complete(store, "run-1", 1)
    assert (tmp_path / "data/state.db.checkpoints/run-1/round-000001.safetensors").is_file()
    with sqlite3.connect(tmp_path / "data" / "state.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"runs", "rounds", "events", "nodes", "checkpoints", "biofed_schema"}


def test_sqlite_detects_a_corrupt_checkpoint(tmp_path: Path) -> None:
    with open_store(sqlite_url(tmp_path)) as store:
        assert isinstance(store, SqlStateStore)
        store.create_run("run-1", SPEC, "alice")
        complete(store, "run-1", 1)
        path = store.checkpoint_dir / "run-1" / "round-000001.safetensors"
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF  # one flipped bit in the last tensor
        path.write_bytes(bytes(data))
        with pytest.raises(PayloadError, match="corrupt"):
            store.latest_checkpoint("run-1")
        path.unlink()
        with pytest.raises(PayloadError, match="missing"):
            store.latest_checkpoint("run-1")


def test_sqlite_crash_between_file_and_commit_keeps_previous_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    with open_store(url) as store:
        store.create_run("run-1", SPEC, "alice")
        complete(store, "run-1", 1)
        real_write = write_checkpoint

        def write_then_die(directory: Path, ckpt: Checkpoint) -> object:
            real_write(directory, ckpt)
            raise KeyboardInterrupt("simulated crash after the checkpoint file, before commit")

        monkeypatch.setattr(f"{store_sql.__name__}.write_checkpoint", write_then_die)
        with pytest.raises(KeyboardInterrupt):
            complete(store, "run-1", 2)
        monkeypatch.undo()
        assert isinstance(store, SqlStateStore)
        assert (store.checkpoint_dir / "run-1" / "round-000002.safetensors").is_file()

    with open_store(url) as store:  # restart
        assert store.get_run("run-1").completed_rounds == 1  # type: ignore[union-attr]
        assert [r.round for r in store.rounds("run-1")] == [1]
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", 1)
        # The resumed run redoes round 2; its file replaces the orphan.
        complete(store, "run-1", 2)
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", 2)


def test_sqlite_crash_inside_the_transaction_keeps_previous_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = sqlite_url(tmp_path)
    with open_store(url) as store:
        store.create_run("run-1", SPEC, "alice")
        complete(store, "run-1", 1)

        def broken(record: RoundRecord) -> str:
            raise RuntimeError("simulated failure after completed_rounds was updated")

        monkeypatch.setattr(f"{store_sql.__name__}.round_record_to_json", broken)
        with pytest.raises(RuntimeError):
            complete(store, "run-1", 2)
        monkeypatch.undo()
    with open_store(url) as store:
        run = store.get_run("run-1")
        assert run is not None
        assert run.completed_rounds == 1
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", 1)


KILLED_WRITER = """
import sys
import numpy as np
from biofed.coordinator import RoundRecord
from biofed.coordinator._store import Checkpoint, open_store
from biofed.core import ParameterSet

store = open_store(sys.argv[1])
store.create_run("run-1", "{}", "alice")
for rnd in range(1, 100_000):
    store.complete_round(
        "run-1",
        RoundRecord(round=rnd, num_selected=1, num_replies=1, num_rejected=0),
        Checkpoint(
            run_id="run-1",
            round=rnd,
            parameters=ParameterSet({"w": np.full(50_000, rnd, np.float32)}),
            state={"m": ParameterSet({"w": np.full(10, -rnd, np.int64)})},
        ),
    )
    store.append_event("run-1", round=rnd, kind="round_done", message=str(rnd))
    print(rnd, flush=True)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_sqlite_survives_sigkill_mid_run(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            if int(line) >= 3:
                break
    finally:
        writer.kill()  # SIGKILL: no cleanup runs, possibly mid-transaction or mid-file
        writer.wait(timeout=30)
    with open_store(url) as store:
        run = store.get_run("run-1")
        assert run is not None
        done = run.completed_rounds
        assert done >= 3
        assert [r.round for r in store.rounds("run-1")] == list(range(1, done + 1))
        latest = store.latest_checkpoint("run-1")
        assert latest is not None
        assert latest.round == done
        np.testing.assert_array_equal(latest.parameters["w"], np.full(50_000, done, np.float32))
        assert latest.state["m"]["w"].dtype == np.int64
        assert [e.seq for e in store.events("run-1")] == list(
            range(1, len(store.events("run-1")) + 1)
        )
        # The run goes on from where the store says it stopped.
        complete(store, "run-1", done + 1)
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", done + 1)


def test_sqlite_keeps_the_newest_two_checkpoints(tmp_path: Path) -> None:
    with open_store(sqlite_url(tmp_path)) as store:
        assert isinstance(store, SqlStateStore)
        store.create_run("run-1", SPEC, "alice")
        run_dir = store.checkpoint_dir / "run-1"
        for rnd in range(1, 6):
            complete(store, "run-1", rnd)
            newest = list(range(max(1, rnd - 1), rnd + 1))
            assert sorted(os.listdir(run_dir)) == [f"round-{r:06d}.safetensors" for r in newest]
        # An orphan from an earlier crash is pruned as soon as it is old.
        (run_dir / "round-000002.safetensors").write_bytes(b"orphan")
        (run_dir / ".round-000003.safetensors.x1y2.tmp").write_bytes(b"partial")
        complete(store, "run-1", 6)
        assert sorted(os.listdir(run_dir)) == [
            "round-000005.safetensors",
            "round-000006.safetensors",
        ]
        assert store.latest_checkpoint("run-1") == checkpoint("run-1", 6)
    with sqlite3.connect(tmp_path / "data" / "state.db") as conn:
        rows = conn.execute("SELECT round, path FROM checkpoints ORDER BY round").fetchall()
    assert rows == [(5, "run-1/round-000005.safetensors"), (6, "run-1/round-000006.safetensors")]


# open_store ----------------------------------------------------------------------------------
def test_open_store_memory() -> None:
    assert isinstance(open_store("memory://"), InMemoryStateStore)


@pytest.mark.parametrize(
    "url", ["", "not a url", "sqlite://", "sqlite:///:memory:", "nosuchdb://x/y"]
)
def test_open_store_refuses_bad_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"sqlite:///|memory://"):
        open_store(url, checkpoint_dir=tmp_path)


def test_open_store_needs_checkpoint_dir_for_servers() -> None:
    with pytest.raises(ConfigurationError, match="checkpoint_dir is required") as info:
        open_store("postgresql+psycopg://biofed:s3cret@db.example.org/biofed")
    assert "s3cret" not in str(info.value)


def test_open_store_explicit_checkpoint_dir(tmp_path: Path) -> None:
    with open_store(sqlite_url(tmp_path), checkpoint_dir=tmp_path / "elsewhere") as store:
        assert isinstance(store, SqlStateStore)
        assert store.checkpoint_dir == tmp_path / "elsewhere"
        assert store.checkpoint_dir.is_dir()
