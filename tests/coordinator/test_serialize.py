"""JSON for round records, run events and job specs."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from biofed.coordinator import RoundRecord, RunEvent
from biofed.coordinator._serialize import (
    canonical_json,
    round_record_from_json,
    round_record_to_json,
    run_event_from_json,
    run_event_to_json,
)
from biofed.core import ConfigurationError, PayloadError

names = st.text(min_size=1, max_size=12)
any_float = st.floats(allow_nan=True, allow_infinity=True)
metrics = st.dictionaries(names, any_float, max_size=5)
counts = st.integers(min_value=0, max_value=2**40)

records = st.builds(
    RoundRecord,
    round=st.integers(min_value=1, max_value=10**6),
    num_selected=counts,
    num_replies=counts,
    num_rejected=counts,
    train_metrics=metrics,
    eval_metrics=metrics,
    node_eval_metrics=st.dictionaries(names, metrics, max_size=4),
    duration_s=any_float,
    failed=st.none() | st.text(max_size=40),
)


def same_float(a: float, b: float) -> bool:
    """Equal as stored values: NaN equals NaN, and 0.0 and -0.0 are told apart."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def same_metrics(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return list(a) == list(b) and all(type(b[k]) is float and same_float(a[k], b[k]) for k in a)


def same_record(a: RoundRecord, b: RoundRecord) -> bool:
    return (
        (a.round, a.num_selected, a.num_replies, a.num_rejected, a.failed)
        == (b.round, b.num_selected, b.num_replies, b.num_rejected, b.failed)
        and same_float(a.duration_s, b.duration_s)
        and same_metrics(a.train_metrics, b.train_metrics)
        and same_metrics(a.eval_metrics, b.eval_metrics)
        and list(a.node_eval_metrics) == list(b.node_eval_metrics)
        and all(same_metrics(m, b.node_eval_metrics[n]) for n, m in a.node_eval_metrics.items())
    )


@given(records)
def test_round_record_round_trips_exactly(record: RoundRecord) -> None:
    text = round_record_to_json(record)
    json.loads(text)  # standard JSON: no NaN or Infinity literals
    assert "NaN" not in text.replace('"NaN', "")
    back = round_record_from_json(text)
    assert same_record(record, back)
    assert round_record_to_json(back) == text
    assert isinstance(back.train_metrics, MappingProxyType)
    assert isinstance(back.node_eval_metrics, MappingProxyType)


def test_nan_is_null_and_infinity_a_string() -> None:
    record = RoundRecord(
        round=2,
        num_selected=3,
        num_replies=3,
        num_rejected=0,
        eval_metrics={"auc": math.nan, "hi": math.inf, "lo": -math.inf, "n": 3.0},
    )
    obj = json.loads(round_record_to_json(record))
    assert obj["eval_metrics"] == {"auc": None, "hi": "Infinity", "lo": "-Infinity", "n": 3.0}
    assert obj["failed"] is None
    back = round_record_from_json(round_record_to_json(record))
    assert math.isnan(back.eval_metrics["auc"])
    assert back == RoundRecord(**{**obj, "eval_metrics": back.eval_metrics})


GOOD = round_record_to_json(RoundRecord(round=1, num_selected=1, num_replies=1, num_rejected=0))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        "{not json",
        GOOD.replace('"round":1', '"round":1.5'),
        GOOD.replace('"round":1', '"round":true'),
        GOOD.replace('"train_metrics":{}', '"train_metrics":[]'),
        GOOD.replace('"train_metrics":{}', '"train_metrics":{"loss":"high"}'),
        GOOD.replace('"node_eval_metrics":{}', '"node_eval_metrics":[]'),
        GOOD.replace('"failed":null', '"failed":3'),
        GOOD.replace('"failed":null', '"failed":null,"extra":1'),
        GOOD.replace(',"failed":null', ""),
    ],
)
def test_malformed_round_record_is_a_payload_error(text: str) -> None:
    with pytest.raises(PayloadError):
        round_record_from_json(text)


@given(
    st.builds(
        RunEvent,
        round=st.integers(min_value=0, max_value=10**6),
        kind=names,
        message=st.text(max_size=60),
        node_id=st.none() | names,
    )
)
def test_run_event_round_trips(event: RunEvent) -> None:
    assert run_event_from_json(run_event_to_json(event)) == event


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        '{"round":1,"kind":2,"message":"m","node_id":null}',
        '{"round":"1","kind":"k","message":"m","node_id":null}',
        '{"round":1,"kind":"k","message":"m","node_id":7}',
    ],
)
def test_malformed_run_event_is_a_payload_error(text: str) -> None:
    with pytest.raises(PayloadError):
        run_event_from_json(text)


def test_canonical_json_is_sorted_and_compact() -> None:
    spec = {"strategy": {"name": "fedavg", "lr": 0.1}, "rounds": 3, "name": "Zürich", "ok": True}
    assert canonical_json(spec) == (
        '{"name":"Zürich","ok":true,"rounds":3,"strategy":{"lr":0.1,"name":"fedavg"}}'
    )
    reordered = {
        "ok": True,
        "name": "Zürich",
        "rounds": 3,
        "strategy": {"lr": 0.1, "name": "fedavg"},
    }
    assert canonical_json(reordered) == canonical_json(spec)
    frozen = MappingProxyType({"b": (1, 2.5, None), "a": MappingProxyType({"x": "y"})})
    assert canonical_json(frozen) == '{"a":{"x":"y"},"b":[1,2.5,null]}'
    assert json.loads(canonical_json(spec)) == spec


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ({"lr": math.nan}, "NaN"),
        ({"a": [1, math.inf]}, "infinity"),
        ({1: "x"}, "keys must be strings"),
        ({"s": {1, 2}}, "set"),
        ({"b": b"raw"}, "bytes"),
    ],
)
def test_canonical_json_refuses_what_json_cannot_hold(value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        canonical_json(value)
