"""Disclosure control: small cells, complementary suppression, dominance, DP answers.

Each test tries the attack the rule is there to stop: subtracting published cells from a
margin, solving the table's equations, reading one record off a sum, removing the noise.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.analytics import (
    CountResult,
    CrosstabResult,
    DescribeResult,
    DisclosureRules,
    DPOptions,
    HistogramResult,
    Query,
    QueryTable,
    Request,
    Result,
    SeededNoise,
    answer,
    check_answer,
    protect_table,
    protect_vector,
    secure_vector,
    start,
    total_from_vector,
)
from biofed.analytics._suppress import determined

RULES = DisclosureRules(min_cell=5)


def run(
    query: Query,
    tables: Mapping[str, QueryTable],
    *,
    secure: bool = False,
    rules: DisclosureRules | None = None,
    seed: int | None = None,
) -> Result:
    analysis = start(query, rules, secure=secure)
    noise = None if seed is None else SeededNoise(seed)
    while not analysis.done:
        req = Request.from_json(analysis.request().to_json())
        answers = {}
        for site, table in tables.items():
            out = answer(req, table, rules, noise=noise)
            answers[site] = check_answer(req, dict(out.arrays), out.records)
        if secure:
            total = sum(secure_vector(req, a) for a in answers.values())
            analysis = analysis.add_total(total_from_vector(req, total), sorted(answers))
        else:
            analysis = analysis.add(answers)
    return analysis.result()


def table_of(counts: np.ndarray, name: str = "site") -> QueryTable:
    """Rows realising a contingency table of ``counts`` (levels r0.., c0..)."""
    rows, cols = [], []
    for (i, j), n in np.ndenumerate(counts):
        rows += [f"r{i}"] * int(n)
        cols += [f"c{j}"] * int(n)
    n = len(rows)
    return QueryTable(
        name=name,
        columns={"a": np.array(rows, dtype=object), "b": np.array(cols, dtype=object)},
        kinds={"a": "categorical", "b": "categorical"},
        ids=np.arange(n),
        is_test=np.zeros(n, bool),
    )


def crosstab(r: int, c: int) -> Query:
    return Query(
        "crosstab",
        {
            "rows": "a",
            "cols": "b",
            "row_levels": [f"r{i}" for i in range(r)],
            "col_levels": [f"c{j}" for j in range(c)],
        },
    )


def recoverable(res: CrosstabResult) -> list[tuple[int, int]]:
    """Cells an attacker recomputes by subtracting a line's published cells from its total."""
    found = []
    grid = [list(r) for r in res.counts]
    for i, row in enumerate(grid):
        hidden = [j for j, v in enumerate(row) if v is None]
        if len(hidden) == 1 and res.row_totals[i] is not None:
            found.append((i, hidden[0]))
    for j in range(len(res.col_labels)):
        col = [grid[i][j] for i in range(len(grid))]
        hidden = [i for i, v in enumerate(col) if v is None]
        if len(hidden) == 1 and res.col_totals[j] is not None:
            found.append((hidden[0], j))
    return found


def solvable(mask: np.ndarray) -> np.ndarray:
    """Independent of the module's SVD audit: an unknown entry of the extended table is
    fixed by the line equations iff its unit vector lies in the row space of the
    constraint matrix on the unknowns (a rank test)."""
    r1, c1 = mask.shape
    eqs = []
    for i in range(r1):
        a = np.zeros((r1, c1))
        a[i, :-1], a[i, -1] = 1, -1
        eqs.append(a.ravel())
    for j in range(c1):
        a = np.zeros((r1, c1))
        a[:-1, j], a[-1, j] = 1, -1
        eqs.append(a.ravel())
    unknown = np.flatnonzero(mask.ravel())
    out = np.zeros(mask.size, bool)
    if unknown.size == 0:
        return out.reshape(mask.shape)
    m = np.asarray(eqs)[:, unknown]
    rank = np.linalg.matrix_rank(m)
    for k, idx in enumerate(unknown):
        e = np.zeros(unknown.size)
        e[k] = 1
        out[idx] = np.linalg.matrix_rank(np.vstack([m, e])) == rank
    return out.reshape(mask.shape)


@pytest.mark.parametrize("secure", [False, True])
def test_a_cell_of_3_is_suppressed_and_not_recoverable_from_the_margins(secure: bool) -> None:
    counts = np.array([[3, 40, 25], [30, 22, 18], [27, 35, 41]])
    res = run(crosstab(3, 3), {"site": table_of(counts)}, secure=secure, rules=RULES)
    assert isinstance(res, CrosstabResult)
    assert res.counts[0][0] is None
    assert recoverable(res) == []
    # Solve the whole published system: the 3 stays undetermined.
    r, c = counts.shape
    mask = np.zeros((r + 1, c + 1), bool)
    for i in range(r):
        for j in range(c):
            mask[i, j] = res.counts[i][j] is None
        mask[i, c] = res.row_totals[i] is None
    for j in range(c):
        mask[r, j] = res.col_totals[j] is None
    mask[r, c] = res.total is None
    assert not solvable(mask).any()
    # And nothing more than needed: the table still publishes most of its cells.
    assert sum(v is not None for row in res.counts for v in row) >= 5


def test_a_site_withholds_its_small_cell_and_the_total_never_shows_a_partial_sum() -> None:
    big = np.array([[30, 40], [50, 60]])
    small = np.array([[3, 40], [50, 60]])
    res = run(crosstab(2, 2), {"a": table_of(big, "a"), "b": table_of(small, "b")}, rules=RULES)
    assert isinstance(res, CrosstabResult)
    assert res.counts[0][0] is None  # 33 in truth, but site b withheld its 3
    assert res.row_totals[0] is None
    assert res.col_totals[0] is None
    assert res.total is None
    assert recoverable(res) == []


def test_plain_site_answer_carries_zeros_and_flags() -> None:
    counts = np.array([[3, 40], [50, 60]])
    query = crosstab(2, 2)
    req = start(query, RULES).request()
    out = answer(req, table_of(counts), RULES)
    flags = out.arrays["suppressed"]
    assert flags[0, 0] == 1
    assert flags.sum() >= 2  # a complement in row 0 or column 0
    assert (out.arrays["counts"][flags > 0] == 0).all()


def test_histogram_single_small_bin_gets_a_complement() -> None:
    mask, total_hidden = protect_vector(np.array([2.0, 50, 60, 70]), np.zeros(4, bool), 5)
    assert mask.tolist() == [True, True, False, False]
    assert not total_hidden
    mask, total_hidden = protect_vector(np.array([3.0]), np.zeros(1, bool), 5)
    assert total_hidden
    x = np.concatenate([np.full(3, 0.5), np.full(50, 1.5), np.full(40, 2.5)])
    t = QueryTable(
        name="h",
        columns={"x": x},
        kinds={"x": "numeric"},
        ids=np.arange(x.size),
        is_test=np.zeros(x.size, bool),
    )
    res = run(
        Query("histogram", {"column": "x", "edges": [0, 1, 2, 3]}),
        {"h": t},
        secure=True,
        rules=RULES,
    )
    assert isinstance(res, HistogramResult)
    assert res.counts[0] is None
    assert res.total == 93
    published = [c for c in (*res.counts, res.below, res.above) if c is not None]
    assert sum(published) < 93 - 3  # more than the 3 is hidden: subtraction finds no single cell


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5).flatmap(
        lambda r: st.integers(1, 5).flatmap(
            lambda c: st.lists(
                st.lists(st.integers(0, 30), min_size=c, max_size=c), min_size=r, max_size=r
            )
        )
    ),
    st.integers(2, 12),
)
def test_no_suppressed_cell_is_determined_by_what_is_published(
    cells: list[list[int]], min_cell: int
) -> None:
    counts = np.array(cells, dtype=float)
    r, c = counts.shape
    mask = protect_table(counts, np.zeros((r + 1, c + 1), bool), min_cell)
    ext = np.zeros((r + 1, c + 1))
    ext[:r, :c], ext[:r, c], ext[r, :c], ext[r, c] = (
        counts,
        counts.sum(1),
        counts.sum(0),
        counts.sum(),
    )
    # Every small entry is withheld.
    assert mask[(ext > 0) & (ext < min_cell)].all()
    # Each line with a suppression has at least two.
    for line in (*mask, *mask.T):
        assert line.sum() != 1
    # No suppressed entry can be solved for, by an independent rank test.
    assert not solvable(mask).any()
    assert not determined(mask).any()


def test_the_bridge_between_two_suppression_cycles_is_caught() -> None:
    """Two suppressed 2×2 blocks joined by one more suppressed cell: each line has two
    suppressions, yet the bridge is fixed by the equations; the audit adds a complement."""
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 0] = mask[1, 1] = True
    mask[2, 2] = mask[2, 3] = mask[3, 2] = mask[3, 3] = True
    mask[1, 2] = True
    assert solvable(mask)[1, 2]
    counts = np.full((4, 4), 20.0)
    out = protect_table(counts, mask, 5)
    assert not solvable(out).any()


def dominated_table(top: float) -> QueryTable:
    x = np.concatenate([np.full(30, 10.0), [top]])
    return QueryTable(
        name="d",
        columns={"x": x},
        kinds={"x": "numeric"},
        ids=np.arange(x.size),
        is_test=np.zeros(x.size, bool),
    )


@pytest.mark.parametrize("secure", [False, True])
def test_a_dominated_sum_is_suppressed(secure: bool) -> None:
    rules = DisclosureRules(min_cell=5, dominance=0.5)
    query = Query("describe", {"columns": ["x"]})
    # One record of 1000 against 30 of 10: 1000 / 1300 > 0.5.
    res = run(
        query,
        {"d": dominated_table(1000.0), "e": dominated_table(10.0)},
        secure=secure,
        rules=rules,
    )
    assert isinstance(res, DescribeResult)
    assert res.column("x")["sum"] is None
    assert res.column("x")["mean"] is None
    ok = run(
        query, {"d": dominated_table(100.0), "e": dominated_table(10.0)}, secure=secure, rules=rules
    )
    assert isinstance(ok, DescribeResult)
    assert ok.column("x")["sum"] == pytest.approx(30 * 10 + 100 + 31 * 10)


def test_a_count_below_min_cell_is_suppressed() -> None:
    x = np.arange(4.0)
    t = QueryTable(
        name="t",
        columns={"x": x},
        kinds={"x": "numeric"},
        ids=np.arange(4),
        is_test=np.zeros(4, bool),
    )
    for secure in (False, True):
        res = run(Query("count"), {"t": t}, secure=secure)
        assert isinstance(res, CountResult)
        assert res.count is None
    req = start(Query("count")).request()
    assert answer(req, t).records == 0  # the record count would give the count away


def count_table(n: int) -> QueryTable:
    return QueryTable(
        name="c",
        columns={"x": np.zeros(n)},
        kinds={"x": "numeric"},
        ids=np.arange(n),
        is_test=np.zeros(n, bool),
    )


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_dp_counts_are_noisy_and_unbiased(mechanism: str) -> None:
    dp = DPOptions(mechanism, 1.0, 1e-5 if mechanism == "gaussian" else 0.0)
    query = Query("count", dp=dp)
    req = start(query).request()
    table = count_table(500)
    draws = np.array(
        [answer(req, table, noise=SeededNoise(s)).arrays["count"][0] for s in range(400)]
    )
    assert len(set(draws.tolist())) > 4  # two seeds differ
    assert (draws == np.rint(draws)).all()  # rounded at the site
    assert all(answer(req, table, noise=SeededNoise(s)).records == 0 for s in range(3))
    sd = np.sqrt(2.0) if mechanism == "laplace" else 3.7305
    assert abs(draws.mean() - 500) < 5 * sd / np.sqrt(draws.size)
    assert draws.std() == pytest.approx(sd, rel=0.15)
    res = run(query, {"c": table}, seed=1)
    assert isinstance(res, CountResult)
    assert res.dp
    assert res.count is not None
    assert abs(res.count - 500) < 30


def test_dp_describe_clips_to_bounds_and_splits_epsilon_over_its_arrays() -> None:
    dp = DPOptions("laplace", 3.0)
    query = Query("describe", {"columns": ["x"], "bounds": {"x": [0, 10]}}, dp=dp)
    req = start(query).request()
    x = np.concatenate([np.full(200, 5.0), [1e6]])
    t = QueryTable(
        name="t",
        columns={"x": x},
        kinds={"x": "numeric"},
        ids=np.arange(x.size),
        is_test=np.zeros(x.size, bool),
    )
    sums = np.array([answer(req, t, noise=SeededNoise(s)).arrays["sum"][0] for s in range(400)])
    # Clipped: the 1e6 counts as 10. ε = 3 over 3 arrays → ε 1 each; Δ₁(sum) = 10.
    assert abs(sums.mean() - (200 * 5 + 10)) < 5 * np.sqrt(2) * 10 / np.sqrt(400)
    assert sums.std() == pytest.approx(np.sqrt(2) * 10, rel=0.15)


def test_dp_small_noisy_counts_are_still_withheld() -> None:
    query = Query("count", dp=DPOptions("laplace", 5.0))
    res = run(query, {"c": count_table(3)}, seed=0)
    assert isinstance(res, CountResult)
    assert res.count is None
