"""What the coordinator's run page makes of a run's events: the per-site replies table with
robust aggregation's decisions, the privacy spend chart and the contributions chart (events
as the control API streams them)."""

from __future__ import annotations

import json

from biofed.transport.grpc import EventInfo, NodeSummary
from biofed.web._coordinator_views import (
    audit_counts,
    contributions_of,
    examples_of,
    privacy_chart,
    replies_table,
)


def event(seq: int, round: int, kind: str, node: str = "", message: str = "") -> EventInfo:
    return EventInfo(seq=seq, time=0.0, round=round, kind=kind, node_id=node, message=message)


def test_the_replies_table_shows_accepted_replies_decisions_and_problems() -> None:
    rejected = {"node": "b", "action": "rejected", "weight": 0.0, "score": -0.2, "reason": "x"}
    events = [
        event(1, 1, "train_reply", "a", "accepted"),
        event(2, 1, "train_reply", "b", "accepted"),
        event(3, 1, "update_accepted", "a", json.dumps({"weight": 1.0, "reason": "ok"})),
        event(4, 1, "update_rejected", "b", json.dumps(rejected)),
        event(5, 2, "no_reply", "b", "no reply within 60 s"),
        event(6, 2, "round_completed", "", "1/2 replies"),
    ]
    sites, rounds, cells = replies_table(events)
    assert sites == ["a", "b"]
    assert rounds == [1, 2]
    assert cells["a"][1] == [("train accepted", ""), ("update accepted", "ok")]
    assert cells["b"][1] == [("train accepted", ""), ("update rejected (weight 0)", "x")]
    assert cells["b"][2] == [("no reply", "no reply within 60 s")]


def test_privacy_spend_is_charted_per_site_over_the_rounds() -> None:
    spent = "epsilon={} delta=1e-05 guarantee=exact"
    events = [
        event(1, 1, "privacy_spent", "a", spent.format(1.5)),
        event(2, 1, "privacy_spent", "b", spent.format(1.25)),
        event(3, 2, "privacy_spent", "a", spent.format(2.5)),
        event(4, 2, "privacy_spent", "b", "garbled"),
    ]
    drawn = privacy_chart(events)
    assert drawn is not None
    spec = json.loads(drawn.spec)
    assert spec["labels"] == [1, 2]
    assert spec["series"] == {"a": [1.5, 2.5], "b": [1.25, None]}
    assert privacy_chart([event(1, 1, "train_reply", "a", "accepted")]) is None


def test_contributions_are_a_bar_chart_of_the_shares() -> None:
    record = {"shares": {"b": 0.25, "a": 0.75}, "outcome": {"policy": "proportional"}}
    found, drawn = contributions_of([event(9, 3, "contributions", "", json.dumps(record))])
    assert found == record
    assert drawn is not None
    spec = json.loads(drawn.spec)
    assert (spec["kind"], spec["labels"], spec["series"]) == (
        "bar",
        ["a", "b"],
        {"share": [0.75, 0.25]},
    )
    assert contributions_of([event(9, 3, "contributions", "", "not json")]) == (None, None)


def test_examples_and_audit_counts() -> None:
    nodes = [
        NodeSummary(
            node_id="a", status="online", last_seen=1.0, properties_json='{"dataset.d.examples": 7}'
        ),
        NodeSummary(node_id="b", status="lost", last_seen=1.0, properties_json="not json"),
    ]
    assert examples_of(nodes, "d") == {"a": "7"}
    lines = [
        {"event": "round.received", "data": {"run_id": "r1"}},
        {"event": "round.received", "data": {"run_id": "r1"}},
        {"event": "run.finished", "data": {"run_id": "r1"}},
        {"event": "key.rotated", "data": {}},
    ]
    assert audit_counts(lines) == {"r1": {"round.received": 2, "run.finished": 1}}
