"""Update validation end to end on Fed-TCGA-BRCA (issue 15): the honest 6-site Cox job run
through ``biofed.simulation.simulate`` with ``[robust] validation`` and trusted data held out
from the sites (half of every site's test split), real nodes, one of them lying through a
``TamperingBackend``.

Measured (5 rounds, pooled test C-index of the final model, mean of seeds 0-4; Robust
weighs each update's influence by its capped example count):

=================  ===========  ===============  ==========================
center-0 sends     no defence   with validation  liar rejected (of 25)
=================  ===========  ===============  ==========================
its honest model   0.814        0.814            no honest update rejected
flip ×1            0.619        0.708            9
flip ×4            0.250        0.794            25
flip ×10           0.294        0.794            25
=================  ===========  ===============  ==========================

A plain flip (×1) by the largest site costs less than ``max_drop`` in most rounds: that is
the robust aggregators' part. The smallest site (center-5, 40 patients) flipping ×4 harms
nothing (0.813) and passes; ×10 it is rejected in 19 of 25 rounds (0.708 → 0.819)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from test_validation_decisions import TRAIN, held_out

from biofed.coordinator import JobSpec, RunEvent, TrustedData
from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.data import Dataset
from biofed.simulation import SimulationReport, TamperingBackend, simulate

ROBUST = {"validation": True, "trusted_dataset": "tcga-reference"}


class Events:
    """Collects the run's events (an engine listener)."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        pass

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_round_end(self, record: object) -> None:
        pass

    def on_event(self, event: RunEvent) -> None:
        self.events.append(event)

    def decisions(self, kind: str) -> list[tuple[int, str | None]]:
        return [(e.round, e.node_id) for e in self.events if e.kind == kind]


def sign_flip(boost: float) -> Callable[[Instruction, Reply], Reply]:
    """A site that sends ``x − boost·(xᵢ − x)`` instead of its trained model ``xᵢ``."""

    def tamper(instruction: Instruction, reply: Reply) -> Reply:
        if instruction.kind is not MessageKind.TRAIN or reply.parameters is None:
            return reply
        x, honest = instruction.parameters, reply.parameters
        assert x is not None
        flipped = {k: (x[k] - boost * (honest[k] - x[k])).astype(x[k].dtype) for k in x}
        return dataclasses.replace(reply, parameters=ParameterSet(flipped))

    return tamper


def run(seed: int, *, validation: bool, liar: float | None) -> tuple[SimulationReport, Events]:
    fed, trusted_rows = held_out()
    job = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 5, "seed": seed, "min_nodes": 6},
            "task": {"name": "cox_ph", "num_features": 39},
            # max_weight above every site's size: Robust weighs by example counts only when
            # max_weight bounds them, so with it the validated run can equal plain FedAvg's
            "strategy": {"name": "fedavg", "max_weight": 10**6},
            "train": dict(TRAIN),
            **({"robust": dict(ROBUST)} if validation else {}),
        }
    )
    trusted = TrustedData(job, trusted_rows, name="tcga-reference") if validation else None
    backend = TamperingBackend({"center-0": sign_flip(liar)}) if liar is not None else "inprocess"
    events = Events()
    report = simulate(
        fed, job=job, trusted=trusted, backend=backend, baselines=False, listener=events
    )
    return report, events


@pytest.mark.parametrize("seed", [0, 1])
def test_no_honest_update_of_the_tcga_cox_job_is_rejected(seed: int) -> None:
    report, events = run(seed, validation=True, liar=None)
    assert events.decisions("update_rejected") == []
    assert events.decisions("update_downweighted") == []
    accepted = events.decisions("update_accepted")
    assert len(accepted) == 30  # 6 sites × 5 rounds
    plain, _ = run(seed, validation=False, liar=None)
    assert report.federated.pooled_metric == pytest.approx(plain.federated.pooled_metric)
    assert report.federated.pooled_metric > 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sign_flipping_site_is_rejected_and_no_honest_site_is(seed: int) -> None:
    report, events = run(seed, validation=True, liar=4.0)
    assert events.decisions("update_rejected") == [(r, "center-0") for r in range(1, 6)]
    accepted = events.decisions("update_accepted")
    assert len(accepted) == 25  # every honest update, every round
    assert "center-0" not in {node for _, node in accepted}
    undefended, _ = run(seed, validation=False, liar=4.0)
    assert undefended.federated.pooled_metric < 0.3
    assert report.federated.pooled_metric > 0.79
    honest, _ = run(seed, validation=False, liar=None)
    assert report.federated.pooled_metric > honest.federated.pooled_metric - 0.02


def test_under_secure_aggregation_the_aggregate_is_validated_and_a_bad_one_discarded() -> None:
    fed, rows = held_out()
    job = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 2, "min_nodes": 6, "min_replies": 6},
            "task": {"name": "cox_ph", "num_features": 39},
            "strategy": {"max_weight": 10**6},  # example-weighted, as the plain runs above
            "train": dict(TRAIN),
            "robust": {"aggregator": "norm_bound", "norm_bound": 5.0, **ROBUST},
            "secure_aggregation": {"clip_range": 10.0},
        }
    )
    events = Events()
    report = simulate(
        fed, job=job, trusted=TrustedData(job, rows), baselines=False, listener=events
    )
    checks = [e.message for e in events.events if e.kind == "update_accepted"]
    assert (
        events.decisions("update_accepted")
        == [(1, "secure-aggregate")] * 2 + [(2, "secure-aggregate")] * 2
    )  # the norm check and the validation of the aggregate, each round
    assert "for the aggregate" in checks[1]
    assert report.federated.pooled_metric > 0.8
    # Trusted data whose features are negated: every model scores 1 − its C-index on it, so
    # each honest aggregate lowers it, validation discards it and the model stays the initial.
    backwards = Dataset(
        name="backwards",
        features=-rows.features,
        feature_names=rows.feature_names,
        targets=rows.targets,
    )
    events = Events()
    report = simulate(
        fed, job=job, trusted=TrustedData(job, backwards), baselines=False, listener=events
    )
    assert events.decisions("update_rejected") == [(1, "secure-aggregate"), (2, "secure-aggregate")]
    assert report.federated.pooled_metric == pytest.approx(0.5)  # the zero model, kept
