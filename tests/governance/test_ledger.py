"""The node's privacy-budget ledger: caps, refusals, composition across jobs, idempotent
retries, durability across restarts, and concurrency across threads and processes."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from biofed.core import ConfigurationError, PolicyViolation, PrivacyBudgetExceeded
from biofed.governance._ledger import LEDGER_FILE, BudgetStatus, JobSpend, PrivacyLedger

Events = list[tuple[str, dict[str, Any]]]


def _ledger(tmp_path: Path, events: Events | None = None, now: float = 100.0) -> PrivacyLedger:
    def audit(event: str, data: Mapping[str, Any]) -> None:
        if events is not None:
            events.append((event, dict(data)))

    return PrivacyLedger(tmp_path / "node" / LEDGER_FILE, audit=audit, clock=lambda: now)


def test_cap_is_audited_and_reported(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    assert ledger.datasets() == []
    assert not (tmp_path / "node").exists()  # reading creates nothing
    ledger.set_cap("icu", 3.0, 1e-5)
    ledger.set_cap("icu", 2.0, 1e-5)
    assert events == [
        (
            "budget.cap_set",
            {
                "dataset": "icu",
                "epsilon": 3.0,
                "delta": 1e-5,
                "previous_epsilon": None,
                "previous_delta": None,
                "source": "cli",
            },
        ),
        (
            "budget.cap_lowered",
            {
                "dataset": "icu",
                "epsilon": 2.0,
                "delta": 1e-5,
                "previous_epsilon": 3.0,
                "previous_delta": 1e-5,
                "source": "cli",
            },
        ),
    ]
    assert ledger.datasets() == ["icu"]
    assert ledger.spent("icu") == BudgetStatus(
        dataset="icu",
        cap_epsilon=2.0,
        cap_delta=1e-5,
        spent_epsilon=0.0,
        spent_delta=0.0,
        remaining_epsilon=2.0,
        remaining_delta=1e-5,
        jobs=(),
    )


@pytest.mark.parametrize(
    ("epsilon", "delta", "match"),
    [
        (-1.0, 1e-5, "epsilon cap must be >= 0"),
        (math.inf, 1e-5, "must be finite"),
        (math.nan, 1e-5, "must be finite"),
        (1.0, 1.0, r"delta cap must be in \[0, 1\)"),
        (1.0, -1e-9, "delta cap"),
        (True, 1e-5, "must be a number"),
    ],
)
def test_bad_caps_are_rejected(tmp_path: Path, epsilon: float, delta: float, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        _ledger(tmp_path).set_cap("icu", epsilon, delta)


def test_bad_reserve_arguments_are_rejected_before_touching_the_ledger(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    ledger.set_cap("icu", 1.0, 1e-5)
    events.clear()
    with pytest.raises(ConfigurationError, match="run_id"):
        ledger.reserve("icu", "bad run/id", 1, 0.1, 1e-6)
    with pytest.raises(ConfigurationError, match="round must be an integer"):
        ledger.reserve("icu", "run-1", -1, 0.1, 1e-6)
    with pytest.raises(ConfigurationError, match="round must be an integer"):
        ledger.reserve("icu", "run-1", 1.5, 0.1, 1e-6)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="epsilon_after"):
        ledger.reserve("icu", "run-1", 1, math.nan, 1e-6)
    with pytest.raises(ConfigurationError, match="agreement_cap"):
        ledger.reserve("icu", "run-1", 1, 0.1, 1e-6, agreement_cap=(1.0,))  # type: ignore[arg-type]
    assert events == []
    assert ledger.spent("icu").jobs == ()


def test_reserve_without_a_cap_is_refused(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    with pytest.raises(PrivacyBudgetExceeded, match="no cap is set"):
        ledger.reserve("icu", "run-1", 1, 0.1, 1e-6)
    assert [e for e, _ in events] == ["budget.refused"]
    status = ledger.spent("icu")
    assert status.cap_epsilon is None
    assert status.remaining_epsilon == 0.0


def test_per_round_cumulative_updates_and_refusal_on_epsilon(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    ledger.set_cap("icu", 1.0, 1e-5)
    events.clear()
    d1 = ledger.reserve("icu", "run-1", 1, 0.3, 1e-6)
    d2 = ledger.reserve("icu", "run-1", 2, 0.5, 2e-6)
    assert (d1.epsilon_before, d1.epsilon_after, d1.repeat) == (0.0, 0.3, False)
    assert (d2.epsilon_before, d2.epsilon_after, d2.epsilon_total) == (0.3, 0.5, 0.5)
    assert (d2.delta_before, d2.delta_after, d2.delta_total) == (1e-6, 2e-6, 2e-6)
    assert events[-1] == (
        "budget.debited",
        {
            "dataset": "icu",
            "run_id": "run-1",
            "round": 2,
            "epsilon_job": 0.5,
            "delta_job": 2e-6,
            "epsilon_total": 0.5,
            "delta_total": 2e-6,
            "cap_epsilon": 1.0,
            "cap_delta": 1e-5,
            "repeat": False,
            "guarantee": "unlabelled",  # the caller gave no label: never read as a guarantee
            "trust": "",
        },
    )
    # the cumulative figure replaces the job's spend (it is not added to it)
    assert ledger.spent("icu").spent_epsilon == 0.5
    ledger.reserve("icu", "run-1", 3, 1.0, 3e-6)  # exactly at the cap: allowed
    with pytest.raises(PrivacyBudgetExceeded) as info:
        ledger.reserve("icu", "run-1", 4, 1.2, 4e-6)
    message = str(info.value)
    for part in ("'icu'", "cap ε=1", "spent ε=1", "ε=1.2", "run 'run-1' round 4"):
        assert part in message, message
    assert isinstance(info.value, PolicyViolation)
    event, data = events[-1]
    assert event == "budget.refused"
    assert data["epsilon_job_requested"] == 1.2
    assert data["epsilon_spent"] == 1.0
    status = ledger.spent("icu")
    assert status.jobs == (
        JobSpend(run_id="run-1", epsilon=1.0, delta=3e-6, rounds=3, last_round=3),
    )
    assert status.remaining_epsilon == 0.0


def test_refusal_on_delta(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.set_cap("icu", 10.0, 1e-5)
    ledger.reserve("icu", "run-1", 1, 1.0, 6e-6)
    with pytest.raises(PrivacyBudgetExceeded, match="δ=1e-05"):
        ledger.reserve("icu", "run-2", 1, 1.0, 6e-6)
    assert ledger.spent("icu").spent_delta == 6e-6


def test_agreement_cap_tighter_than_the_site_cap(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    ledger.set_cap("icu", 8.0, 1e-5)
    d = ledger.reserve("icu", "run-1", 1, 1.5, 1e-6, agreement_cap=(2.0, 1e-4))
    assert (d.cap_epsilon, d.cap_delta) == (2.0, 1e-5)  # component-wise minimum
    with pytest.raises(PrivacyBudgetExceeded, match="limited by the study agreement"):
        ledger.reserve("icu", "run-1", 2, 2.5, 1e-6, agreement_cap=(2.0, 1e-4))
    assert events[-1][1]["cap_epsilon"] == 2.0
    # a looser agreement never raises the site's cap
    with pytest.raises(PrivacyBudgetExceeded, match="site cap"):
        ledger.reserve("icu", "run-2", 1, 7.0, 1e-6, agreement_cap=(100.0, 0.5))
    assert ledger.spent("icu").spent_epsilon == 1.5


def test_basic_composition_across_jobs(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.set_cap("icu", 3.0, 1e-5)
    ledger.set_cap("cardio", 1.0, 1e-5)
    ledger.reserve("icu", "run-a", 1, 0.5, 1e-6)
    ledger.reserve("icu", "run-b", 1, 0.75, 2e-6)
    ledger.reserve("icu", "run-a", 2, 1.0, 1e-6)
    d = ledger.reserve("icu", "run-b", 2, 1.5, 3e-6)
    assert (d.epsilon_total, d.delta_total) == (2.5, 4e-6)  # Σ job ε, Σ job δ
    ledger.reserve("cardio", "run-a", 1, 0.9, 1e-6)  # another dataset, its own budget
    with pytest.raises(PrivacyBudgetExceeded):
        ledger.reserve("icu", "run-c", 1, 0.6, 1e-6)  # 2.5 + 0.6 > 3
    ledger.reserve("icu", "run-c", 1, 0.5, 1e-6)  # 2.5 + 0.5 == 3
    status = ledger.spent("icu")
    assert [j.run_id for j in status.jobs] == ["run-a", "run-b", "run-c"]
    assert status.spent_epsilon == 3.0
    assert status.spent_delta == pytest.approx(5e-6)
    assert ledger.datasets() == ["cardio", "icu"]
    assert ledger.spent("cardio").spent_epsilon == 0.9


def test_re_reserving_a_round_is_idempotent_and_never_decreases(tmp_path: Path) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    ledger.set_cap("icu", 2.0, 1e-5)
    ledger.reserve("icu", "run-1", 1, 0.4, 1e-6)
    again = ledger.reserve("icu", "run-1", 1, 0.4, 1e-6)
    assert again.repeat
    assert (again.epsilon_after, again.epsilon_total) == (0.4, 0.4)
    assert events[-1][1]["repeat"] is True
    ledger.reserve("icu", "run-1", 1, 0.6, 1e-6)  # a larger figure for the same round: max
    lower = ledger.reserve("icu", "run-1", 1, 0.2, 5e-7)  # smaller: spend stays
    assert lower.repeat
    assert (lower.epsilon_after, lower.delta_after) == (0.6, 1e-6)
    status = ledger.spent("icu")
    assert status.jobs == (
        JobSpend(run_id="run-1", epsilon=0.6, delta=1e-6, rounds=1, last_round=1),
    )
    with sqlite3.connect(ledger.path) as db:
        rows = db.execute("SELECT round, epsilon_before, epsilon_after FROM debits").fetchall()
    assert rows == [(1, 0.0, 0.4), (1, 0.4, 0.6)]  # append-only history, no double count


def test_spend_survives_a_crash_after_reserve(tmp_path: Path) -> None:
    path = tmp_path / "node" / LEDGER_FILE
    PrivacyLedger(path).set_cap("icu", 1.0, 1e-5)
    # a separate process reserves and dies at once, without any clean-up
    script = (
        "import os, sys\n"
        "from biofed.governance._ledger import PrivacyLedger\n"
        "PrivacyLedger(sys.argv[1]).reserve('icu', 'run-1', 1, 0.7, 1e-6)\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    reopened = PrivacyLedger(path)
    assert reopened.spent("icu").spent_epsilon == 0.7
    with pytest.raises(PrivacyBudgetExceeded):
        reopened.reserve("icu", "run-2", 1, 0.5, 1e-6)
    assert reopened.reserve("icu", "run-1", 1, 0.7, 1e-6).repeat  # the retried round


def test_not_a_ledger_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(ConfigurationError, match="privacy ledger"):
        PrivacyLedger(junk).set_cap("icu", 1.0, 1e-5)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigurationError, match="not a biofed privacy ledger"):
        PrivacyLedger(other).datasets()


def test_wal_mode(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    ledger.set_cap("icu", 1.0, 1e-5)
    with sqlite3.connect(ledger.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _spend_until_refused(ledger: PrivacyLedger, run_id: str, step: float) -> int:
    """Reserve rounds of ``step`` each until refused; return the rounds granted."""
    granted = 0
    while True:
        try:
            ledger.reserve("icu", run_id, granted + 1, step * (granted + 1), 0.0)
        except PrivacyBudgetExceeded:
            return granted
        granted += 1


def test_concurrent_threads_never_exceed_the_cap(tmp_path: Path) -> None:
    events: Events = []
    lock = threading.Lock()

    def audit(event: str, data: Mapping[str, Any]) -> None:
        with lock:
            events.append((event, dict(data)))

    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, audit=audit)
    ledger.set_cap("icu", 2.0, 1e-5)
    granted: dict[str, int] = {}

    def worker(run_id: str) -> None:
        granted[run_id] = _spend_until_refused(ledger, run_id, 0.125)

    threads = [threading.Thread(target=worker, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = ledger.spent("icu")
    assert sum(granted.values()) == 16  # 2.0 / 0.125: exactly the cap, never more
    assert status.spent_epsilon == 2.0
    assert {j.run_id: j.rounds for j in status.jobs} == {k: v for k, v in granted.items() if v}
    debited = [d for e, d in events if e == "budget.debited"]
    assert len(debited) == 16
    assert max(d["epsilon_total"] for d in debited) == 2.0


_PROCESS_WORKER = """
import sys
from biofed.core import PrivacyBudgetExceeded
from biofed.governance._ledger import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
granted = 0
while True:
    try:
        ledger.reserve("icu", sys.argv[2], granted + 1, 0.125 * (granted + 1), 0.0)
    except PrivacyBudgetExceeded:
        break
    granted += 1
print(granted)
"""


def test_concurrent_processes_never_exceed_the_cap(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger(path)
    ledger.set_cap("icu", 3.0, 1e-5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_WORKER, str(path), f"proc-{i}"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    # and two threads in this process at the same time
    granted: dict[str, int] = {}

    def worker(run_id: str) -> None:
        granted[run_id] = _spend_until_refused(ledger, run_id, 0.125)

    threads = [threading.Thread(target=worker, args=(f"thread-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        granted[p.args[-1]] = int(stdout.strip())  # type: ignore[index]
    assert sum(granted.values()) == 24  # 3.0 / 0.125
    assert ledger.spent("icu").spent_epsilon == 3.0


def test_mechanisms_are_kept_with_debits_and_a_format_1_ledger_is_upgraded(
    tmp_path: Path,
) -> None:
    ledger = _ledger(tmp_path)
    ledger.set_cap("d", 5.0, 1e-4)
    ledger.reserve("d", "r1", 1, 0.5, 1e-5, mechanism='{"steps": 10}')
    ledger.reserve("d", "r1", 2, 0.9, 1e-5)  # a round without a mechanism is left out
    ledger.reserve("d", "r2", 1, 0.4, 1e-5, mechanism='{"steps": 3}')
    assert ledger.mechanisms("d", "r1") == {1: '{"steps": 10}'}
    assert ledger.mechanisms("d", "r2") == {1: '{"steps": 3}'}
    assert ledger.mechanisms("other", "r1") == {}

    old = tmp_path / "old.db"  # a ledger written by the first format (no mechanism column)
    with sqlite3.connect(old) as db:
        db.executescript(
            "CREATE TABLE caps (dataset TEXT PRIMARY KEY, epsilon REAL, delta REAL, "
            "updated_at REAL);"
            "CREATE TABLE jobs (dataset TEXT, run_id TEXT, epsilon REAL, delta REAL, "
            "started_at REAL, updated_at REAL, PRIMARY KEY (dataset, run_id));"
            "CREATE TABLE debits (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT, "
            "run_id TEXT, round INTEGER, epsilon_before REAL, epsilon_after REAL, "
            "delta_before REAL, delta_after REAL, at REAL);"
            "INSERT INTO caps VALUES ('d', 2.0, 1e-5, 0);"
            "INSERT INTO jobs VALUES ('d', 'r', 0.5, 1e-5, 0, 0);"
            "INSERT INTO debits (dataset, run_id, round, epsilon_before, epsilon_after, "
            "delta_before, delta_after, at) VALUES ('d', 'r', 1, 0, 0.5, 0, 1e-5, 0);"
            f"PRAGMA application_id={0x62666C67}; PRAGMA user_version=1;"
        )
    upgraded = PrivacyLedger(old)
    assert upgraded.spent("d").spent_epsilon == 0.5  # nothing lost
    upgraded.reserve("d", "r", 2, 0.8, 1e-5, mechanism="{}")
    assert upgraded.mechanisms("d", "r") == {2: "{}"}


def test_debits_keep_their_label_and_a_job_is_as_good_as_its_weakest_round(
    tmp_path: Path,
) -> None:
    events: Events = []
    ledger = _ledger(tmp_path, events)
    ledger.set_cap("d", 5.0, 1e-4)
    trust = "trusts the coordinator to add the noise"
    debit = ledger.reserve("d", "r1", 1, 0.5, 1e-5, guarantee="exact", trust=trust)
    assert (debit.guarantee, debit.trust) == ("exact", trust)
    assert events[-1][1]["guarantee"] == "exact"
    assert events[-1][1]["trust"] == trust
    assert ledger.spent("d").jobs[0].guarantee == "exact"
    ledger.reserve("d", "r1", 2, 0.9, 1e-5, guarantee="heuristic")
    assert ledger.spent("d").jobs[0].guarantee == "heuristic"
    ledger.reserve("d", "r2", 1, 0.4, 1e-5, guarantee="bounded")
    assert ledger.spent("d").jobs[1].guarantee == "bounded"
    with pytest.raises(ConfigurationError, match="guarantee must be one of"):
        ledger.reserve("d", "r3", 1, 0.1, 1e-5, guarantee="probably")


def test_a_format_2_ledger_is_upgraded_and_its_old_rows_read_unlabelled(tmp_path: Path) -> None:
    old = tmp_path / "old.db"  # format 2: mechanisms, but no labels
    with sqlite3.connect(old) as db:
        db.executescript(
            "CREATE TABLE caps (dataset TEXT PRIMARY KEY, epsilon REAL, delta REAL, "
            "updated_at REAL);"
            "CREATE TABLE jobs (dataset TEXT, run_id TEXT, epsilon REAL, delta REAL, "
            "started_at REAL, updated_at REAL, PRIMARY KEY (dataset, run_id));"
            "CREATE TABLE debits (id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT, "
            "run_id TEXT, round INTEGER, epsilon_before REAL, epsilon_after REAL, "
            "delta_before REAL, delta_after REAL, at REAL, mechanism TEXT);"
            "INSERT INTO caps VALUES ('d', 2.0, 1e-5, 0);"
            "INSERT INTO jobs VALUES ('d', 'r', 0.5, 1e-5, 0, 0);"
            "INSERT INTO debits (dataset, run_id, round, epsilon_before, epsilon_after, "
            "delta_before, delta_after, at, mechanism) VALUES ('d', 'r', 1, 0, 0.5, 0, 1e-5, 0, "
            "'{}');"
            f"PRAGMA application_id={0x62666C67}; PRAGMA user_version=2;"
        )
    upgraded = PrivacyLedger(old)
    assert upgraded.spent("d").jobs[0].guarantee == "unlabelled"
    upgraded.reserve("d", "r", 2, 0.8, 1e-5, mechanism="{}", guarantee="exact")
    assert upgraded.spent("d").jobs[0].guarantee == "unlabelled"  # round 1 still is
    assert upgraded.mechanisms("d", "r") == {1: "{}", 2: "{}"}
