"""``benchmarks/contribution.py --quick``: every measure runs on real Fed-TCGA-BRCA rounds of
6 to 50 virtual sites and its figures are those of the real measures — exact Shapley is its
own reference, the samplers rank the six real sites as exact Shapley does, and the cost
ratios are finite and printed. The cost target itself is the benchmark's business (a timing
under a loaded machine is no test)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "contribution.py"


@pytest.mark.slow
def test_the_contribution_benchmark_runs_and_its_figures_hold() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=SCRIPT.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "contribution"
    sizes = {s["n"]: s for s in out["sizes"]}
    assert set(sizes) == {6, 10, 20, 50}
    six = sizes[6]["methods"]
    assert six["shapley"]["spearman"] == 1.0
    assert six["shapley"]["mae"] == 0.0
    assert six["shapley"]["evaluations"] == 64
    for method in ("tmc_shapley", "gtg_shapley"):
        assert six[method]["spearman"] >= 0.9, (method, six[method])
        assert six[method]["mae"] <= 0.10, (method, six[method])
    ratio = out["target"]["gtg_ratio"]
    assert math.isfinite(ratio)
    assert ratio > 0
    assert "GTG-Shapley at n = 20" in done.stdout
