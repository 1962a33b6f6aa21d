"""``benchmarks/attacks.py --quick``: the three tables of issue 15 on a reduced grid (one
seed, 1 of 6 malicious, fewer rounds and cells) run end to end over real simulated
federations, and the figures they print are those of real attacks and defences — an
undefended scaling attack wrecks FedAvg, a robust aggregator holds, the backdoor lands
without defence, gradient inversion recovers a single record from a plain update, and
membership figures are in range. The full run's goals are the benchmark's business."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attacks.py"


def quick(section: str) -> dict:  # type: ignore[type-arg]
    """One table of the quick run, in its own process: the three tables are independent, so
    xdist runs them side by side instead of one 30 s process holding a worker."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", "--only", section],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        cwd=SCRIPT.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "attacks"
    assert out["quick"] is True
    assert set(out["results"]) == {section}
    return out  # type: ignore[no-any-return]


@pytest.mark.slow
def test_poisoning_table_measures_real_attacks_and_defences() -> None:
    out = quick("poisoning")
    tasks = out["results"]["poisoning"]["tasks"]
    assert set(tasks) == {"tcga", "wdbc"}
    for key, task in tasks.items():
        cells = task["by_malicious"]["1"]["cells"]
        no_attack = cells["none"]["none"]["clean_mean"]
        assert no_attack > (0.75 if key == "tcga" else 0.95), key
        for attack, row in cells.items():
            for defence, cell in row.items():
                assert not cell["errors"], (key, attack, defence, cell["errors"])
        # the undefended boosted update wrecks FedAvg; robust aggregation holds the line
        wrecked = cells["scaling"]["none"]["clean_mean"]
        assert wrecked < no_attack - 0.1, key
        assert cells["scaling"]["median"]["clean_mean"] > wrecked + 0.05, key
        best = max(cells["scaling"][d]["clean_mean"] for d in ("multi_krum", "validation"))
        assert best > no_attack - 0.05, key
        # the backdoor lands without defence (ASR measured on triggered clean test rows)
        assert cells["backdoor"]["none"]["asr_mean"] > 0.25, key  # a model ignoring it: 0
        # the robust aggregators' decisions are run events
        assert sum(cells["scaling"]["multi_krum"]["decisions"].values()) > 0, key
        assert task["by_malicious"]["1"]["best"]["scaling"] != "none", key
    assert any("scaling" in label for label in out["checks"])


@pytest.mark.slow
def test_inversion_table_recovers_a_single_record_from_a_plain_update() -> None:
    inv = quick("inversion")["results"]["inversion"]
    rows = inv["rows"]
    plain = [r for r in rows if r["defence"] == "none" and r["batch"] == 1]
    assert plain
    assert all(r["recovery_mean"] >= 0.9 for r in plain)
    secure = [r for r in rows if r["defence"] == "secure_sum"]
    assert secure
    assert all(r["recovery_mean"] < 0.5 for r in secure)
    for r in rows:
        assert 0.0 <= r["recovery_mean"] <= 1.0


@pytest.mark.slow
def test_membership_table_reports_auc_and_epsilons() -> None:
    rows = quick("membership")["results"]["membership"]["rows"]
    assert {r["attack"] for r in rows} >= {"loss"}
    for r in rows:
        assert 0.0 <= r["auc"] <= 1.0
        assert 0.0 <= r["tpr_at_1pct_fpr"] <= 1.0
        assert r["empirical_epsilon"] is None or r["empirical_epsilon"] >= 0.0
        if r["epsilon"] is not None:  # DP: the accountant's ε is the target's at most
            assert r["accountant_epsilon"] <= r["epsilon"] * (1 + 1e-6)
        else:
            assert r["accountant_epsilon"] is None or math.isinf(r["accountant_epsilon"])
