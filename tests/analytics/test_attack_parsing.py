"""Hostile query text: a forged Query, Request or analysis job must be refused in one line
naming what is wrong (ConfigurationError / DataError / ProtocolError), never a traceback,
a silent reinterpretation or a hang."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biofed.analytics import DisclosureRules, Query, QueryTable, Request, answer, start
from biofed.coordinator import AnalysisJob, run_spec_from_json
from biofed.core import BiofedError, ConfigurationError, DataError

RULES = DisclosureRules()


def _table() -> QueryTable:
    n = 40
    return QueryTable(
        name="t",
        columns={"age": np.linspace(20, 80, n), "sex": np.asarray(["F", "M"] * 20, object)},
        kinds={"age": "numeric", "sex": "categorical"},
        ids=np.arange(n),
        is_test=np.zeros(n, bool),
    )


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    assert len(text) < 400, text
    return text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('{"kind":"count","kind":"describe"}', "appears twice"),
        ('{"kind":"histogram","options":{"column":"age","edges":[0,NaN]}}', "NaN"),
        ('{"kind":"histogram","options":{"column":"age","edges":[0,1e400]}}', "finite"),
        ('{"kind":"histogram","options":{"column":"age","edges":[0,Infinity]}}', "Infinity"),
        ('{"kind":"count","where":[{"column":"age","op":">","value":' + "9" * 5000 + "}]}", ""),
        ('{"kind":"count","options":{"a":' + "[" * 50 + "]" * 50 + "}}", ""),
        ('{"kind":"count","dp":{"mechanism":"laplace","epsilon":1e308}}', "epsilon"),
        ('{"kind":"count","dp":{"mechanism":"laplace","epsilon":0.5,"delta":0.1}}', "delta"),
        ('{"kind":"count","surprise":1}', "a query is a table of"),
        ('{"kind":"count","split":"everything"}', "split"),
        ('{"kind":["count"]}', "kind"),
        ('{"kind":"sql","options":{"q":"select *"}}', "unknown query kind"),
        ('{"kind":"count","where":[{"column":"age\\u200b","op":"==","value":1}]}', "column"),
        ('{"kind":"count","where":[{"column":"age\\u202e","op":"==","value":1}]}', "column"),
        ('{"kind":"count","where":[{"column":"age","op":"in","value":[]}]}', "non-empty"),
        ('{"kind":"count","where":[{"column":"age","op":"missing","value":1}]}', "no value"),
        (
            '{"kind":"count","where":' + json.dumps([{"column": "a", "op": "present"}] * 33) + "}",
            "",
        ),
        ('{"kind":"describe","options":{"columns":["age","age"]}}', "twice"),
        (
            '{"kind":"crosstab","options":{"rows":"sex","cols":"sex","row_levels":["F"],'
            '"col_levels":["F"]}}',
            "different",
        ),
        ('{"kind":"km","options":{"time":"t","event":"e","grid":{"step":1e-9,"stop":1e9}}}', ""),
        ("[" * 100_000 + "]" * 100_000, ""),
        ("x" * (1 << 17), "longer than"),
    ],
)
def test_hostile_query_json_is_refused_in_one_line(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        Query.from_json(text)
    assert fragment in _one_line(refused)


def _request_dict() -> dict[str, object]:
    return json.loads(start(Query("count"), RULES).request().to_json())


@pytest.mark.parametrize(
    "change",
    [
        {"pass": 0},
        {"pass": 1001},
        {"pass": True},
        {"secure": "true"},
        {"layout": {"count": [-1], "suppressed": [1]}},
        {"layout": {"count": [True], "suppressed": [1]}},
        {"layout": {"count": [1 << 30], "suppressed": [1]}},
        {"layout": {"count": [1, 1, 1, 1], "suppressed": [1]}},
        {"rules": {"min_cell": 0}},
        {"rules": {"min_cell": 1.5}},
        {"rules": {"dominance": 2}},
        {"rules": {"min_cel": 3}},
        {"state": {"grid": list(range(10_001))}},
        {"state": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
        {"step": ""},
        {"step": "x" * 41},
        {"extra": 1},
        {"secure": True, "layout": None},
    ],
)
def test_hostile_request_json_is_refused_in_one_line(change: dict[str, object]) -> None:
    data = {**_request_dict(), **change}
    with pytest.raises(ConfigurationError) as refused:
        Request.from_json(json.dumps(data))
    _one_line(refused)


def test_a_request_longer_than_a_megabyte_is_refused_before_parsing() -> None:
    data = _request_dict()
    data["state"] = {"pad": "x" * (1 << 20)}
    with pytest.raises(ConfigurationError, match="longer than") as refused:
        Request.from_json(json.dumps(data))
    _one_line(refused)


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ({"column": "age", "op": ">", "value": "50"}, DataError),  # text vs numbers
        ({"column": "age", "op": "in", "value": [1, "a"]}, DataError),
        ({"column": "sex", "op": ">", "value": "F"}, DataError),  # order on text
        ({"column": "weight", "op": ">", "value": 1}, DataError),  # a column it lacks
    ],
)
def test_filters_of_the_wrong_type_are_refused_at_the_site(
    where: dict[str, object], error: type[BiofedError]
) -> None:
    q = Query.from_dict({"kind": "count", "where": [where]})
    req = start(q, RULES).request()
    with pytest.raises(error) as refused:
        answer(req, _table(), RULES)
    _one_line(refused)


def test_a_probe_for_a_missing_column_names_no_row_data() -> None:
    q = Query.from_dict({"kind": "count", "where": [{"column": "hiv", "op": "==", "value": 1}]})
    with pytest.raises(DataError) as refused:
        answer(start(q, RULES).request(), _table(), RULES)
    text = _one_line(refused)
    assert "hiv" in text
    assert "20" not in text


JOB = """
[run]
name = "probe"
dataset = "brca"
min_nodes = 3
min_replies = 3

[analysis]
kind = "histogram"
column = "age"
"""


@pytest.mark.parametrize(
    "tail",
    [
        "edges = [0, nan]\n",
        "edges = [0, inf]\n",
        "edges = [0, 1]\nedges = [0, 2]\n",  # a duplicate key
        'edges = [0, 1]\n[[analysis.where]]\ncolumn = "age"\nop = ">"\nvalue = nan\n',
        'edges = [0, 1]\n[[analysis.where]]\ncolumn = "age"\nop = ">"\nvalue = {a = 1}\n',
        'edges = [0, 1]\n[analysis.dp]\nmechanism = "laplace"\nepsilon = nan\n',
        'edges = [0, 1]\n[analysis.dp]\nmechanism = "laplace"\nepsilon = 1e999\n',
        "edges = [0, 1]\n[analysis.rules]\ndominance = 1.5\n",
        "edges = [0, 1]\ncolumns = 3\n",  # an option the kind does not know
        "edges = [[[[[[0]]]]]]\n",
    ],
)
def test_hostile_analysis_jobs_are_refused_in_one_line(tail: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        AnalysisJob.from_toml(JOB + tail)
    _one_line(refused)


def test_a_job_json_with_a_forged_query_is_refused_like_the_toml() -> None:
    good = AnalysisJob.from_toml(JOB + "edges = [0, 1]\n").to_json()
    with pytest.raises(ConfigurationError) as refused:
        run_spec_from_json(good.replace('"edges":[0.0,1.0]', '"edges":[1.0,0.0]'))
    _one_line(refused)
