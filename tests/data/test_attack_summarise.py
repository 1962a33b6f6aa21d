"""Attacks on a site's SUMMARISE path at the data layer (issue 13): a hostile coordinator's
summary request, and what small counts a summary could leak.

Every hostile request must end in one :class:`DataError` line (never another exception), and
no count below the site's disclosure threshold may leave the site in a summary's outcome.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from biofed.core import DataError
from biofed.data import (
    ColumnPlan,
    ExtractedTable,
    PreprocessingFit,
    SummaryRequest,
    heterogeneity_report,
    summarise,
)

MIN_CELL = 10


def table(n: int = 200, *, cases: int = 40, outcome: str = "binary") -> ExtractedTable:
    rng = np.random.default_rng(7)
    hit = np.zeros(n)
    hit[:cases] = 1.0
    targets = (
        {"label": hit} if outcome == "binary" else {"time": rng.uniform(1, 365, n), "event": hit}
    )
    return ExtractedTable(
        name="site",
        ids=np.arange(n, dtype=np.int64),
        columns={
            "age": rng.normal(50, 10, n),
            "sex": rng.choice(np.array(["f", "m"], dtype=object), n),
        },
        kinds={"age": "numeric", "sex": "categorical"},
        outcome_kind=outcome,
        targets=targets,
        is_test=np.zeros(n, dtype=bool),
    )


def ask(body: object) -> SummaryRequest:
    return SummaryRequest.from_json(body if isinstance(body, str) else json.dumps(body))


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"pass_no": 1, "numeric": {"age": {"edges": list(range(10**6))}}}),
        json.dumps({"pass_no": 1, "numeric": {"age": {"edges": list(range(5000))}}}),
        '{"pass_no": 1, "numeric": {"age": {"edges": [NaN]}}}',
        '{"pass_no": 1, "numeric": {"age": {"clip": [-Infinity, 1]}}}',
        '{"pass_no": 1, "numeric": {"age": {"clip": [-1e400, 1]}}}',
        '{"pass_no": 1, "numeric": {"age": {"clip": [' + "9" * 5000 + ", 1]}}}",
        json.dumps({"pass_no": 1, "numeric": {"age": {"edges": [3, 2]}}}),
        json.dumps({"pass_no": 1, "numeric": {"age": {"clip": [5, 1]}}}),
        json.dumps({"pass_no": 1, "numeric": {"age": {"log": 1}}}),
        json.dumps({"pass_no": 1, "numeric": {"age; DROP TABLE person": {}}}),
        json.dumps({"pass_no": 1, "numeric": {"x" * 10_000: 1}}),
        json.dumps({"pass_no": 1, "categorical": ["sex", "sex"]}),
        json.dumps({"pass_no": 1, "categorical": [1]}),
        json.dumps({"pass_no": 10**30}),
        json.dumps({"pass_no": True}),
        json.dumps({"numeric": {}}),
        json.dumps({"pass_no": 1, "rows": True}),
        "[" * 100_000 + "]" * 100_000,
        " " * 5_000_000,
        "not json",
    ],
    ids=lambda t: t[:40],
)
def test_a_hostile_summary_request_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(DataError) as info:
        summarise(table(), ask(text), min_cell=MIN_CELL)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"pass_no": 1, "numeric": {"weight": {}}},  # not in the spec
        {"pass_no": 1, "numeric": {"sex": {}}},  # categorical asked as numeric
        {"pass_no": 1, "categorical": ["age"]},  # numeric asked as categorical
        {"pass_no": 1, "numeric": {"age": {"log": True, "clip": [-5.0, -2.0]}}},
    ],
)
def test_a_request_that_does_not_match_the_table_is_refused(body: object) -> None:
    with pytest.raises(DataError):
        summarise(table(), ask(body), min_cell=MIN_CELL)


def test_absurd_but_valid_edges_give_a_consistent_histogram_and_nothing_else() -> None:
    request = ask({"pass_no": 1, "numeric": {"age": {"edges": [-1.7e308, 1.7e308]}}})
    summary = summarise(table(), request, min_cell=MIN_CELL)
    assert summary.numeric["age"].counts == (0, 200, 0)


def test_a_site_below_the_threshold_does_not_answer_at_all() -> None:
    with pytest.raises(DataError, match="does not answer"):
        summarise(table(n=9, cases=0), ask({"pass_no": 1}), min_cell=MIN_CELL)


@pytest.mark.parametrize("cases", [1, 5, 9, 191, 199])
@pytest.mark.parametrize("outcome", ["binary", "time_to_event"])
def test_a_small_count_of_cases_or_non_cases_does_not_leave_the_site(
    cases: int, outcome: str
) -> None:
    summary = summarise(table(cases=cases, outcome=outcome), ask({"pass_no": 1}), min_cell=10)
    key = "positives" if outcome == "binary" else "events"
    assert key not in summary.outcome
    assert summary.outcome["n"] == 200
    arrays = summary.to_arrays()
    assert f"outcome/{key}" not in arrays


@pytest.mark.parametrize("cases", [0, 10, 100, 190, 200])
def test_a_safe_count_of_cases_is_released(cases: int) -> None:
    summary = summarise(table(cases=cases), ask({"pass_no": 1}), min_cell=10)
    assert summary.outcome["positives"] == cases


def test_a_fit_and_a_heterogeneity_report_accept_a_site_that_withheld_its_cases() -> None:
    sites = {"rare": table(cases=3), "common": table(cases=80)}
    fit = PreprocessingFit.from_plans(
        {"age": ColumnPlan(kind="numeric"), "sex": ColumnPlan(kind="categorical")},
        outcome_kind="binary",
    )
    while not fit.done:
        request = fit.request()
        fit = fit.add({k: summarise(t, request, min_cell=MIN_CELL) for k, t in sites.items()})
    assert fit.result().feature_names
    report = heterogeneity_report(fit.last_summaries, min_cell=MIN_CELL)
    overview = {s.site: s for s in report.sites}
    assert overview["rare"].outcome is None
    assert overview["common"].outcome is None or overview["common"].outcome > 0
