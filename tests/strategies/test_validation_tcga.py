"""Update validation end to end on Fed-TCGA-BRCA (issue 15): the honest 6-site Cox job run
through ``biofed.simulation.simulate`` with ``[robust] validation`` and trusted data held out
from the sites (half of every site's test split), real nodes, one of them lying through a
``TamperingBackend``.

Measured (seeds 0 and 1, 5 rounds, pooled test C-index of the final model):
no validation — honest 0.821 / 0.810, center-0 flipping its update ×4: 0.267 / 0.271;
with validation — honest unchanged and no update rejected, flip ×4: 0.707 / 0.716 (the liar
rejected in rounds 1, 2, 4, 5), flip ×10: 0.810 / 0.794 (rejected in every round).
A plain flip (×1) by the largest site costs less than ``max_drop`` per round and is not
caught by validation alone (0.618 / 0.629): that is the robust aggregators' part."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from test_validation_decisions import TRAIN, held_out

from biofed.coordinator import JobSpec, RunEvent, TrustedData
from biofed.core import Instruction, MessageKind, ParameterSet, Reply
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
    rejected = events.decisions("update_rejected")
    assert {node for _, node in rejected} == {"center-0"}
    assert len(rejected) >= 4  # of 5 rounds
    accepted = events.decisions("update_accepted")
    assert len(accepted) == 25 + 5 - len(rejected)  # every honest update, every round
    undefended, _ = run(seed, validation=False, liar=4.0)
    assert undefended.federated.pooled_metric < 0.3
    assert report.federated.pooled_metric > 0.7
    boosted, events = run(seed, validation=True, liar=10.0)
    assert events.decisions("update_rejected") == [(r, "center-0") for r in range(1, 6)]
    assert boosted.federated.pooled_metric > 0.79
