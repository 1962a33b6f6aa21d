"""Secure aggregation end to end over gRPC with mTLS: a site process is killed between the
protocol's stages; the round still completes from the three survivors (its masks are
removed with its neighbours' shares), and the run finishes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from biofed.secagg._settings import SecureAggregationSettings

from .conftest import (
    Federation,
    events_of,
    format_events,
    job,
    wait_for,
    wait_online,
    wait_terminal,
)

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1", "center-2", "center-3"]
VICTIM = "center-3"


def test_secure_rounds_survive_a_site_killed_between_stages(
    make_federation: Callable[..., Federation],
) -> None:
    federation = make_federation(sites=SITES)
    federation.start_coordinator()
    for site in SITES[:3]:
        federation.start_node(site)
    federation.node_process(VICTIM)
    client = federation.control()
    wait_online(client, SITES, timeout=30)
    spec = dataclasses.replace(
        job(rounds=2, min_nodes=3, min_replies=3, round_timeout=5.0, train={"local_steps": 3000}),
        secure_aggregation=SecureAggregationSettings(
            clip_range=4.0, quantisation_step=1e-6, max_weight=1000
        ),
    )
    run_id = client.submit_run(spec.to_json()).run_id

    def victim_advertised() -> bool:
        return any(
            e.kind == "secagg_reply" and e.node_id == VICTIM and e.round == 1
            for e in events_of(client, run_id)
        )

    wait_for(victim_advertised, timeout=30, interval=0.01, what="the victim's first stage")
    federation.processes.kill(VICTIM)  # after it advertised keys, before its masked input
    status = wait_terminal(client, run_id, timeout=120)
    events = events_of(client, run_id)
    assert status == "finished", format_events(events)
    completed = [e for e in events if e.kind == "round_completed"]
    assert len(completed) == 2, format_events(events)
    assert "3/4 replies" in completed[0].message, format_events(events)
    assert any(
        e.kind == "secagg_dropout" and e.node_id == VICTIM and e.round == 1 for e in events
    ), format_events(events)
