"""The privacy ledger kept in memory (a simulation's virtual sites): the same caps, refusals,
composition and audit events as the file ledger, no file anywhere, one database per ledger,
and check-and-record still serialised across threads."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from biofed.core import PrivacyBudgetExceeded
from biofed.governance import LEDGER_FILE, PrivacyLedger

Events = list[tuple[str, dict[str, Any]]]


def _memory(events: Events | None = None) -> PrivacyLedger:
    def audit(event: str, data: Mapping[str, Any]) -> None:
        if events is not None:
            events.append((event, dict(data)))

    return PrivacyLedger(":memory:", audit=audit, clock=lambda: 100.0)


def _history(ledger: PrivacyLedger, events: Events) -> list[Any]:
    ledger.set_cap("icu", 2.0, 1e-5)
    ledger.lower_cap("icu", 3.0, 1e-5, source="node.toml")  # kept: caps only go down
    ledger.reserve("icu", "run-1", 1, 0.5, 1e-6, mechanism='{"steps": 1}', guarantee="exact")
    ledger.reserve("icu", "run-1", 1, 0.5, 1e-6, mechanism='{"steps": 1}', guarantee="exact")
    ledger.reserve("icu", "run-2", 1, 1.0, 1e-6, guarantee="heuristic", trust="t")
    with pytest.raises(PrivacyBudgetExceeded, match="site cap"):
        ledger.reserve("icu", "run-2", 2, 1.6, 1e-6)
    return [
        ledger.datasets(),
        ledger.spent("icu"),
        ledger.mechanisms("icu", "run-1"),
        json.dumps(events, sort_keys=True),
    ]


def test_memory_ledger_behaves_like_the_file_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    file_events: Events = []
    memory_events: Events = []

    def audit(event: str, data: Mapping[str, Any]) -> None:
        file_events.append((event, dict(data)))

    on_disk = PrivacyLedger(tmp_path / "node" / LEDGER_FILE, audit=audit, clock=lambda: 100.0)
    in_memory = _memory(memory_events)
    assert in_memory.is_in_memory
    assert not on_disk.is_in_memory
    assert _history(in_memory, memory_events) == _history(on_disk, file_events)
    assert [e for e, _ in memory_events] == [
        "budget.cap_set",
        "budget.cap_kept",
        "budget.debited",
        "budget.debited",
        "budget.debited",
        "budget.refused",
    ]
    # Nothing of the memory ledger reached the disk: only the file ledger's folder exists.
    assert sorted(os.listdir(tmp_path)) == ["node"]


def test_in_memory_constructor_and_independent_ledgers() -> None:
    a, b = PrivacyLedger.in_memory(), _memory()
    assert a.is_in_memory
    assert a.datasets() == []
    assert a.spent("icu").cap_epsilon is None
    a.set_cap("icu", 1.0, 1e-5)
    a.reserve("icu", "run-1", 1, 0.4, 1e-6)
    assert b.datasets() == []  # each ledger is its own database
    with pytest.raises(PrivacyBudgetExceeded, match="no cap is set"):
        b.reserve("icu", "run-1", 1, 0.4, 1e-6)
    assert a.spent("icu").spent_epsilon == pytest.approx(0.4)
    a.close()  # the records are gone with the database; the ledger starts over
    assert a.datasets() == []


def test_composed_reservation_reads_the_memory_history() -> None:
    ledger = _memory()
    ledger.set_cap("icu", 10.0, 1e-5)
    seen: list[dict[int, str]] = []

    def compose(history: Mapping[int, str]) -> tuple[float, float]:
        seen.append(dict(history))
        return 0.5 * (len(history) + 1), 1e-6

    for rnd in (1, 2, 3):
        debit = ledger.reserve_composed("icu", "run-1", rnd, compose, mechanism=f"m{rnd}")
    assert seen == [{}, {1: "m1"}, {1: "m1", 2: "m2"}]
    assert debit.epsilon_after == pytest.approx(1.5)


def test_concurrent_threads_never_exceed_a_memory_cap() -> None:
    """Try to overspend: 16 threads each reserve a job of ε = 0.3 against a cap of 1.0."""
    ledger = _memory()
    ledger.set_cap("icu", 1.0, 1e-5)
    start = threading.Barrier(16)
    granted: list[str] = []
    refused: list[str] = []

    def job(i: int) -> None:
        start.wait()
        try:
            ledger.reserve("icu", f"run-{i}", 1, 0.3, 1e-7)
            granted.append(f"run-{i}")
        except PrivacyBudgetExceeded:
            refused.append(f"run-{i}")

    threads = [threading.Thread(target=job, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 3
    assert len(refused) == 13
    status = ledger.spent("icu")
    assert status.spent_epsilon == pytest.approx(0.9)
    assert sorted(j.run_id for j in status.jobs) == sorted(granted)
