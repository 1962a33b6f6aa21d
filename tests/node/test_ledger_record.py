"""A round's record in the node's ledger is the accountant's own event form, and a record
that was tampered with (or written by something else) stops the job instead of being
guessed at: the node never under-counts what a job has spent."""

from __future__ import annotations

import json

import pytest

from biofed.core import ConfigurationError
from biofed.node._privacy import RoundPrivacy, job_epsilon, plan_round
from biofed.privacy import DPSettings, SampledGaussian


def _plan() -> RoundPrivacy:
    settings = DPSettings(mode="sample", target_epsilon=4.0, delta=1e-5, max_grad_norm=1.0)
    config = {**settings.to_config(), "batch_size": 20, "local_steps": 10}
    plan = plan_round(config, 200)
    assert plan is not None
    return plan


def test_record_round_trips_through_the_accountants_event_form() -> None:
    plan = _plan()
    record = json.loads(plan.mechanism())
    assert SampledGaussian.from_dict(record) == plan.event
    assert record["accountant"] == "rdp"
    # composing a recorded round equals composing the same round twice
    eps_two, _ = job_epsilon(plan, {1: plan.mechanism()}, server_round=2)
    eps_one, _ = job_epsilon(plan, {}, server_round=1)
    assert eps_two > eps_one


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        "5",
        "{}",
        json.dumps({"noise_multiplier": 1.0, "sampling_rate": 0.1}),
        json.dumps({"noise_multiplier": -1.0, "sampling_rate": 0.1, "steps": 3}),
        json.dumps({"noise_multiplier": 1.0, "sampling_rate": 2.0, "steps": 3}),
        json.dumps({"noise_multiplier": 1.0, "sampling_rate": 0.1, "steps": "3"}),
    ],
)
def test_a_tampered_record_refuses_the_round(text: str) -> None:
    with pytest.raises(ConfigurationError, match="unreadable"):
        job_epsilon(_plan(), {1: text}, server_round=2)
