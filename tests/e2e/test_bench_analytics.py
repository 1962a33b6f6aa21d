"""``benchmarks/analytics.py --quick``: six node processes over mTLS answer count, KM and
Cox (plain and secure) through the coordinator, and the figures it prints hold — the
federated answers equal the pooled ones, the Cox fit equals lifelines', the C-indices are
those of real models. Timings are the benchmark's business, not this test's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "analytics.py"


@pytest.mark.slow
def test_the_analytics_benchmark_runs_and_its_figures_hold() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
        cwd=SCRIPT.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "analytics"
    assert out["sites"] == 6
    queries = out["queries"]
    assert set(queries) == {f"{k} {m}" for k in ("count", "km", "cox") for m in ("plain", "secure")}
    for label, row in queries.items():
        assert min(row["median_s"], row["pooled_s"]) > 0, label
        assert row["passes"] >= 1, label
        assert row["instructions"] >= 6 * row["passes"], label
        assert row["replies"] == row["instructions"], label
        assert min(row["sent_bytes"], row["reply_bytes"]) > 0, label
    # every query also finished as a submitted analysis job (Cox with its relaxed rules)
    for label in queries:
        assert queries[label]["submitted_job_median_s"] > 0, label
    # secure passes are four SecAgg+ stages each, and the coordinator never saw a plain array
    assert queries["cox secure"]["instructions"] == 4 * 6 * queries["cox secure"]["passes"]
    assert set(out["federated_counts"].values()) == {out["pooled_count"]}
    accuracy = out["accuracy"]
    assert accuracy["km_max_abs"] < 1e-9
    assert accuracy["km_secure_max_abs"] < 1e-6  # SecAgg+ sums to its quantisation step
    assert accuracy["cox_coef_rel"] < 1e-6
    assert accuracy["cox_se_rel"] < 1e-6
    assert accuracy["cox_iterations"] <= 10
    assert accuracy["cox_secure_converged"]
    assert accuracy["cox_secure_iterations"] <= 10
    assert accuracy["cox_secure_grid_coef_rel"] < 1e-6
    assert (
        queries["cox plain"]["passes"] == accuracy["cox_iterations"] + 1
    )  # the times pass, then Newton
    c_index = out["c_index"]
    assert set(c_index) == {"fedavg", "exact federated cox", "lifelines pooled"}
    for figures in c_index.values():
        assert 0.5 < figures["pooled_test"] < 1
        assert 0.5 < figures["mean_of_sites"] < 1
    # the exact federated model is lifelines' model: the same ranking of the test rows
    exact, pooled = c_index["exact federated cox"], c_index["lifelines pooled"]
    assert exact["pooled_test"] == pytest.approx(pooled["pooled_test"], abs=1e-9)
    assert exact["mean_of_sites"] == pytest.approx(pooled["mean_of_sites"], abs=1e-9)
    assert out["target"]["cox_plain_s"] == queries["cox plain"]["median_s"]
    assert len(out["cox_profile"]) == queries["cox plain"]["passes"]
