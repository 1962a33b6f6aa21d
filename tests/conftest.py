"""Suite-wide hooks: start the longest tests first on every xdist worker.

``make test`` runs ``pytest -n 2 --dist worksteal``. Work stealing hands each worker one
contiguous half of the collected items and lets an idle worker take the back half of the
other's queue, so the suite's wall time is about half its total *unless* a long test starts
late: a 150 s demo that begins when the other worker has 30 s of work left leaves that worker
idle for two minutes. This hook lays the items out so that each worker's half begins with an
even share of the long tests (longest first, each to the half with the least estimated work
so far) and fills the rest with the other tests in their usual order; the stealing that
follows only moves short tests (under ``--dist load`` the layout is harmless). A module is
placed in one piece, so its module-scoped fixtures are still built once, unless
:data:`LONGEST_S` names its tests one by one (tests that share nothing and so may run on
different workers). Without xdist (a local ``pytest tests/x``) nothing moves.

The estimates are seconds on a loaded 2-core machine, from ``--durations``; only their order
matters, and a module not named here counts :data:`SLOW_MODULE_S` if it has ``slow`` tests.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

#: Estimated seconds of the longest tests: a module path, or a test's node id prefix (with
#: ``::``) for a test placed on its own. Paths are relative to the repository root.
LONGEST_S: dict[str, float] = {
    "tests/cli/test_cli_demo.py": 350.0,
    "tests/cli/test_cli_demo_omop.py": 60.0,
    "tests/cli/test_cli_demo": 150.0,  # any other demo module
    "tests/e2e/test_walkthrough.py": 330.0,
    "tests/simulation/test_simulate_agreement.py::test_governed_sites": 230.0,
    "tests/simulation/test_simulate_agreement.py::test_a_job_beyond": 60.0,
    "tests/simulation/test_simulate_agreement.py::test_seeded_dp": 40.0,
    "tests/simulation/test_backends.py": 260.0,  # one Ray instance for the module
    "tests/e2e/test_sim_equals_network.py": 165.0,
    "tests/simulation/test_simulate_job.py::test_ledger_dir": 50.0,
    "tests/simulation/test_simulate_job.py": 120.0,  # the rest share one simulated run
    "tests/e2e/test_bench_attacks.py::test_poisoning": 45.0,
    "tests/e2e/test_bench_attacks.py::test_inversion": 80.0,
    "tests/e2e/test_bench_attacks.py::test_membership": 15.0,
    "tests/e2e/test_readme_omop.py": 75.0,
    "tests/e2e/test_readme_analytics.py": 60.0,
    "tests/attacks/test_atk_inversion.py": 60.0,
    "tests/simulation/test_study_governed.py": 70.0,
    "tests/e2e/test_bench_analytics.py": 50.0,
    "tests/e2e/test_study_job.py::test_a_study_job": 55.0,
    "tests/e2e/test_study_job.py::test_a_gi_bleed": 40.0,
    "tests/simulation/test_analyze_models.py": 45.0,
    "tests/e2e/test_run_isolation.py": 45.0,
    "tests/e2e/test_resume.py": 35.0,
    "tests/e2e/test_audit_truncation.py": 35.0,
    "tests/e2e/test_analysis_network.py": 30.0,
    "tests/e2e/test_node_faults.py": 30.0,
    "tests/simulation/test_attack_study_cohort.py": 25.0,
    "tests/e2e/test_bench_contribution.py": 20.0,
    "tests/attacks/test_atk_membership.py": 20.0,
    "tests/analytics/test_glm.py": 20.0,
    "tests/analytics/test_descriptive.py": 20.0,
}
#: Estimated seconds of a module not named above that has ``slow`` tests (many are short
#: parametrised cases over one consortium: a count per test would overrate them).
SLOW_MODULE_S = 10.0


def _group(nodeid: str) -> str:
    """The unit placed on one worker: the test named in LONGEST_S, else its module."""
    for key in LONGEST_S:
        if "::" in key and nodeid.startswith(key):
            return key
    return nodeid.split("::", 1)[0]


def _estimate(group: str, items: list[pytest.Item]) -> float:
    for key, seconds in LONGEST_S.items():
        if group.startswith(key):
            return seconds
    return SLOW_MODULE_S if any(item.get_closest_marker("slow") for item in items) else 0.0


def _chunk_sizes(total: int, workers: int) -> list[int]:
    """The sizes of the first queues pytest-xdist's worksteal scheduler hands out."""
    sizes = []
    for i in range(workers):
        sizes.append(total // (workers - i))
        total -= sizes[-1]
    return sizes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)  # set on an xdist worker only
    if workerinput is None:  # (a worker's own options say dist = "no", whatever was asked)
        return
    workers = int(workerinput["workercount"])
    if workers < 2:
        return
    groups: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        groups[_group(item.nodeid)].append(item)
    weights = {group: _estimate(group, its) for group, its in groups.items()}
    long_groups = sorted((g for g in groups if weights[g] > 0), key=lambda g: -weights[g])
    lanes: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for group in long_groups:
        lane = min(range(workers), key=lambda i: (load[i], i))
        lanes[lane].extend(groups[group])
        load[lane] += weights[group]
    rest = [item for group, its in groups.items() if weights[group] == 0 for item in its]
    for lane, size in zip(lanes, _chunk_sizes(len(items), workers), strict=True):
        take = max(0, size - len(lane))
        lane.extend(rest[:take])
        del rest[:take]
    lanes[-1].extend(rest)
    items[:] = [item for lane in lanes for item in lane]
