"""Suite-wide hooks: start the longest test modules first on every xdist worker.

``make test`` runs ``pytest -n 2 --dist worksteal``. Work stealing hands each worker one
contiguous half of the collected items and lets an idle worker take the back half of the
other's queue, so the suite's wall time is about half its total *unless* a long test starts
late: a 150 s demo that begins when the other worker has 30 s of work left leaves that worker
idle for two minutes. This hook lays the items out so that each worker's half begins with an
even share of the long modules (longest first, each to the half with the least estimated work
so far) and fills the rest with the other modules in their usual order; the stealing that
follows only moves short tests. A module stays in one piece, so its module-scoped fixtures
are still built once. Without xdist (a local ``pytest tests/x``) nothing moves.

The estimates are seconds on an idle 2-core machine; only their order matters, and a module
missing here that has ``slow`` tests counts :data:`SLOW_TEST_S` per slow test.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

#: Estimated seconds of the longest modules (path prefixes, relative to the repository root).
LONGEST_S: dict[str, float] = {
    "tests/cli/test_cli_demo": 120.0,
    "tests/e2e/test_walkthrough.py": 100.0,
    "tests/e2e/test_bench_analytics.py": 30.0,
    "tests/e2e/test_bench_attacks.py": 20.0,
    "tests/e2e/test_readme_analytics.py": 15.0,
    "tests/e2e/test_readme_omop.py": 15.0,
    "tests/e2e/test_bench_contribution.py": 10.0,
}
#: Estimated seconds of a ``slow`` test in a module not named above.
SLOW_TEST_S = 5.0


def _estimate(path: str, items: list[pytest.Item]) -> float:
    for prefix, seconds in LONGEST_S.items():
        if path.startswith(prefix):
            return seconds
    return SLOW_TEST_S * sum(1 for item in items if item.get_closest_marker("slow"))


def _chunk_sizes(total: int, workers: int) -> list[int]:
    """The sizes of the first queues pytest-xdist's worksteal scheduler hands out."""
    sizes = []
    for i in range(workers):
        sizes.append(total // (workers - i))
        total -= sizes[-1]
    return sizes


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or config.getoption("dist", "no") != "worksteal":
        return
    workers = int(workerinput["workercount"])
    if workers < 2:
        return
    modules: dict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        modules[item.nodeid.split("::", 1)[0]].append(item)
    weights = {path: _estimate(path, its) for path, its in modules.items()}
    long_paths = sorted((p for p in modules if weights[p] > 0), key=lambda p: -weights[p])
    lanes: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for path in long_paths:
        lane = min(range(workers), key=lambda i: (load[i], i))
        lanes[lane].extend(modules[path])
        load[lane] += weights[path]
    rest = [item for path, its in modules.items() if weights[path] == 0 for item in its]
    for lane, size in zip(lanes, _chunk_sizes(len(items), workers), strict=True):
        take = max(0, size - len(lane))
        lane.extend(rest[:take])
        del rest[:take]
    lanes[-1].extend(rest)
    items[:] = [item for lane in lanes for item in lane]
