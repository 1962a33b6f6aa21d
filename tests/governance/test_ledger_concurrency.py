"""Two runs on one dataset reserving at the same moment never spend past the cap: one
reservation at a time per dataset, each in one transaction (threads and processes)."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from biofed.core import PrivacyBudgetExceeded
from biofed.governance import LEDGER_FILE, PrivacyLedger


def _hammer(ledger: PrivacyLedger, run_id: str, step: float, rounds: int, out: list[float]) -> None:
    """Reserve ``rounds`` rounds of ``step`` each, composing from the ledger's own history
    inside the transaction (as a node does), until refused."""

    def compose(history: Mapping[int, str]) -> tuple[float, float]:
        return step * (len(history) + 1), 0.0

    for rnd in range(1, rounds + 1):
        try:
            debit = ledger.reserve_composed(
                "icu", run_id, rnd, compose, mechanism=f'{{"step": {step}}}'
            )
        except PrivacyBudgetExceeded:
            return
        out.append(debit.epsilon_total)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    cap=st.floats(min_value=0.5, max_value=5.0),
    steps=st.lists(st.floats(min_value=0.01, max_value=1.0), min_size=2, max_size=4),
)
def test_threads_reserving_at_once_never_pass_the_cap(
    tmp_path_factory: object, cap: float, steps: list[float]
) -> None:
    folder = tmp_path_factory.mktemp("ledger")  # type: ignore[attr-defined]
    ledger = PrivacyLedger(folder / LEDGER_FILE)
    ledger.set_cap("icu", cap, 1e-5)
    totals: list[float] = []
    seen: list[float] = []
    done = threading.Event()

    def watch() -> None:  # reads the spend while the runs reserve
        while not done.is_set():
            seen.append(ledger.spent("icu").spent_epsilon)

    barrier = threading.Barrier(len(steps))

    def run(i: int, step: float) -> None:
        barrier.wait()
        _hammer(ledger, f"run-{i}", step, 40, totals)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(steps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    watcher.join()
    status = ledger.spent("icu")
    assert status.spent_epsilon <= cap
    assert all(total <= cap for total in totals)
    assert all(spent <= cap for spent in seen)
    # exact: the ledger's figure is the sum of what each run was granted
    assert math.isclose(status.spent_epsilon, math.fsum(j.epsilon for j in status.jobs))
    for job in status.jobs:
        assert math.isclose(job.epsilon, steps[int(job.run_id[4:])] * job.rounds)


_PROCESS = """
import sys
from biofed.core import PrivacyBudgetExceeded
from biofed.governance import PrivacyLedger
ledger = PrivacyLedger(sys.argv[1])
step = float(sys.argv[3])
for rnd in range(1, 200):
    try:
        ledger.reserve_composed(
            "icu", sys.argv[2], rnd, lambda h: (step * (len(h) + 1), 0.0), mechanism="{}"
        )
    except PrivacyBudgetExceeded:
        break
"""


def test_processes_and_threads_reserving_at_once_never_pass_the_cap(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = PrivacyLedger(path)
    ledger.set_cap("icu", 2.0, 1e-5)
    procs = [
        subprocess.Popen([sys.executable, "-c", _PROCESS, str(path), f"proc-{i}", str(step)])
        for i, step in enumerate((0.07, 0.11))
    ]
    totals: list[float] = []
    threads = [
        threading.Thread(target=_hammer, args=(ledger, f"thread-{i}", step, 200, totals))
        for i, step in enumerate((0.05, 0.13))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0
    status = ledger.spent("icu")
    assert status.spent_epsilon <= 2.0
    assert all(total <= 2.0 for total in totals)
    # every run stopped only because the next step would have passed the cap
    smallest = 0.05
    assert status.spent_epsilon > 2.0 - 0.13 - smallest
