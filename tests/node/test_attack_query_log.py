"""Attacks on a site's query log (the differencing rule) and its query path, as a curious
researcher would chain queries: the site is the node's real :class:`SiteQueries` over a
real table with a real :class:`QueryLog`; each query is a QUERY instruction as the
coordinator sends it.

A passing test shows the defence holds; ``xfail(strict=True)`` marks a weakness left to
its owner (the reason says what leaks).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from biofed.analytics import (
    CountResult,
    CrosstabResult,
    DescribeResult,
    DisclosureRules,
    HistogramResult,
    Query,
    QueryTable,
    Request,
    Result,
    check_answer,
    secure_vector,
    start,
    total_from_vector,
)
from biofed.core import DataError, Instruction, MessageKind, ParameterSet, PolicyViolation
from biofed.core.sections import JobSection, RoundDirectives, StudySection
from biofed.data import Dataset, SiteData, StudySpec
from biofed.node._queries import SiteQueries, _cohorts
from biofed.node._query_log import MEMORY, QueryLog
from biofed.node._sites import SiteTasks

RULES = DisclosureRules()
N = 120


def _site_data(seed: int = 0, event_17: float = 1.0) -> SiteData:
    rng = np.random.default_rng(seed)
    age = np.floor(rng.uniform(30, 80, N))
    age[17] = 55.25  # one patient's unique age (exact in float32)
    i = np.arange(N)
    sex = (i % 2).astype(np.float32)  # 0: women (even rows)
    smoker = (((i % 3 == 0) & (i % 2 == 1)) | np.isin(i, (0, 2, 4))).astype(np.float32)
    # three women smoke (rows 0, 2, 4): the crosstab's suppressed cell
    features = np.column_stack([age, sex, smoker]).astype(np.float32)
    train = Dataset(
        name="brca",
        features=features,
        feature_names=("age", "sex", "smoker"),
        targets={"time": rng.exponential(5.0, N), "event": np.where(i == 17, event_17, 1.0)},
    )
    return SiteData(train=train)


def _site(log: QueryLog | None = None, event_17: float = 1.0, **sources: Any) -> SiteQueries:
    data = {"brca": _site_data(event_17=event_17)}
    tasks = SiteTasks("a", data, (), allow_weaker=(), sources=sources)
    return SiteQueries("a", tasks, log or QueryLog(MEMORY), RULES, None)


def _inst(
    query: Query, *, run_id: str = "q-1", dataset: str = "brca", secure: bool = False, **job: Any
) -> Instruction:
    request = start(query, RULES, secure=secure).request()
    return Instruction(
        run_id=run_id,
        round=1,
        node_id="a",
        kind=MessageKind.QUERY,
        parameters=ParameterSet(),
        job=JobSection(dataset=dataset, **job),
        directives=RoundDirectives(query_request=request.to_json()),
    )


def _ask(site: SiteQueries, query: Query, *, secure: bool = False, **kw: Any) -> Result:
    """One-pass query answered by ``site`` alone, combined as the coordinator would (in
    secure mode, the site's vector as the sum)."""
    inst = _inst(query, secure=secure, **kw)
    request, out = site.answer(inst, None, secure=secure)
    analysis = start(query, RULES, secure=secure)
    checked = check_answer(request, dict(out.arrays), out.records)
    if secure:
        total = total_from_vector(request, secure_vector(request, checked))
        return analysis.add_total(total, ["a"]).result()
    return analysis.add({"a": checked}).result()


def _where(*filters: tuple[str, str, Any]) -> list[dict[str, Any]]:
    return [{"column": c, "op": op, "value": v} for c, op, v in filters]


# -- pairwise differencing ---------------------------------------------------------------------
def test_describe_with_and_without_one_patient_is_refused_even_under_another_run() -> None:
    site = _site()
    first = _ask(site, Query("describe", {"columns": ["age"]}), run_id="r-1")
    assert isinstance(first, DescribeResult)
    assert first.column("age")["sum"] is not None
    drop_one = Query.from_dict(
        {"kind": "describe", "options": {"columns": ["age"]}, "where": _where(("age", "!=", 55.25))}
    )
    with pytest.raises(PolicyViolation, match="differs by fewer than 10"):
        _ask(site, drop_one, run_id="r-2")


def test_a_chain_is_checked_against_every_logged_cohort_not_only_the_last() -> None:
    site = _site()
    _ask(site, Query("count"), run_id="r-1")  # everyone
    older = Query.from_dict({"kind": "count", "where": _where(("age", ">", 60))})
    _ask(site, older, run_id="r-2")  # far from the first
    drop_one = Query.from_dict({"kind": "count", "where": _where(("age", "!=", 55.25))})
    with pytest.raises(PolicyViolation):
        _ask(site, drop_one, run_id="r-3")  # one away from the first, not from the second


def test_the_log_spans_agreements_on_the_same_dataset() -> None:
    site = _site()
    _ask(site, Query("count"), run_id="r-1", agreement="study-a")
    drop_one = Query.from_dict({"kind": "count", "where": _where(("age", "!=", 55.25))})
    with pytest.raises(PolicyViolation):
        _ask(site, drop_one, run_id="r-2", agreement="study-b")


def _observe(site: SiteQueries, query: Query, run_id: str) -> object:
    try:
        result = _ask(site, query, run_id=run_id)
    except PolicyViolation:
        return "refused"
    assert isinstance(result, CountResult)
    return result.count


def test_a_filter_singling_out_one_patient_does_not_tell_their_event_by_zero() -> None:
    q = Query.from_dict(
        {"kind": "count", "where": _where(("age", "==", 55.25), ("event", "==", 1))}
    )
    seen = {e: _observe(_site(event_17=e), q, "r-1") for e in (0.0, 1.0)}
    assert seen[0.0] == seen[1.0], seen


def test_the_logs_refusal_does_not_tell_a_singled_out_patients_event() -> None:
    first = Query.from_dict({"kind": "count", "where": _where(("age", "==", 55.25))})
    second = Query.from_dict(
        {"kind": "count", "where": _where(("age", "==", 55.25), ("event", "==", 1))}
    )
    seen = {}
    for e in (0.0, 1.0):
        site = _site(event_17=e)
        _observe(site, first, "r-1")
        seen[e] = "refused" if _observe(site, second, "r-2") == "refused" else "answered"
    assert seen[0.0] == seen[1.0], seen


def test_the_same_query_again_is_answered_and_changes_nothing() -> None:
    site = _site()
    a = _ask(site, Query("count"), run_id="r-1")
    b = _ask(site, Query("count"), run_id="r-2")
    assert isinstance(a, CountResult)
    assert a.count == b.count == N


def test_a_filter_on_a_column_the_site_lacks_is_refused_naming_no_values() -> None:
    site = _site()
    probe = Query.from_dict({"kind": "count", "where": _where(("hiv_status", "==", 1))})
    with pytest.raises(DataError) as info:
        _ask(site, probe)
    assert "hiv_status" in str(info.value)
    assert "55.25" not in str(info.value)


def test_describe_on_two_columns_then_one_where_the_other_is_present_is_refused() -> None:
    # describe [x, y] answers x on every row with x, though the complete cases of (x, y)
    # leave out the one patient missing y; describe [x] where y is present then answers x
    # on exactly those complete cases: the two sums of x differ by that patient's x
    rng = np.random.default_rng(2)
    y = rng.normal(size=N)
    y[9] = np.nan
    table = QueryTable(
        name="brca",
        columns={"x": rng.normal(50, 5, N), "y": y},
        kinds={"x": "numeric", "y": "numeric"},
        ids=np.arange(N),
        is_test=np.zeros(N, bool),
    )
    log = QueryLog(MEMORY)

    def ask(query: Query) -> None:
        request = Request(query=query, pass_no=1, step="sums", layout={"n": (1,)})
        log.check_and_record(
            "brca",
            *_cohorts(table, request),
            min_difference=10,
            run_id="r",
            query_sha256=query.digest,
        )

    ask(Query("describe", {"columns": ["x", "y"]}))
    with pytest.raises(PolicyViolation):
        ask(
            Query.from_dict(
                {
                    "kind": "describe",
                    "options": {"columns": ["x"]},
                    "where": [{"column": "y", "op": "present"}],
                }
            )
        )


# -- the same cohort, different cells ----------------------------------------------------------
def test_histograms_with_shifted_edges_do_not_isolate_one_patient() -> None:
    site = _site()
    a = _ask(site, Query("histogram", {"column": "age", "edges": [55.1, 90]}), run_id="r-1")
    try:
        b = _ask(site, Query("histogram", {"column": "age", "edges": [55.5, 90]}), run_id="r-2")
    except PolicyViolation:
        return
    assert isinstance(a, HistogramResult)
    assert isinstance(b, HistogramResult)
    assert a.below is not None
    assert b.below is not None
    assert b.below - a.below != 1  # one patient with age in [55.1, 55.5)


def test_a_suppressed_crosstab_cell_is_not_recovered_with_a_count() -> None:
    site = _site()
    tab = _ask(
        site,
        Query(
            "crosstab",
            {"rows": "sex", "cols": "smoker", "row_levels": [0, 1], "col_levels": [0, 1]},
        ),
        run_id="r-1",
        secure=True,  # the coordinator protects the table: its margins are published
    )
    assert isinstance(tab, CrosstabResult)
    assert tab.counts[0][1] is None  # three women smoke
    women = tab.row_totals[0]
    q = Query.from_dict({"kind": "count", "where": _where(("sex", "==", 0), ("smoker", "==", 0))})
    try:
        rest = _ask(site, q, run_id="r-2")
    except PolicyViolation:
        return
    assert isinstance(rest, CountResult)
    assert women is not None
    assert rest.count is not None
    assert women - rest.count >= RULES.min_cell or women - rest.count == 0


# -- studies on one dataset share one log -----------------------------------------------------
@pytest.mark.slow
def test_two_study_specs_on_one_dataset_share_the_query_log() -> None:
    # the same OMOP dataset under two study specs (one merely renamed): their tables are
    # named after the studies, but the rows are the same persons — a query one patient
    # away under the second study must meet the first study's logged cohort
    from biofed.datasets import eunomia_path, gi_bleed_study

    first = gi_bleed_study()
    doc = copy.deepcopy(first.to_mapping())
    doc["study"]["name"] = "gi-bleed-renamed"
    second = StudySpec.from_mapping(doc, where="test")
    site = _site(eunomia=str(eunomia_path()))

    def section(spec: StudySpec) -> StudySection:
        return StudySection(spec=spec.to_json(), digest=spec.digest)

    _ask(site, Query("describe", {"columns": ["age"]}), dataset="eunomia", study=section(first))
    ages = site.table(JobSection(dataset="eunomia", study=section(first))).column("age")
    values, counts = np.unique(ages[~np.isnan(ages)], return_counts=True)
    rare = float(values[counts == counts.min()][0])
    near = Query.from_dict(
        {"kind": "describe", "options": {"columns": ["age"]}, "where": _where(("age", "!=", rare))}
    )
    assert 0 < counts.min() < RULES.min_difference
    with pytest.raises(PolicyViolation, match="differs by fewer than"):
        _ask(site, near, dataset="eunomia", study=section(second), run_id="r-2")


def test_a_singled_out_patients_event_is_not_told_in_secure_mode_either() -> None:
    # the site cannot suppress a summed value: it sends zeros with the suppressed flag
    # set, for 0 and 1..k-1 selected rows alike
    q = Query.from_dict(
        {"kind": "count", "where": _where(("age", "==", 55.25), ("event", "==", 1))}
    )
    seen = []
    for e in (0.0, 1.0):
        site = _site(event_17=e)
        inst = _inst(q, secure=True)
        _, out = site.answer(inst, None, secure=True)
        seen.append((dict(out.arrays), out.records))
        result = _ask(site, q, secure=True, run_id="r-2")
        assert isinstance(result, CountResult)
        assert result.count is None
    (a, ra), (b, rb) = seen
    assert ra == rb == 0
    assert all(np.array_equal(a[name], b[name]) for name in a)


def test_a_small_cohorts_answer_is_not_logged_and_a_large_one_is() -> None:
    site = _site()
    one = Query.from_dict({"kind": "count", "where": _where(("age", "==", 55.25))})
    assert isinstance(result := _ask(site, one, run_id="r-1"), CountResult)
    assert result.count is None
    assert site.log.cohorts("brca") == 0
    _ask(site, Query("count"), run_id="r-2")
    assert site.log.cohorts("brca") > 0
