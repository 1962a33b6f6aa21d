"""The differencing rule on released cells: a histogram's bins, a crosstab's cells and
margins, a quantile pass's bins are row sets the node's query log compares with other
queries' cohorts and cells (the narrow-bin and margin attacks), site-side only."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import pytest

from biofed.analytics import (
    Answer,
    DisclosureRules,
    DPOptions,
    Query,
    QueryTable,
    Result,
    SeededNoise,
    answer,
    check_answer,
    released_cells,
    start,
)
from biofed.core import Instruction, MessageKind, ParameterSet, PolicyViolation
from biofed.core.sections import JobSection, RoundDirectives
from biofed.data import Dataset, SiteData
from biofed.node._queries import SiteQueries
from biofed.node._query_log import MAX_SETS_PER_ANSWER, MEMORY, QueryLog
from biofed.node._sites import SiteTasks

RULES = DisclosureRules()


def _table(x: np.ndarray, **more: np.ndarray) -> QueryTable:
    columns = {"x": x, **more}
    n = len(x)
    return QueryTable(
        name="t",
        columns=columns,
        kinds=dict.fromkeys(columns, "numeric"),
        ids=np.arange(1000, 1000 + n),
        is_test=np.zeros(n, dtype=bool),
    )


def _sets(query: Query, t: QueryTable, *, secure: bool = False) -> tuple[Answer, list[set[int]]]:
    request = start(query, RULES, secure=secure).request()
    out = answer(request, t, RULES, noise=SeededNoise(0))
    return out, [set(ids.tolist()) for ids in released_cells(request, t, out, RULES)]


# -- what a kind reports ------------------------------------------------------------------------
def test_a_histogram_reports_the_rows_of_each_released_bin_only() -> None:
    x = np.array([1.0] * 12 + [5.0] * 3 + [9.0] * 15 + [20.0] * 11 + [np.nan] * 4)
    t = _table(x)
    out, sets = _sets(Query("histogram", {"column": "x", "edges": [0, 4, 8, 12]}), t)
    flags = out.arrays["suppressed"]
    assert flags[2] == 1  # the bin of 3 is suppressed (and a complement with it)
    ids = np.asarray(t.ids)
    expected = {
        frozenset(ids[(x >= a) & (x < b)].tolist())
        for i, (a, b) in enumerate([(-np.inf, 0), (0, 4), (4, 8), (8, 12.0001), (12, np.inf)])
        if flags[i] == 0 and out.arrays["counts"][i] > 0
    }
    assert {frozenset(s) for s in sets} == expected
    assert all(len(s) >= RULES.min_cell for s in sets)
    # the cells are site-side only: the answer that travels is what it was
    assert set(out.arrays) == {"counts", "suppressed"}


def test_a_secure_histogram_reports_every_non_empty_bin() -> None:
    x = np.array([1.0] * 12 + [5.0] * 3 + [9.0] * 15)
    _, sets = _sets(
        Query("histogram", {"column": "x", "edges": [0, 4, 8, 12]}), _table(x), secure=True
    )
    assert sorted(len(s) for s in sets) == [3, 12, 15]  # the coordinator may publish any


def test_a_crosstab_reports_its_cells_margins_and_total() -> None:
    r = np.array([0.0] * 40 + [1.0] * 40)
    c = np.array([0.0] * 37 + [1.0] * 3 + [0.0] * 20 + [1.0] * 20)
    t = _table(np.zeros(80), r=r, c=c)
    q = Query("crosstab", {"rows": "r", "cols": "c", "row_levels": [0, 1], "col_levels": [0, 1]})
    _, secure = _sets(q, t, secure=True)
    sizes = sorted(len(s) for s in secure)
    # 4 cells, 2 row margins, 2 column margins, the total
    assert sizes == sorted([37, 3, 20, 20, 40, 40, 57, 23, 80])
    out, plain = _sets(q, t)
    assert out.arrays["suppressed"].sum() >= 2  # the cell of 3 and its complements
    assert all(len(s) >= RULES.min_cell for s in plain)
    assert not any(len(s) == 40 and s >= set(range(1000, 1040)) for s in plain)  # no margin over it


def test_no_cells_for_a_dp_query_a_small_cohort_or_a_kind_without_cells() -> None:
    x = np.arange(50.0)
    t = _table(x)
    dp = Query.from_dict(
        {
            "kind": "histogram",
            "options": {"column": "x", "edges": [0, 25, 50]},
            "dp": {"mechanism": "laplace", "epsilon": 1.0},
        }
    )
    assert isinstance(dp.dp, DPOptions)
    assert _sets(dp, t)[1] == []
    few = Query.from_dict(
        {
            "kind": "histogram",
            "options": {"column": "x", "edges": [0, 25, 50]},
            "where": [{"column": "x", "op": "<", "value": 5}],
        }
    )
    assert _sets(few, t)[1] == []
    assert _sets(Query("describe", {"columns": ["x"]}), t)[1] == []


def test_quantile_cells_cover_each_bracket_of_the_pass() -> None:
    x = np.random.default_rng(0).uniform(0, 100, 200)
    q = Query("quantile", {"column": "x", "probs": [0.5], "bounds": [0, 100], "bins": 4})
    _, sets = _sets(q, _table(x), secure=True)
    assert sorted(len(s) for s in sets) == sorted(
        int(((x >= a) & (x < b)).sum()) for a, b in [(0, 25), (25, 50), (50, 75), (75, 101)]
    )


# -- through the node ---------------------------------------------------------------------------
def _site(x: np.ndarray) -> SiteQueries:
    train = Dataset(
        name="d",
        features=x.reshape(-1, 1).astype(np.float32),
        feature_names=("x",),
        targets={},
    )
    tasks = SiteTasks("a", {"d": SiteData(train=train)}, (), allow_weaker=(), sources={})
    return SiteQueries("a", tasks, QueryLog(MEMORY), RULES, None)


def _run(site: SiteQueries, query: Query, run_id: str, *, secure: bool = False) -> Result:
    """The coordinator's loop over one site (secure: its vector stands for the sum)."""
    from biofed.analytics import secure_vector, total_from_vector

    analysis = start(query, RULES, secure=secure)
    while not analysis.done:
        request = analysis.request()
        inst = Instruction(
            run_id=run_id,
            round=request.pass_no,
            node_id="a",
            kind=MessageKind.QUERY,
            parameters=ParameterSet(),
            job=JobSection(dataset="d"),
            directives=RoundDirectives(query_request=request.to_json()),
        )
        req, out = site.answer(inst, None, secure=secure)
        checked = check_answer(req, dict(out.arrays), out.records)
        if secure:
            total = total_from_vector(req, secure_vector(req, checked))
            analysis = analysis.add_total(total, ["a"])
        else:
            analysis = analysis.add({"a": checked})
    return analysis.result()


def test_shifted_quantile_queries_through_the_site_are_refused() -> None:
    # the attack of tests/analytics/test_attack_disclosure.py against a real site: twenty
    # medians with shifted bounds would intersect their brackets around the median patient
    x = np.random.default_rng(4).uniform(0, 100, 201).astype(np.float32).astype(np.float64)
    site = _site(x)
    lo, hi = -np.inf, np.inf
    refused = 0
    for i, shift in enumerate(np.linspace(0.0, 9.5, 20)):
        q = Query(
            "quantile",
            {
                "column": "x",
                "probs": [0.5],
                "bounds": [-10 + float(shift), 110 + float(shift)],
                "tolerance": 0.01,
                "bins": 8,
            },
        )
        try:
            res = _run(site, q, f"r-{i}", secure=True).to_dict()
        except PolicyViolation:
            refused += 1
            continue
        lo, hi = (
            max(lo, res["values"][0] - res["errors"][0]),
            min(hi, res["values"][0] + res["errors"][0]),
        )
    assert refused > 0
    assert lo <= np.median(x) <= hi
    assert int(((x >= lo) & (x <= hi)).sum()) >= RULES.min_cell


def test_the_same_histogram_again_and_coarser_bins_far_apart_are_answered() -> None:
    x = np.floor(np.random.default_rng(1).uniform(30, 80, 300))
    site = _site(x)
    tens = Query("histogram", {"column": "x", "edges": [30, 40, 50, 60, 70, 80]})
    _run(site, tens, "r-1")
    _run(site, tens, "r-2")  # the same cells again: nothing new
    _run(site, Query("describe", {"columns": ["x"]}), "r-3")
    halves = Query("histogram", {"column": "x", "edges": [30, 55, 80]})
    _run(site, halves, "r-4")  # each cell far from every ten-year bin


def test_five_year_bins_after_ten_year_bins_are_refused_when_a_cell_is_close() -> None:
    # [30, 35) beside [30, 40) is no attack, but [30, 40) minus [30, 35) is [35, 40):
    # refused only where a cell of one lies 1..k-1 records from a cell of the other
    x = np.concatenate([np.full(40, 31.0), np.full(3, 37.0), np.full(20, 42.0), np.full(40, 47.0)])
    site = _site(x)
    _run(site, Query("histogram", {"column": "x", "edges": [30, 40, 50]}), "r-1")
    # [35, 40) (3) is suppressed with a complement, but [30, 35) is released: 3 from [30, 40)
    with pytest.raises(PolicyViolation, match="released cells"):
        _run(site, Query("histogram", {"column": "x", "edges": [30, 35, 40, 45, 50]}), "r-2")


# -- the log's bound and cost -----------------------------------------------------------------
def _digest() -> str:
    return hashlib.sha256(os.urandom(16)).hexdigest()


def test_an_answer_releasing_too_many_cells_is_refused_naming_the_limit() -> None:
    log = QueryLog(MEMORY)
    sets: list[Any] = [np.arange(i * 10, i * 10 + 10) for i in range(MAX_SETS_PER_ANSWER + 1)]
    with pytest.raises(PolicyViolation, match=f"more than {MAX_SETS_PER_ANSWER} non-empty cells"):
        log.check_and_record("d", *sets, min_difference=10, run_id="r", query_sha256=_digest())
    assert log.cohorts("d") == 0
    log.check_and_record(
        "d", *sets[:MAX_SETS_PER_ANSWER], min_difference=10, run_id="r", query_sha256=_digest()
    )
    assert log.cohorts("d") == MAX_SETS_PER_ANSWER


def test_cells_of_one_answer_are_not_compared_with_each_other_but_with_other_queries() -> None:
    log = QueryLog(MEMORY)
    margin, cell = np.arange(60), np.arange(57)  # a row margin and its cell: 3 apart
    log.check_and_record("d", margin, cell, min_difference=10, run_id="r", query_sha256=_digest())
    with pytest.raises(PolicyViolation):
        log.check_and_record(
            "d", np.arange(58), min_difference=10, run_id="s", query_sha256=_digest()
        )
