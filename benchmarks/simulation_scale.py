"""Simulation at scale: 10 / 100 / 1,000 virtual sites on each backend.

The built-in numpy logistic regression on generated data (64 rows and 8 features per site,
non-IID), FedAvg, the real round engine and the real site handler (NodeApp), on the
``inprocess``, ``processes`` and ``ray`` backends. For each case, in a fresh Python process
of its own (so peak memory is the case's own):

* start-up: seconds from the call that makes the backend's transport to the first round able
  to start (worker processes or Ray actors started and ready; for Ray it includes starting a
  local Ray instance). Importing biofed is not counted; it is reported as ``import_s``.
* first round: the first training round, in which every site loads its data.
* seconds per round: the median of the later training rounds (evaluation not included).
* peak RSS of the driver and of the workers (the largest, and all together; for Ray the
  actors, and Ray's own daemons apart).

All backends must give the same model for the same seed: the last column compares each
case's model with the in-process one.

    python -u benchmarks/simulation_scale.py [--json] [--quick] [--sites 10,100,1000]
           [--backends inprocess,processes,ray] [--rounds 3] [--workers N]

Progress goes to stderr; the table and the target checks to stdout (``--json``: one JSON
object as the last line).
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import emit, machine, median, parser

_STARTED = time.perf_counter()
HERE = Path(__file__).resolve()
ALL_SITES = (10, 100, 1000)
ALL_BACKENDS = ("inprocess", "processes", "ray")
CASE_TIMEOUT_S = 900
_CASE = "case-result: "


def _peak_rss_mib(pid: int | None = None) -> float | None:
    """Peak resident memory (VmHWM) of ``pid`` (default: this process), MiB."""
    try:
        text = Path(f"/proc/{pid or 'self'}/status").read_text()
    except OSError:
        if pid is None:  # not Linux: getrusage's peak (KiB on Linux, bytes on macOS)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def _other_descendants_rss_mib(exclude: set[int]) -> float | None:
    """Current RSS of this process's other descendants (Ray's daemons), MiB."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0
    for child in psutil.Process().children(recursive=True):
        if child.pid in exclude:
            continue
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def run_case(backend_name: str, sites: int, rounds: int, workers: int | None) -> dict[str, Any]:
    """One case, in this process."""
    t_import = time.perf_counter()
    import numpy as np

    from biofed.coordinator import EngineConfig, RoundEngine
    from biofed.simulation import SYNTHETIC_DATASET, logistic_recipes, make_backend
    from biofed.strategies import FedAvg
    from biofed.tasks import make_task

    import_s = time.perf_counter() - t_import
    task = make_task("logistic_regression", num_features=8)
    params = task.init_parameters(np.random.default_rng(0))

    t0 = time.perf_counter()
    recipes = logistic_recipes(sites, seed=0, rows=64, features=8)
    backend = make_backend(backend_name, workers=None if backend_name == "inprocess" else workers)  # type: ignore[arg-type]
    transport = backend.transport(recipes)
    engine = RoundEngine(
        FedAvg(train_config={"local_steps": 10, "batch_size": 32, "learning_rate": 0.1}),
        transport,
        # one round more than run, so no round evaluates: the timings are training rounds
        EngineConfig(
            rounds=rounds + 1, seed=0, evaluate_every=0, min_nodes=sites, min_replies=sites
        ),
        run_id="scale",
        instruction_config={
            "dataset": SYNTHETIC_DATASET,
            "task": "logistic_regression",
            "task.num_features": 8,
        },
    )
    startup_s = time.perf_counter() - t0
    print(f"  {backend_name}/{sites}: started in {startup_s:.2f} s", file=sys.stderr)

    state = engine.strategy.init_state(params)
    times: list[float] = []
    completed = 0
    for r in range(1, rounds + 1):
        t1 = time.perf_counter()
        params, state, record = engine.run_round(r, params, state)
        times.append(time.perf_counter() - t1)
        completed += record.failed is None and record.num_replies == sites
        print(
            f"  {backend_name}/{sites}: round {r} in {times[-1]:.2f} s "
            f"({record.num_replies} replies{'' if record.failed is None else ', FAILED'})",
            file=sys.stderr,
        )
    pids = list(transport.worker_pids()) if hasattr(transport, "worker_pids") else []
    worker_peaks = [p for p in (_peak_rss_mib(pid) for pid in pids) if p is not None]
    other = _other_descendants_rss_mib(set(pids)) if backend_name == "ray" else None
    t2 = time.perf_counter()
    transport.close()
    close_s = time.perf_counter() - t2
    digest = hashlib.sha256(b"".join(params[k].tobytes() for k in params)).hexdigest()
    return {
        "backend": backend_name,
        "sites": sites,
        "workers": len(pids),
        "import_s": import_s,
        "startup_s": startup_s,
        "first_round_s": times[0],
        "round_s": median(times[1:]) if len(times) > 1 else times[0],
        "rounds_completed": completed,
        "close_s": close_s,
        "driver_peak_rss_mib": _peak_rss_mib(),
        "worker_peak_rss_mib": max(worker_peaks) if worker_peaks else None,
        "workers_peak_rss_total_mib": sum(worker_peaks) if worker_peaks else None,
        "ray_daemons_rss_mib": other,
        "model_sha256": digest[:16],
    }


def _spawn_case(backend: str, sites: int, args: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-u", str(HERE), "--case", f"{backend}:{sites}"]
    cmd += ["--rounds", str(args.rounds)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    print(f"{backend} × {sites} sites …", file=sys.stderr)
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, text=True, timeout=CASE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return {"backend": backend, "sites": sites, "error": f"timed out ({CASE_TIMEOUT_S} s)"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_CASE)]
    if proc.returncode != 0 or not lines:
        return {"backend": backend, "sites": sites, "error": f"exit code {proc.returncode}"}
    return dict(json.loads(lines[-1][len(_CASE) :]))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--quick", action="store_true", help="10 and 100 sites, 2 rounds")
    p.add_argument("--sites", default=None, help="comma-separated site counts")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS))
    p.add_argument("--rounds", type=int, default=None, help="training rounds per case")
    p.add_argument("--workers", type=int, default=None, help="processes / actors (default: CPUs)")
    p.add_argument("--case", default=None, help=argparse_hidden())
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.case:  # one case, in this fresh process: its result is the last stdout line
        backend, sites = args.case.split(":")
        print(_CASE + json.dumps(run_case(backend, int(sites), args.rounds, args.workers)))
        return

    sites_list = (
        [int(s) for s in args.sites.split(",")]
        if args.sites
        else ([10, 100] if args.quick else list(ALL_SITES))
    )
    backends = [b for b in args.backends.split(",") if b]
    try:
        import ray  # noqa: F401
    except ImportError:
        if "ray" in backends:
            print("ray is not installed (pip install '.[ray]'): skipping it", file=sys.stderr)
            backends.remove("ray")
    rows = [_spawn_case(b, n, args) for n in sites_list for b in backends]

    reference = {r["sites"]: r.get("model_sha256") for r in rows if r["backend"] == "inprocess"}
    print(
        f"{'sites':>6} {'backend':>10} {'workers':>7} {'start s':>8} {'1st round s':>11} "
        f"{'s/round':>8} {'driver MiB':>10} {'worker MiB':>10} {'workers MiB':>11} "
        f"{'ray daemons MiB':>15} {'same model':>10}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['sites']:>6} {r['backend']:>10}  ERROR: {r['error']}")
            continue
        ref = reference.get(r["sites"])
        same = "-" if ref is None else ("yes" if r["model_sha256"] == ref else "NO")
        print(
            f"{r['sites']:>6} {r['backend']:>10} {r['workers']:>7} {r['startup_s']:>8.2f} "
            f"{r['first_round_s']:>11.2f} {r['round_s']:>8.3f} "
            f"{_fmt(r['driver_peak_rss_mib'], '.0f'):>10} "
            f"{_fmt(r['worker_peak_rss_mib'], '.0f'):>10} "
            f"{_fmt(r['workers_peak_rss_total_mib'], '.0f'):>11} "
            f"{_fmt(r['ray_daemons_rss_mib'], '.0f'):>15} {same:>10}"
        )

    def find(backend: str, sites: int) -> dict[str, Any] | None:
        for r in rows:
            if r["backend"] == backend and r["sites"] == sites and "error" not in r:
                return r
        return None

    checks: dict[str, Any] = {}
    small = find("inprocess", 100)
    if small is not None:
        checks["inprocess_startup_100_sites_s"] = small["startup_s"]
        checks["inprocess_startup_under_1s"] = small["startup_s"] < 1.0
    if 1000 in sites_list:
        checks["every_backend_completes_1000_site_round"] = all(
            (r := find(b, 1000)) is not None and r["rounds_completed"] >= 1 for b in backends
        )
    ratios: dict[str, float] = {}
    for n in sites_list:
        ray_case, pool_case = find("ray", n), find("processes", n)
        if ray_case and pool_case:
            ratios[f"ray_over_processes_round_{n}"] = ray_case["round_s"] / pool_case["round_s"]
    if "ray_over_processes_round_1000" in ratios:
        checks["ray_within_2x_of_processes_at_1000"] = ratios["ray_over_processes_round_1000"] <= 2
    checks["same_model_on_every_backend"] = all(
        "error" not in r and r["model_sha256"] == reference.get(r["sites"]) for r in rows
    )
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    for key, value in checks.items():
        print(f"{key}: {value if isinstance(value, bool) else f'{value:.3f}'}")
    print("targets: in-process start-up < 1 s at 100 sites; every backend completes a round at")
    print("1,000 sites; Ray's round time within 2x of the process pool's at 1,000 sites")
    print(f"(whole benchmark: {time.perf_counter() - _STARTED:.0f} s)", file=sys.stderr)
    emit(
        {
            "benchmark": "simulation_scale",
            "machine": machine(),
            "rounds": args.rounds,
            "cases": rows,
            "ratios": ratios,
            "checks": checks,
        },
        args.json,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
