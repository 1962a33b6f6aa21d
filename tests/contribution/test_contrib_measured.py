"""``Measured``: contributions measured while a run aggregates (issue 17).

Hand-computed games for the wrapper's bookkeeping (updates, capped weights, the event it
hands the engine), the strategy contract around every inner strategy it wraps, the
refusals (secure aggregation, memory), and Fed-TCGA-BRCA through
``biofed.simulation.simulate`` with a free-riding site (``biofed.attacks.FreeRiding``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.attacks import FreeRiding
from biofed.contribution import (
    CONTRIBUTION_EVENT,
    CONTRIBUTION_FAILED_EVENT,
    CONTRIBUTIONS_EVENT,
    Measured,
    ledger_from_events,
    ledger_from_run_record,
)
from biofed.coordinator import JobSpec, TrustedData
from biofed.core import ConfigurationError, MessageKind, ParameterSet, Reply, RoundFailed
from biofed.simulation import TamperingBackend, simulate
from biofed.strategies import DPFedAvg, FedAvg, Robust
from biofed.testing import check_strategy

sys.path.insert(0, str(Path(__file__).parents[1] / "coordinator"))
from test_robust_job import flip_boosted, held_out

X = ParameterSet({"w": np.zeros(2)})


def total(params: ParameterSet) -> float:
    """A linear value: the sum of the model's entries."""
    return float(sum(np.sum(a) for a in params.values()))


def reply(node: str, w: list[float], examples: int) -> Reply:
    return Reply(
        run_id="r",
        round=1,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=ParameterSet({"w": np.asarray(w, dtype=np.float64)}),
        num_examples=examples,
    )


def fold(strategy: Measured, replies: list[Reply]) -> Any:
    aggregator = strategy.begin_train_aggregation(1, X, strategy.init_state(X), len(replies))
    for r in replies:
        aggregator.add(r)
    return aggregator.finish()


def test_a_round_is_measured_from_its_updates_and_capped_weights() -> None:
    # Δa = (1, 0) with 3 examples, Δb = (0, 3) with 1: v({a}) = 1, v({b}) = 3,
    # v({a, b}) = sum((3·(1,0) + (0,3)) / 4) = 1.5; φa = ½·1 + ½·(1.5 − 3) = −0.25,
    # φb = ½·3 + ½·(1.5 − 1) = 1.75.
    result = fold(Measured(FedAvg(), total), [reply("a", [1, 0], 3), reply("b", [0, 3], 1)])
    np.testing.assert_allclose(result.parameters["w"], [0.75, 0.75])  # FedAvg's own model
    record = json.loads(result.events[CONTRIBUTION_EVENT])
    values = record["contributions"]["values"]
    assert values == pytest.approx({"a": -0.25, "b": 1.75})
    assert record["contributions"]["method"] == "shapley"
    assert result.metrics["contribution.v_all"] == pytest.approx(1.5)
    assert result.metrics["contribution.evaluations"] == 4.0  # value(x) and 3 coalitions
    coalitions = {tuple(c["sites"]): c["value"] for c in record["coalitions"]}
    assert coalitions == pytest.approx({("a",): 1.0, ("b",): 3.0, ("a", "b"): 1.5})
    # capped at one example each, the weights are equal: v({a, b}) = 2, φa = 0, φb = 2
    capped = fold(
        Measured(FedAvg(max_weight=1), total), [reply("a", [1, 0], 3), reply("b", [0, 3], 1)]
    )
    values = json.loads(capped.events[CONTRIBUTION_EVENT])["contributions"]["values"]
    assert values == pytest.approx({"a": 0.0, "b": 2.0})


def test_a_failing_value_function_leaves_the_round_and_says_why() -> None:
    def broken(params: ParameterSet) -> float:
        raise ValueError("no events in the trusted data")

    result = fold(Measured(FedAvg(), broken), [reply("a", [1, 0], 1), reply("b", [0, 1], 1)])
    np.testing.assert_allclose(result.parameters["w"], [0.5, 0.5])
    assert CONTRIBUTION_EVENT not in result.events
    assert "no events in the trusted data" in result.events[CONTRIBUTION_FAILED_EVENT]
    assert "contribution.v_all" not in result.metrics


def test_every_inner_strategy_keeps_the_contract() -> None:
    for inner in (
        FedAvg(),
        Robust(FedAvg(), "median"),
        DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=0.0),
    ):
        strategy = Measured(inner, total, method="leave_one_out")
        check_strategy(strategy)
        assert strategy.describe()["contribution.method"] == "leave_one_out"
        assert strategy.describe()["strategy"] == inner.describe()["strategy"]


def test_secure_aggregation_and_oversized_rounds_are_refused() -> None:
    strategy = Measured(FedAvg(), total)
    assert strategy.supports_secure_aggregation is False
    with pytest.raises(ConfigurationError, match="two coalition sums that differ by one site"):
        strategy.aggregate_secure(
            1, X, {}, {"w": np.zeros(2)}, total_weight=2, num_replies=2, num_nodes=2
        )
    small = Measured(FedAvg(), total, max_updates_bytes=3 * 2 * 8 - 1)
    with pytest.raises(RoundFailed, match="max_updates_bytes"):
        small.begin_train_aggregation(1, X, {}, 3)
    for bad, match in (
        ({"method": "banzhaf"}, "unknown method"),
        ({"max_evaluations": 1}, "max_evaluations"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(ConfigurationError, match=match):
            Measured(FedAvg(), total, **bad)
    with pytest.raises(ConfigurationError, match="callable"):
        Measured(FedAvg(), 0.5)  # type: ignore[arg-type]


JOB = {
    "run": {"dataset": "tcga-brca", "rounds": 3, "min_nodes": 6, "min_replies": 6},
    "task": {"name": "cox_ph", "num_features": 39},
    "train": {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam", "local_steps": 20},
}


def _simulate(tamper: dict[str, Any], **tables: Any) -> Any:
    fed, rows = held_out()
    job = JobSpec.from_mapping({**JOB, **tables})
    trusted = TrustedData(job, rows, name="reference")
    backend = TamperingBackend(tamper)
    return job, simulate(fed, job=job, backend=backend, trusted=trusted, baselines=False)


def test_a_free_rider_on_fed_tcga_brca_gets_nothing_and_the_model_is_unchanged() -> None:
    table = {"contribution": {"trusted_dataset": "reference"}}
    _, report = _simulate({"center-3": FreeRiding()}, **table)
    ledger = ledger_from_run_record(report.contributions)
    assert [r.server_round for r in ledger.rounds] == [1, 2, 3]
    totals, shares = ledger.totals(), ledger.shares()
    assert totals["center-3"] == 0.0
    assert shares["center-3"] == 0.0
    assert all("center-3" in r.free_riders for r in ledger.rounds)  # flagged every round
    honest = {s: v for s, v in totals.items() if s != "center-3"}
    assert sum(v > 0 for v in honest.values()) >= 4
    assert sum(totals.values()) == pytest.approx(sum(r.total for r in ledger.rounds))
    # the per-round events are what the run's record was built from
    per_round = [e for e in report.events if f" {CONTRIBUTION_EVENT}:" in e]
    assert len(per_round) == 3
    assert [r.train_metrics["contribution.v_all"] for r in report.history] == pytest.approx(
        [r.total for r in ledger.rounds]
    )
    # measuring changes nothing in the run: the same job without [contribution]
    _, plain = _simulate({"center-3": FreeRiding()})
    for name in report.parameters:
        np.testing.assert_array_equal(report.parameters[name], plain.parameters[name])
    assert plain.contributions is None


def test_an_update_robust_validation_rejects_is_not_credited() -> None:
    tables = {
        "robust": {"validation": True, "trusted_dataset": "reference"},
        "contribution": {"trusted_dataset": "reference", "method": "leave_one_out"},
    }
    run = {**JOB["run"], "rounds": 2}
    _, report = _simulate({"center-0": flip_boosted}, **tables, run=run)
    record = json.loads(report.contributions)
    assert record["excluded"] == {"1": ["center-0"], "2": ["center-0"]}
    ledger = ledger_from_run_record(report.contributions)
    assert "center-0" not in ledger.sites  # never played: 0 by the ledger's convention
    assert len(ledger.sites) == 5
    assert all(r.method == "leave_one_out" for r in ledger.rounds)


def test_the_ledger_keeps_the_last_record_of_a_round_and_the_unmeasured_ones() -> None:
    result = fold(Measured(FedAvg(), total), [reply("a", [1, 0], 1), reply("b", [0, 3], 1)])
    message = result.events[CONTRIBUTION_EVENT]
    events = [
        (1, CONTRIBUTION_EVENT, message),
        (1, CONTRIBUTION_EVENT, message),  # round 1 re-run after a restart
        (2, CONTRIBUTION_FAILED_EVENT, "round 2: value failed"),
    ]
    ledger, _, failed = ledger_from_events(events)
    assert [r.server_round for r in ledger.rounds] == [1]
    assert failed == {2: "round 2: value failed"}
    with pytest.raises(ConfigurationError, match="not JSON"):
        ledger_from_events([(1, CONTRIBUTION_EVENT, "{")])
    with pytest.raises(ConfigurationError):
        ledger_from_run_record(json.dumps({"ledger": {"rounds": [{"method": "x"}]}}))
    assert CONTRIBUTIONS_EVENT == "contributions"
