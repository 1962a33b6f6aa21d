"""Hostile text and hostile answers: every one is refused with a one-line error naming
what is wrong, never a traceback from deep inside."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biofed.analytics import (
    DisclosureRules,
    DPOptions,
    Query,
    QueryTable,
    Request,
    answer,
    check_answer,
    result_from_json,
    start,
)
from biofed.core import ConfigurationError, DataError, PolicyViolation, ProtocolError

GOOD = '{"kind":"describe","options":{"columns":["x"]},"where":[],"split":"all","dp":null}'


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    assert len(text) < 400
    return text


def test_a_good_query_round_trips() -> None:
    q = Query.from_json(GOOD)
    assert Query.from_json(q.to_json()) == q
    assert q.options["bounds"] == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"kind":"count","kind":"describe"}', "appears twice"),
        ('{"kind":"describe","options":{"columns":["x"],"columns":["y"]}}', "appears twice"),
        ('{"kind":"histogram","options":{"column":"x","edges":[0,NaN]}}', "not a number"),
        ('{"kind":"histogram","options":{"column":"x","edges":[0,Infinity]}}', "not a number"),
        ('{"kind":"histogram","options":{"column":"x","edges":[0,1e999]}}', "finite"),
        ('{"kind":"count","options":' + "[" * 5000 + "]" * 5000 + "}", "nested|JSON|table"),
        ('{"kind":"count","options":{' + '"a":{' * 20 + '"b":1' + "}" * 21 + "}", "nested|unknown"),
        ('{"kind":"nope"}', "unknown query kind"),
        ('{"kind":7}', "kind"),
        ('{"kind":"describe","options":{"columns":"x"}}', "columns"),
        ('{"kind":"describe","options":{"columns":["x","x"]}}', "twice"),
        ('{"kind":"describe","options":{"columns":["x"],"bounds":{"x":[2,1]}}}', "lo < hi"),
        ('{"kind":"describe","options":{"columns":["x"],"bounds":{"y":[0,1]}}}', "not a column"),
        ('{"kind":"histogram","options":{"column":"x","edges":[1]}}', "edges"),
        ('{"kind":"histogram","options":{"column":"x","edges":[0,1],"extra":1}}', "unknown option"),
        (
            '{"kind":"crosstab","options":{"rows":"a","cols":"a","row_levels":[1],"col_levels":[2]}}',
            "different",
        ),
        (
            '{"kind":"crosstab","options":{"rows":"a","cols":"b","row_levels":[1,"1"],"col_levels":[2]}}',
            "repeat",
        ),
        ('{"kind":"quantile","options":{"column":"x","probs":[1.5],"bounds":[0,1]}}', r"\[0, 1\]"),
        ('{"kind":"quantile","options":{"column":"x","probs":[0.5]}}', "bounds"),
        (
            '{"kind":"quantile","options":{"column":"x","bounds":[0,1],"tolerance":1e-300}}',
            "too fine",
        ),
        ('{"kind":"correlation","options":{"columns":["x"]}}', "2 to"),
        ('{"kind":"correlation","dp":{"mechanism":"laplace","epsilon":1}}', "no DP"),
        ('{"kind":"count","dp":{"mechanism":"laplace","epsilon":-1}}', "epsilon"),
        ('{"kind":"count","where":[{"column":"x","op":"~","value":1}]}', "operator"),
        ('"count"', "table"),
        ("[1,2]", "table"),
        ("{", "JSON"),
    ],
)
def test_hostile_query_text_is_refused(text: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as exc:
        Query.from_json(text)
    one_line(exc)


def test_huge_query_text_is_refused_before_parsing() -> None:
    text = '{"kind":"count","options":{},"pad":"' + "x" * (1 << 17) + '"}'
    with pytest.raises(ConfigurationError, match="longer than") as exc:
        Query.from_json(text)
    one_line(exc)
    with pytest.raises(ConfigurationError):
        Query.from_json(None)  # type: ignore[arg-type]


def request_dict() -> dict[str, object]:
    req = start(Query("histogram", {"column": "x", "edges": [0, 1, 2]})).request()
    return json.loads(req.to_json())  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(extra=1), "table of"),
        (lambda d: d.update({"pass": 0}), "pass"),
        (lambda d: d.update({"pass": True}), "pass"),
        (lambda d: d.update(step=""), "step"),
        (lambda d: d.update(secure="yes"), "secure"),
        (lambda d: d.update(layout={"counts": [-1]}), "sizes"),
        (lambda d: d.update(layout={"counts": [1 << 30]}), "too large"),
        (lambda d: d.update(layout={"counts": [1, 1, 1, 1]}), "sizes"),
        (lambda d: d.update(layout=[1]), "layout"),
        (lambda d: d.update(rules={"min_cell": 0}), "min_cell"),
        (lambda d: d.update(rules={"bogus": 1}), "unknown key"),
        (lambda d: d.update(state=[]), "state"),
        (lambda d: d.update(query={"kind": "nope"}), "unknown query kind"),
        (lambda d: d.update(secure=True, layout=None), "layout"),
    ],
)
def test_hostile_request_text_is_refused(change: object, match: str) -> None:
    data = request_dict()
    change(data)  # type: ignore[operator]
    with pytest.raises(ConfigurationError, match=match) as exc:
        Request.from_json(json.dumps(data))
    one_line(exc)


def test_request_with_duplicate_keys_or_nan_is_refused() -> None:
    text = start(Query("histogram", {"column": "x", "edges": [0, 1, 2]})).request().to_json()
    with pytest.raises(ConfigurationError, match="appears twice"):
        Request.from_json(text[:-1] + ',"step":"counts"}')
    with pytest.raises(ConfigurationError, match="not a number"):
        Request.from_json(text.replace('"pass":1', '"pass":NaN'))


def table(n: int = 40) -> QueryTable:
    x = np.linspace(0, 2, n)
    return QueryTable(
        name="t",
        columns={"x": x},
        kinds={"x": "numeric"},
        ids=np.arange(n),
        is_test=np.zeros(n, bool),
    )


@pytest.mark.parametrize(
    ("arrays", "records", "match"),
    [
        ({"counts": np.zeros(4), "suppressed": np.zeros(4), "more": np.zeros(1)}, 0, "layout"),
        ({"counts": np.zeros(4)}, 0, "layout"),
        ({"counts": np.zeros(5), "suppressed": np.zeros(5)}, 0, "shape"),
        ({"counts": np.array([np.nan, 0, 0, 0]), "suppressed": np.zeros(4)}, 0, "NaN"),
        ({"counts": np.array([np.inf, 0, 0, 0]), "suppressed": np.zeros(4)}, 0, "NaN"),
        ({"counts": np.zeros(4), "suppressed": np.zeros(4)}, -1, ">= 0"),
        ({"counts": np.zeros(4), "suppressed": np.zeros(4)}, 1.5, "integer"),
        ({"counts": np.array([-1.0, 0, 0, 0]), "suppressed": np.zeros(4)}, 0, "counts"),
        ({"counts": np.array([0.5, 0, 0, 0]), "suppressed": np.zeros(4)}, 1, "counts"),
        ({"counts": np.array([5.0, 0, 0, 0]), "suppressed": np.zeros(4)}, 2, "more values"),
        ({"counts": np.zeros(4), "suppressed": np.full(4, 2.0)}, 0, "0/1"),
        ({"counts": np.zeros((4, 4, 4, 4)), "suppressed": np.zeros(4)}, 0, "dimensions"),
    ],
)
def test_hostile_answers_are_refused(
    arrays: dict[str, np.ndarray], records: int, match: str
) -> None:
    req = start(Query("histogram", {"column": "x", "edges": [0, 1, 2]})).request()
    with pytest.raises(ProtocolError, match=match) as exc:
        check_answer(req, arrays, records)
    one_line(exc)


def test_count_and_describe_answers_must_add_up() -> None:
    req = start(Query("count")).request()
    with pytest.raises(ProtocolError, match="differ"):
        check_answer(req, {"count": np.array([50.0]), "suppressed": np.zeros(1)}, 10)
    req = start(Query("describe", {"columns": ["x"]})).request()
    arrays = {k: np.zeros(1) for k in ("n", "sum", "sumsq", "dominated", "suppressed")}
    arrays["sumsq"] = np.array([-1.0])
    with pytest.raises(ProtocolError, match="sum of squares"):
        check_answer(req, arrays, 0)
    req = start(Query("correlation", {"columns": ["x", "y"]})).request()
    good = {"n": np.array([3.0]), "sum": np.zeros(2), "cross": np.eye(2), "suppressed": np.zeros(1)}
    assert check_answer(req, good, 3).records == 3
    with pytest.raises(ProtocolError, match="differ"):
        check_answer(req, good, 4)


def test_a_site_refuses_what_it_cannot_answer() -> None:
    t = table()
    with pytest.raises(DataError, match="no column"):
        answer(start(Query("describe", {"columns": ["nope"]})).request(), t)
    req = start(Query("count", dp=DPOptions("laplace", 1.0))).request()
    with pytest.raises(PolicyViolation, match="noise"):
        answer(req, t)
    loose = DisclosureRules(min_cell=2)
    req = start(Query("count"), loose, secure=True).request()
    with pytest.raises(PolicyViolation, match="looser"):
        answer(req, t, DisclosureRules(min_cell=20))


def test_a_site_refuses_a_forged_quantile_state() -> None:
    query = Query("quantile", {"column": "x", "bounds": [0, 2], "bins": 4})
    good = start(query).request()
    for edges in ([[0, 1, 2]], [[0, 2, 1, 3, 4]], "x", [[0, 1, 2, 3, "a"]]):
        forged = Request(
            query=query, pass_no=2, step="bins", state={"edges": edges}, layout=good.layout
        )
        with pytest.raises((ProtocolError, ConfigurationError)) as exc:
            answer(forged, table())
        one_line(exc)


@pytest.mark.parametrize(
    "text",
    [
        '{"kind":"count"}',
        '{"kind":"describe","stats":[{"column":"x"}],"sites":1,"dp":false}',
        '{"kind":"histogram","column":"x","edges":"ab"}',
        '{"kind":"crosstab","rows":1}',
        '{"kind":"correlation","columns":["a"],"n":"many"}',
        '{"kind":"quantile","column":"x","probs":[0.5],"values":[1],"errors":[1],"n":1}',
        '{"kind":"count","count":1,"count":2,"sites":1,"dp":false}',
    ],
)
def test_malformed_stored_results_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError) as exc:
        result_from_json(text)
    one_line(exc)
