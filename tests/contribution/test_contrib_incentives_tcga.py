"""The incentive policy on Fed-TCGA-BRCA with planted sites (issue 17, item 3's acceptance).

Two rounds of the built-in Cox task (FLamby's protocol, as in test_contrib_tcga.py), valued
by the C-index on the pooled test split and measured by exact Shapley; the six hospitals,
with center-2's labels flipped (``biofed.attacks.label_flip``), a free-rider that sends the
global model back (Δ = 0) with a plausible weight, and, in the second run, a copy of
center-1's data enrolled as one more site. The ledgers go through the policy, and every site
verifies its own figures from the published JSON.

Measured here (rewards, proportional to positive value): center-0 0.389, center-1 0.346,
center-4 0.147, center-5 0.093, center-3 0.025 (below min_share 0.05: delayed), center-2
(flipped, value −0.207 C-index over the two rounds) 0, the free-rider 0 (flagged, delayed).
"""

from __future__ import annotations

import datetime as dt
import json
from functools import cache

import numpy as np
import pytest

from biofed.attacks import label_flip
from biofed.contribution import (
    ContributionLedger,
    RoundGame,
    Updates,
    coalition_table,
    incentive_outcome,
    shapley,
    shapley_from_table,
    verify_outcome,
)
from biofed.core import ParameterSet
from biofed.data import Dataset, SiteData
from biofed.datasets import load_tcga_brca
from biofed.governance import IncentivePolicy
from biofed.tasks import CoxPHTask, TrainContext

TRAIN = {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam", "local_steps": 100}
TASK = CoxPHTask(num_features=39)
FED = load_tcga_brca()
FLIPPED = "center-2"
SITES = {
    **dict(FED.sites),
    FLIPPED: label_flip(dict(FED.sites)[FLIPPED], rng=np.random.default_rng(1)),
}
RELEASED = dt.date(2026, 12, 6)
POLICY = IncentivePolicy(
    measure="shapley", min_share=0.05, below_min="delayed", delay_days=30, free_rider_share=0.0
)


@cache
def _test_rows() -> Dataset:
    return FED.pooled("test")


def c_index(params: ParameterSet) -> float:
    return float(TASK.evaluate(params, _test_rows(), TrainContext()).metrics["c_index"])


def train_round(x: ParameterSet, sites: dict[str, SiteData], seed: int) -> Updates:
    updates = {}
    for k, (site, data) in enumerate(sites.items()):
        ctx = TrainContext(config=TRAIN, rng=np.random.default_rng([seed, k]))
        result = TASK.train(x, data.train, ctx)
        updates[site] = (
            ParameterSet({n: result.parameters[n] - x[n] for n in x}),
            float(result.num_examples),
        )
    return updates


def fedavg(x: ParameterSet, updates: Updates) -> ParameterSet:
    total = sum(w for _, w in updates.values())
    return ParameterSet(
        {
            n: (x[n] + sum(w * d[n] for d, w in updates.values()) / total).astype(x[n].dtype)
            for n in x
        }
    )


@cache
def run(copy: bool) -> tuple[ContributionLedger, tuple[dict[str, object], ...]]:
    """Two measured rounds (with or without the copy of center-1); the ledger and each
    round's published coalition table."""
    sites = {**SITES, "center-1-copy": SITES["center-1"]} if copy else SITES
    x = TASK.init_parameters(np.random.default_rng(0))
    ledger, tables = ContributionLedger(), []
    for server_round in (1, 2):
        updates = dict(train_round(x, sites, seed=server_round))
        zero = ParameterSet({n: np.zeros_like(x[n]) for n in x})
        updates["free-rider"] = (zero, 150.0)  # Δ = 0 with a plausible example count
        game = RoundGame(x, updates, c_index)
        ledger = ledger.add(shapley(game), server_round=server_round)
        tables.append(coalition_table(game, server_round=server_round))
        x = fedavg(x, {s: u for s, u in updates.items() if s != "free-rider"})
    return ledger, tuple(tables)


def test_the_free_rider_is_flagged_and_delayed_and_the_flipped_site_paid_least() -> None:
    ledger, _ = run(copy=False)
    out = incentive_outcome(POLICY, ledger, rounds=2, released=RELEASED)
    print(
        {s: (round(o.value, 4), round(o.reward_share, 3), o.access) for s, o in out.sites.items()}
    )
    rider = out.sites["free-rider"]
    assert rider.value == 0.0
    assert rider.free_rider
    assert rider.reward_share == 0.0
    assert (rider.access, rider.until) == ("delayed", RELEASED + dt.timedelta(days=30))
    assert "the measure marked its update a free-rider in round(s) 1, 2" in rider.reasons
    denied = incentive_outcome(
        IncentivePolicy(measure="shapley", below_min="none"), ledger, rounds=2
    )
    assert denied.sites["free-rider"].access == "none"
    honest = [s for s in out.sites if s not in (FLIPPED, "free-rider")]
    flipped = out.sites[FLIPPED]
    assert flipped.value < 0  # its updates cost the model C-index
    assert flipped.value == min(o.value for o in out.sites.values())
    assert flipped.reward_share == min(o.reward_share for o in out.sites.values())
    assert all(flipped.reward_share < out.sites[s].reward_share for s in honest)
    assert all(not out.sites[s].free_rider for s in honest)
    assert sum(o.reward_share for o in out.sites.values()) == pytest.approx(1.0)


def test_two_copies_of_one_dataset_share_the_reward_one_gets_alone() -> None:
    alone = incentive_outcome(POLICY, run(copy=False)[0], rounds=2).sites["center-1"]
    ledger, _ = run(copy=True)
    assert all(r.duplicates == (("center-1", "center-1-copy"),) for r in ledger.rounds)
    out = incentive_outcome(POLICY, ledger, rounds=2)
    one, two = out.sites["center-1"], out.sites["center-1-copy"]
    pair = one.reward_share + two.reward_share
    print(f"center-1 alone {alone.reward_share:.3f}; with its copy {pair:.3f} together")
    assert one.reward_share == pytest.approx(two.reward_share)
    # measured: alone 0.346, the pair 0.400 (the copy's extra weight moves the grand model;
    # the flipped site's negative value is left out of the proportional shares)
    assert pair == pytest.approx(alone.reward_share, abs=0.08)
    assert pair < 1.25 * alone.reward_share  # not twice what one gets


def test_each_site_verifies_its_figures_and_the_measure_from_the_published_tables() -> None:
    ledger, tables = run(copy=False)
    published_ledger = ledger.to_json()
    published = incentive_outcome(POLICY, ledger, rounds=2, released=RELEASED).to_json()
    for site in ledger.sites:
        assert verify_outcome(POLICY, published_ledger, published, site, rounds=2) == []
    # the measure itself, from the coalition values the run published
    for record, table in zip(ledger.rounds, tables, strict=True):
        assert shapley_from_table(json.dumps(table)) == pytest.approx(dict(record.values))
    data = json.loads(published)
    data["sites"]["center-4"]["share"] /= 2
    changed = verify_outcome(POLICY, published_ledger, json.dumps(data), "center-4")
    assert len(changed) == 1
    assert changed[0].startswith("share: published")
