"""SiteSummary / SummaryRequest on the wire: round trips, and hostile input refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import DataError, ParameterSet, decode_parameters, encode_parameters
from biofed.data import NumericRequest, NumericStats, SiteSummary, SummaryRequest
from biofed.data._summary import MAX_CATEGORIES


def _summary() -> SiteSummary:
    return SiteSummary(
        records=40,
        outcome={"n": 40.0, "positives": 7.0},
        numeric={
            "age": NumericStats(
                n=38,
                missing=2,
                mean=51.5,
                m2=812.25,
                edges=(0.0, 50.0, 100.0),
                counts=(0, 20, 18, 0),
            ),
            "bmi": NumericStats(n=30, missing=10, mean=27.0, m2=100.0),
        },
        categorical={"sex": {"female": 22, "male": 18}, "site_code": {"a/b%c": 25, "other": 15}},
        suppressed={"site_code": 3},
    )


def test_summary_round_trips_through_a_parameter_set() -> None:
    summary = _summary()
    arrays = summary.to_arrays()
    assert "numeric/age/mean" in arrays
    assert "categorical/sex/female" in arrays
    assert "categorical/site_code/a%2Fb%25c" in arrays  # '/' cannot forge another name
    assert SiteSummary.from_arrays(ParameterSet(arrays)) == summary
    wire = encode_parameters(ParameterSet(arrays))  # as it travels to the coordinator
    assert SiteSummary.from_arrays(decode_parameters(wire)) == summary


@settings(max_examples=50, deadline=None)
@given(
    cats=st.dictionaries(st.text(min_size=0, max_size=20), st.integers(0, 5), min_size=1),
    values=st.lists(st.floats(-1e6, 1e6) | st.just(float("nan")), min_size=1, max_size=30),
)
def test_any_summary_round_trips(cats: dict[str, int], values: list[float]) -> None:
    stats = NumericStats.of(np.array(values), edges=(-1.0, 0.0, 1.0))
    summary = SiteSummary(
        records=max(len(values), sum(cats.values())),
        numeric={"x": stats},
        categorical={"c": cats},
    )
    assert SiteSummary.from_arrays(summary.to_arrays()) == summary


def _hostile(**change: object) -> dict[str, object]:
    arrays: dict[str, object] = dict(_summary().to_arrays())
    for key, value in change.items():
        name = key.replace("__", "/")
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    return arrays


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"numeric__age__mean": np.asarray(np.nan)}, "finite"),
        ({"numeric__age__mean": np.asarray(np.inf)}, "finite"),
        ({"numeric__age__m2": np.asarray(-1.0)}, "m2 must be ≥ 0"),
        ({"numeric__age__n": np.asarray(-3, dtype=np.int64)}, "≥ 0"),
        ({"numeric__age__n": np.asarray(38.5)}, "int64"),
        ({"numeric__age__n": np.asarray([38], dtype=np.int64)}, "0-d"),
        ({"numeric__age__mean": np.asarray(51, dtype=np.int64)}, "float64"),
        ({"numeric__age__counts": np.asarray([0, 20, 18], dtype=np.int64)}, r"edges \+ 1"),
        ({"numeric__age__counts": np.asarray([0, 20, 19, 0], dtype=np.int64)}, "histogram"),
        ({"numeric__age__edges": np.asarray([0.0, 100.0, 50.0])}, "increasing"),
        ({"numeric__age__edges": None}, "edges and counts"),
        ({"numeric__age__mean": None}, "lacks mean"),
        ({"numeric__bmi__n": np.asarray(400, dtype=np.int64)}, "more values than records"),
        ({"categorical__sex__female": np.asarray(-1, dtype=np.int64)}, "≥ 0"),
        ({"categorical__sex__female": np.asarray(2.5)}, "int64"),
        ({"categorical__sex__fe%2fmale": np.asarray(1, dtype=np.int64)}, "badly encoded"),
        ({"categorical__sex__a/b": np.asarray(1, dtype=np.int64)}, "unknown array"),
        ({"categorical__sex__female": np.asarray(1000, dtype=np.int64)}, "more values"),
        ({"numeric__age__skew": np.asarray(0.0)}, "unknown array"),
        ({"numeric__bad name__n": np.asarray(1, dtype=np.int64)}, "column name"),
        ({"weights": np.zeros(3)}, "unknown array"),
        ({"records": None}, "'records' is missing"),
        ({"outcome__positives": np.asarray(99.0)}, "exceeds n"),
        ({"outcome__n": np.asarray(-1.0)}, "≥ 0"),
    ],
)
def test_hostile_summary_arrays_are_refused_in_one_line(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        SiteSummary.from_arrays(_hostile(**change))
    assert "\n" not in str(info.value)


def test_too_many_categories_are_refused() -> None:
    arrays = {"records": np.asarray(10**6, dtype=np.int64)}
    for i in range(MAX_CATEGORIES + 1):
        arrays[f"categorical/c/k{i}"] = np.asarray(1, dtype=np.int64)
    with pytest.raises(DataError, match="more than 1000 categories"):
        SiteSummary.from_arrays(arrays)


def test_numeric_stats_combine_exactly() -> None:
    rng = np.random.default_rng(3)
    parts = [rng.normal(5, 3, size=k) for k in (1, 7, 100, 0, 13)]
    pooled = NumericStats.combine([NumericStats.of(p) for p in parts])
    allx = np.concatenate(parts)
    assert pooled.n == allx.size
    assert pooled.mean == pytest.approx(allx.mean(), abs=1e-12)
    assert pooled.std == pytest.approx(allx.std(), abs=1e-12)


def test_request_round_trips() -> None:
    request = SummaryRequest(
        pass_no=3,
        numeric={
            "age": NumericRequest(clip=(18.0, 90.0), log=True, edges=(0.1, 0.2 + 1e-17, 1 / 3)),
            "bmi": NumericRequest(),
        },
        categorical=("sex",),
    )
    text = request.to_json()
    assert json.loads(text)["pass_no"] == 3
    assert SummaryRequest.from_json(text) == request


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "JSON object"),
        ("{", "not valid JSON"),
        ('{"pass_no": 1, "numeric": {"x": {"edges": [NaN]}}}', "NaN"),
        ('{"pass_no": 1, "numeric": {"x": {"edges": [1e999]}}}', "finite"),
        ('{"pass_no": 1, "numeric": {"x": {"edges": [2, 1]}}}', "increasing"),
        ('{"pass_no": 1, "numeric": {"x": {"clip": [2, 1]}}}', "exceeds"),
        ('{"pass_no": 1, "numeric": {"x": {"clip": [1]}}}', "clip must be"),
        ('{"pass_no": 1, "numeric": {"x": {"log": "yes"}}}', "log must be"),
        ('{"pass_no": 1, "numeric": {"x": {"sql": "drop"}}}', "unknown field"),
        ('{"pass_no": 1, "numeric": {"x; drop table": {}}}', "column name"),
        ('{"pass_no": 1, "categorical": ["a", "a"]}', "named twice"),
        ('{"pass_no": 0}', "pass_no"),
        ('{"pass_no": 1.5}', "integer"),
        ('{"numeric": {}}', "pass_no is missing"),
        ('{"pass_no": 1, "extra": 1}', "unknown field"),
        ('{"pass_no": 1, "numeric": []}', "must be an object"),
    ],
)
def test_hostile_requests_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        SummaryRequest.from_json(text)
    assert "\n" not in str(info.value)
