"""A site's privacy spend travels as numbers in a typed event, is stored as numbers by both
stores, and the privacy report reads the numbers (only events stored before events carried
numbers have their text read)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import sqlalchemy as sa

from biofed.coordinator import (
    PRIVACY_EVENT,
    InMemoryStateStore,
    JobSpec,
    RunEvent,
    SqlStateStore,
    StateStore,
    StoreListener,
    open_store,
    privacy_report,
    run_event_from_json,
    run_event_to_json,
    site_spend,
    spend_event,
)
from biofed.core import ConfigurationError, MessageKind, PayloadError, Reply
from biofed.privacy import GUARANTEE_METRIC, guarantee_code

JOB = JobSpec.from_mapping(
    {
        "run": {"name": "j", "dataset": "d", "rounds": 2},
        "task": {"name": "cox_ph", "num_features": 3},
        "privacy": {
            "mode": "client",
            "noise_multiplier": 1.5,
            "delta": 1e-5,
            "max_grad_norm": 1.0,
        },
    }
)


def _reply(eps: float, node: str = "a", label: str | None = "exact") -> Reply:
    metrics = {"dp.epsilon": eps, "dp.delta": 1e-5}
    if label is not None:
        metrics[GUARANTEE_METRIC] = guarantee_code(label)
    return Reply(run_id="r", round=1, node_id=node, kind=MessageKind.TRAIN, metrics=metrics)


def test_the_spend_event_carries_the_figures_as_numbers() -> None:
    event = spend_event(1, _reply(0.123456789))
    assert event is not None
    assert event.kind == PRIVACY_EVENT
    assert event.node_id == "a"
    assert dict(event.data) == {"epsilon": 0.123456789, "delta": 1e-5, "guarantee": 0.0}
    assert event.message == "epsilon=0.123456789 delta=1e-05 guarantee=exact"  # as before
    assert site_spend(event) == {"epsilon": 0.123456789, "delta": 1e-5, "guarantee": "exact"}
    unlabelled = spend_event(1, _reply(0.5, label=None))
    assert unlabelled is not None
    assert "guarantee" not in unlabelled.data
    assert site_spend(unlabelled) == {"epsilon": 0.5, "delta": 1e-5, "guarantee": "unlabelled"}
    evaluation = Reply(run_id="r", round=1, node_id="a", kind=MessageKind.EVALUATE)
    assert spend_event(1, evaluation) is None


def test_the_report_reads_the_numbers_not_the_text() -> None:
    event = spend_event(2, _reply(0.7))
    assert event is not None
    garbled = RunEvent(
        round=2, kind=PRIVACY_EVENT, message="ε was 99", node_id="a", data=event.data
    )
    report = privacy_report(JOB, [_row(garbled)], [])
    assert report is not None
    assert report["sites"]["a"] == {
        "epsilon": 0.7,
        "delta": 1e-5,
        "guarantee": "exact",
        "round": 2.0,
    }


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.5", True, None])
def test_an_event_figure_must_be_a_finite_number(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="event data 'epsilon' must be a finite number"):
        RunEvent(round=1, kind=PRIVACY_EVENT, message="", data={"epsilon": bad})  # type: ignore[dict-item]


def test_events_with_figures_round_trip_as_json() -> None:
    event = spend_event(3, _reply(1.25))
    assert event is not None
    assert run_event_from_json(run_event_to_json(event)) == event
    plain = RunEvent(round=1, kind="k", message="m")
    assert "data" not in run_event_to_json(plain)  # the old form, unchanged
    with pytest.raises(PayloadError):
        run_event_from_json('{"round":1,"kind":"k","message":"m","node_id":null,"data":[1]}')
    with pytest.raises(PayloadError):
        run_event_from_json(
            '{"round":1,"kind":"k","message":"m","node_id":null,"data":{"e":"Infinity"}}'
        )


def _row(event: RunEvent) -> object:
    store = InMemoryStateStore()
    store.create_run("r", JOB.to_json(), "alice")
    return store.append_event(
        "r",
        round=event.round,
        kind=event.kind,
        message=event.message,
        node_id=event.node_id,
        data=event.data,
    )


def _stores(tmp_path: Path) -> list[StateStore]:
    return [InMemoryStateStore(), SqlStateStore(f"sqlite:///{tmp_path / 's.db'}", tmp_path / "c")]


def test_both_stores_keep_the_figures_and_the_listener_writes_them(tmp_path: Path) -> None:
    for store in _stores(tmp_path):
        with store:
            store.create_run("r", JOB.to_json(), "alice")
            listener = StoreListener(store, "r")
            listener.on_reply(1, _reply(0.25, node="a"), True)
            listener.on_reply(1, _reply(0.5, node="b", label="heuristic"), True)
            listener.on_reply(1, _reply(9.0, node="c"), False)  # refused: nothing reported
            spends = [e for e in store.events("r") if e.kind == PRIVACY_EVENT]
            assert [(e.node_id, dict(e.data)) for e in spends] == [
                ("a", {"epsilon": 0.25, "delta": 1e-5, "guarantee": 0.0}),
                ("b", {"epsilon": 0.5, "delta": 1e-5, "guarantee": 2.0}),
            ]
            assert spends[0].to_event() == spend_event(1, _reply(0.25, node="a"))
            report = privacy_report(JOB, store.events("r"), [])
            assert report is not None
            assert set(report["sites"]) == {"a", "b"}
            assert report["label"] == "heuristic"


def test_a_store_from_before_event_figures_is_upgraded_and_its_text_still_read(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with open_store(url) as store:
        store.create_run("r", JOB.to_json(), "alice")
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the events table as it was: no data column
        conn.execute(sa.text("ALTER TABLE events DROP COLUMN data"))
        conn.execute(
            sa.text(
                "INSERT INTO events (run_id, seq, time, round, kind, message, node_id) VALUES "
                "('r', 1, 1.0, 1, 'privacy_spent', "
                "'epsilon=0.5 delta=1e-05 guarantee=bounded', 'a')"
            )
        )
        conn.execute(sa.text("UPDATE runs SET last_event_seq = 1"))
    engine.dispose()
    with open_store(url) as store:
        (old,) = store.events("r")
        assert dict(old.data) == {}
        store.append_event(
            "r", round=2, kind=PRIVACY_EVENT, message="m", node_id="b", data={"epsilon": 1.0}
        )
        report = privacy_report(JOB, store.events("r"), [])
    assert report is not None
    assert report["sites"]["a"] == {
        "epsilon": 0.5,
        "delta": 1e-5,
        "guarantee": "bounded",
        "round": 1.0,
    }
    assert "b" not in report["sites"]  # figures without δ are not a spend


@pytest.mark.parametrize(("eps", "delta"), [(-1.0, 1e-5), (0.5, -1e-5), (0.5, 1.0), (0.5, 7.0)])
def test_a_site_claiming_an_impossible_figure_is_never_shown_as_a_guarantee(
    eps: float, delta: float
) -> None:
    metrics = {"dp.epsilon": eps, "dp.delta": delta, GUARANTEE_METRIC: guarantee_code("exact")}
    reply = Reply(run_id="r", round=1, node_id="liar", kind=MessageKind.TRAIN, metrics=metrics)
    event = spend_event(1, reply)
    assert event is not None
    spend = site_spend(event)
    assert spend is not None
    assert spend["guarantee"] == "unlabelled"
    assert "guarantee=unlabelled" in event.message
