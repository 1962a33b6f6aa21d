"""Federated Kaplan–Meier, Nelson–Aalen and log-rank against lifelines on pooled data, and
the at-risk disclosure rule (plain and secure mode)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from lifelines import KaplanMeierFitter, NelsonAalenFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test

import biofed.analytics as an
from biofed.analytics import (
    Answer,
    DisclosureRules,
    KaplanMeierResult,
    LogRankResult,
    NelsonAalenResult,
    Query,
    QueryTable,
    Request,
    answer,
    check_answer,
    result_from_json,
    secure_vector,
    start,
    total_from_vector,
)
from biofed.core import ConfigurationError, DataError, ProtocolError
from biofed.datasets import load_tcga_brca

GROUP = "ajcc_pathologic_stage_Stage IIA"  # binary one-hot column: 18 to 75 per site


def run(
    query: Query,
    tables: Mapping[str, QueryTable],
    rules: DisclosureRules | None = None,
    *,
    secure: bool = False,
    site_rules: DisclosureRules | None = None,
    log: list[tuple[Request, dict[str, Answer]]] | None = None,
) -> Any:
    """A tiny driver: the coordinator's loop with direct calls to each site's answer."""
    analysis = start(query, rules, secure=secure)
    while not analysis.done:
        req = Request.from_json(analysis.request().to_json())  # what travels
        answers = {s: answer(req, t, site_rules or rules) for s, t in tables.items()}
        if log is not None:
            log.append((req, answers))
        if secure:
            vec = sum(secure_vector(req, a) for a in answers.values())
            analysis = analysis.add_total(total_from_vector(req, vec), sorted(answers))
        else:
            checked = {s: check_answer(req, dict(a.arrays), a.records) for s, a in answers.items()}
            analysis = analysis.add(checked)
    return result_from_json(analysis.result().to_json())


@pytest.fixture(scope="module")
def tcga() -> dict[str, QueryTable]:
    return {s: QueryTable.from_site_data(d) for s, d in load_tcga_brca().sites.items()}


def pooled(tables: Mapping[str, QueryTable], split: str = "train") -> dict[str, np.ndarray]:
    cols: dict[str, list[np.ndarray]] = {"time": [], "event": [], GROUP: []}
    for t in tables.values():
        keep = ~t.is_test if split == "train" else np.ones(len(t), bool)
        for c in cols:
            cols[c].append(np.asarray(t.column(c))[keep])
    return {c: np.concatenate(v) for c, v in cols.items()}


def km_query(**options: Any) -> Query:
    return Query(kind="km", options={"time": "time", "event": "event", **options}, split="train")


def check_km_equals_lifelines(
    result: KaplanMeierResult, time: np.ndarray, event: np.ndarray
) -> int:
    curve = result.curves[0]
    kmf = KaplanMeierFitter(alpha=result.alpha).fit(time, event)
    surv = kmf.survival_function_.iloc[:, 0].loc[curve.times].to_numpy()
    ci = kmf.confidence_interval_.loc[curve.times].to_numpy()
    np.testing.assert_allclose(curve.estimate, surv, rtol=0, atol=1e-10)
    np.testing.assert_allclose(curve.lower, ci[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(curve.upper, ci[:, 1], rtol=0, atol=1e-10)
    table = kmf.event_table.loc[curve.times]
    np.testing.assert_array_equal(curve.at_risk, table["at_risk"].to_numpy())
    np.testing.assert_array_equal(curve.events, table["observed"].to_numpy())
    np.testing.assert_array_equal(curve.censored, table["censored"].to_numpy())
    return len(curve.times)


# -- TCGA-BRCA, 6 sites ----------------------------------------------------------------------
def test_tcga_times_are_integer_days(tcga: dict[str, QueryTable]) -> None:
    time = pooled(tcga)["time"]
    assert np.all(time == np.round(time))
    assert time.min() >= 0


def test_km_plain_equals_lifelines_on_tcga(tcga: dict[str, QueryTable]) -> None:
    rules = DisclosureRules(min_at_risk=10)
    res = run(km_query(), tcga, rules)
    assert isinstance(res, KaplanMeierResult)
    assert res.sites == 6
    p = pooled(tcga)
    shown = check_km_equals_lifelines(res, p["time"], p["event"])
    assert shown > 100
    curve = res.curves[0]
    assert curve.records == len(p["time"])
    assert int(curve.events.sum()) + curve.tail_events == int(p["event"].sum())
    assert curve.tail_at_risk == int((p["time"] > curve.tail_after).sum())
    assert curve.survival is curve.estimate


def test_km_no_released_step_has_few_at_risk_at_any_site(tcga: dict[str, QueryTable]) -> None:
    k = 10
    res = run(km_query(), tcga, DisclosureRules(min_at_risk=k))
    curve = res.curves[0]
    for table in tcga.values():
        t = np.asarray(table.column("time"))[~table.is_test]
        at_risk = (t[None, :] >= curve.times[:, None]).sum(axis=1)
        assert at_risk.min() >= k
    # and the curve does reach the smallest site's limit (the rule bites, not more)
    small = np.asarray(tcga["center-5"].column("time"))[~tcga["center-5"].is_test]
    nxt = np.sort(np.unique(small))
    assert ((small >= nxt[np.searchsorted(nxt, curve.tail_after, side="right")]).sum()) < k


def test_km_by_group_and_nelson_aalen_equal_lifelines(tcga: dict[str, QueryTable]) -> None:
    rules = DisclosureRules(min_at_risk=5)
    opts = {"group": GROUP, "levels": [0, 1]}
    res = run(km_query(**opts), tcga, rules)
    na = run(
        Query(
            kind="nelson_aalen", options={"time": "time", "event": "event", **opts}, split="train"
        ),
        tcga,
        rules,
    )
    assert isinstance(na, NelsonAalenResult)
    p = pooled(tcga)
    for i, level in enumerate((0.0, 1.0)):
        mine = p[GROUP] == level
        kmf = KaplanMeierFitter().fit(p["time"][mine], p["event"][mine])
        c = res.curves[i]
        assert c.level == str([0, 1][i])
        np.testing.assert_allclose(
            c.estimate, kmf.survival_function_.iloc[:, 0].loc[c.times], atol=1e-10, rtol=0
        )
        naf = NelsonAalenFitter().fit(p["time"][mine], p["event"][mine])
        h = na.curves[i]
        assert len(h.times) > 20
        np.testing.assert_allclose(
            h.estimate, naf.cumulative_hazard_.iloc[:, 0].loc[h.times], atol=1e-10, rtol=0
        )
        ci = naf.confidence_interval_.loc[h.times].to_numpy()
        np.testing.assert_allclose(h.lower, ci[:, 0], atol=1e-10, rtol=0)
        np.testing.assert_allclose(h.upper, ci[:, 1], atol=1e-10, rtol=0)


def test_logrank_equals_lifelines_on_tcga(tcga: dict[str, QueryTable]) -> None:
    q = Query(
        kind="logrank",
        options={"time": "time", "event": "event", "group": GROUP, "levels": [0, 1]},
        split="train",
    )
    # exact where no site coarsens (plain, min_at_risk 1) …
    loose = DisclosureRules(min_at_risk=1)
    res = run(q, tcga, loose)
    assert isinstance(res, LogRankResult)
    assert res.exact
    assert res.df == 1
    p = pooled(tcga)
    a, b = p[GROUP] == 0, p[GROUP] == 1
    ref = logrank_test(p["time"][a], p["time"][b], p["event"][a], p["event"][b])
    assert res.statistic == pytest.approx(ref.test_statistic, rel=1e-10)
    assert res.p == pytest.approx(ref.p_value, rel=1e-9)
    assert res.observed.sum() == p["event"].sum()
    # … and in secure mode on an integer-day grid under the default rules
    grid = {"step": 1, "stop": float(p["time"].max())}
    q2 = Query(kind="logrank", options={**q.options, "grid": grid}, split="train")
    sec = run(q2, tcga, DisclosureRules(), secure=True)
    assert sec.exact
    assert sec.secure
    assert sec.statistic == pytest.approx(ref.test_statistic, rel=1e-10)
    assert sec.p == pytest.approx(ref.p_value, rel=1e-9)
    # plain under the default rules: the sites' tails enter as one tied time (approximate)
    approx = run(q, tcga, DisclosureRules())
    assert not approx.exact


def test_km_secure_grid_equals_lifelines(tcga: dict[str, QueryTable]) -> None:
    p = pooled(tcga)
    grid = {"step": 1, "stop": float(p["time"].max())}
    log: list[tuple[Request, dict[str, Answer]]] = []
    res = run(km_query(grid=grid), tcga, DisclosureRules(), secure=True, log=log)
    assert res.secure
    assert len(log) == 1
    assert log[0][0].secure
    shown = check_km_equals_lifelines(res, p["time"], p["event"])
    assert shown > 200
    curve = res.curves[0]
    # the coordinator's rule on totals: every released step has >= 10 at risk in total
    assert curve.at_risk.min() >= 10
    assert curve.tail_at_risk < 10
    # plain mode on the same grid gives the same numbers where both release
    plain = run(km_query(grid=grid), tcga, DisclosureRules())
    pc = plain.curves[0]
    assert len(pc.times) < len(curve.times)
    np.testing.assert_allclose(pc.estimate, curve.estimate[: len(pc.times)], atol=1e-12)
    np.testing.assert_array_equal(pc.times, curve.times[: len(pc.times)])


def test_secure_km_needs_a_grid(tcga: dict[str, QueryTable]) -> None:
    with pytest.raises(ConfigurationError, match="grid"):
        start(km_query(), DisclosureRules(), secure=True)


def test_result_json_and_table(tcga: dict[str, QueryTable]) -> None:
    res = run(km_query(group=GROUP, levels=[0, 1]), tcga, DisclosureRules())
    again = KaplanMeierResult.from_dict(res.to_dict())
    assert again.to_json() == res.to_json()
    headers, rows = res.table()
    assert headers[:4] == ["group", "patients", "events", "median"]
    assert len(rows) == 2
    assert all(len(r) == len(headers) for r in rows)
    q = Query(
        kind="logrank", options={"time": "time", "event": "event", "group": GROUP, "levels": [0, 1]}
    )
    lr = run(q, tcga, DisclosureRules())
    assert LogRankResult.from_dict(lr.to_dict()).to_json() == lr.to_json()
    assert lr.table()[1][-1][0] == "log-rank"


# -- generated data with a known truth -------------------------------------------------------
def make_sites(seed: int, sizes: tuple[int, ...] = (120, 90, 60)) -> dict[str, QueryTable]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        arm = rng.integers(0, 3, n).astype(float)
        t_event = rng.exponential(1.0 / (0.1 * (1 + arm)), n)  # hazards 0.1, 0.2, 0.3
        t_cens = rng.uniform(0, 15, n)
        time = np.round(np.minimum(t_event, t_cens), 2)
        event = (t_event <= t_cens).astype(float)
        out[f"s{i}"] = QueryTable(
            name=f"gen-{i}",
            columns={"time": time, "event": event, "arm": arm},
            kinds={"time": "numeric", "event": "numeric", "arm": "numeric"},
            ids=np.arange(n),
            is_test=np.zeros(n, bool),
        )
    return out


def test_generated_three_groups_multivariate_logrank_and_km() -> None:
    sites = make_sites(7)
    t = np.concatenate([np.asarray(s.column("time")) for s in sites.values()])
    e = np.concatenate([np.asarray(s.column("event")) for s in sites.values()])
    g = np.concatenate([np.asarray(s.column("arm")) for s in sites.values()])
    opts = {"time": "time", "event": "event", "group": "arm", "levels": [0, 1, 2]}
    one = DisclosureRules(min_at_risk=1)
    res = run(Query(kind="logrank", options=opts), sites, one)
    ref = multivariate_logrank_test(t, g, e)
    assert res.df == 2
    assert res.statistic == pytest.approx(ref.test_statistic, rel=1e-10)
    assert res.p == pytest.approx(ref.p_value, rel=1e-9)
    assert res.p < 1e-3  # the hazards do differ
    km = run(Query(kind="km", options={**opts, "alpha": 0.1}), sites, DisclosureRules())
    for i in range(3):
        c = km.curves[i]
        kmf = KaplanMeierFitter(alpha=0.1).fit(t[g == i], e[g == i])
        np.testing.assert_allclose(
            c.estimate, kmf.survival_function_.iloc[:, 0].loc[c.times], atol=1e-10
        )
        ci = kmf.confidence_interval_.loc[c.times].to_numpy()
        np.testing.assert_allclose(np.c_[c.lower, c.upper], ci, atol=1e-10)
    # survival at t=2 near exp(-0.1·2·(1+arm)) (known truth, loose)
    for i in range(3):
        s2 = km.curves[i].estimate[np.searchsorted(km.curves[i].times, 2.0, side="right") - 1]
        assert abs(s2 - np.exp(-0.2 * (1 + i))) < 0.12


def test_tied_events_nelson_aalen_smoothing() -> None:
    # heavy ties: lifelines' default (smoothed) tie handling, not d/n
    time = np.repeat(np.arange(1.0, 6.0), 8)
    event = np.tile([1, 1, 1, 0, 1, 0, 1, 1], 5).astype(float)
    tables = {
        "a": QueryTable(
            name="a",
            columns={"time": time[:20], "event": event[:20]},
            kinds={"time": "numeric", "event": "numeric"},
            ids=np.arange(20),
            is_test=np.zeros(20, bool),
        ),
        "b": QueryTable(
            name="b",
            columns={"time": time[20:], "event": event[20:]},
            kinds={"time": "numeric", "event": "numeric"},
            ids=np.arange(20),
            is_test=np.zeros(20, bool),
        ),
    }
    res = run(
        Query(kind="nelson_aalen", options={"time": "time", "event": "event"}),
        tables,
        DisclosureRules(min_at_risk=1),
    )
    naf = NelsonAalenFitter().fit(time, event)
    c = res.curves[0]
    np.testing.assert_allclose(
        c.estimate, naf.cumulative_hazard_.iloc[:, 0].loc[c.times], atol=1e-12
    )
    ci = naf.confidence_interval_.loc[c.times].to_numpy()
    np.testing.assert_allclose(np.c_[c.lower, c.upper], ci, atol=1e-12)
    assert c.estimate[0] != pytest.approx(6 / 40)  # smoothed: 1/40 + … + 1/35


# -- disclosure: the coarsened tail ----------------------------------------------------------
def test_tail_patient_time_cannot_be_learned() -> None:
    """An attacker who knows everything but one patient's time tries to read it off every
    site answer and the result: the answers do not change with that time."""
    sites = make_sites(3)
    victim_site = sites["s2"]
    t = np.asarray(victim_site.column("time")).copy()
    j = int(np.argmax(t))  # the longest follow-up: deep in the tail
    seen = []
    for guess in (t[j], t[j] + 3.3, t[j] + 40.0):
        t2 = t.copy()
        t2[j] = guess
        cols = dict(victim_site.columns)
        cols["time"] = t2
        table = QueryTable(
            name="gen-2",
            columns=cols,
            kinds=dict(victim_site.kinds),
            ids=victim_site.ids,
            is_test=victim_site.is_test,
        )
        log: list[tuple[Request, dict[str, Answer]]] = []
        res = run(km_query(), {**sites, "s2": table}, DisclosureRules(), log=log)
        seen.append((log, res.to_json()))
        for req, answers in log:
            for arr in answers["s2"].arrays.values():
                assert not np.isin(guess, arr)  # the time itself never leaves
            if req.step == "counts":
                assert guess not in req.state["grid"]
    (log0, json0), *rest = seen
    for log, js in rest:
        assert js == json0  # the result does not move
        for (r0, a0), (r1, a1) in zip(log0, log, strict=True):
            assert r0.to_json() == r1.to_json()
            for name, arr in a0["s2"].arrays.items():
                np.testing.assert_array_equal(arr, a1["s2"].arrays[name])


def test_site_with_fewer_than_k_withholds_its_group_whole() -> None:
    # a site of 8 patients (< min_cell) sends neither times nor counts nor tail totals (a
    # tail total of a group of 8 is itself a small cell); the curve rests on the other
    # site and says so
    sites = make_sites(5, sizes=(100, 8))
    res = run(km_query(), sites, DisclosureRules())
    c = res.curves[0]
    assert c.withheld_sites == 1
    assert c.records == 100
    assert len(c.times) > 0  # the large site's steps, no longer held back by the small one
    assert "withheld at 1 site" in res.table()[1][0][0]
    # the small site's pass-1 answer holds no times at all, its counts answer no counts
    analysis = start(km_query(), DisclosureRules())
    req = analysis.request()
    assert answer(req, sites["s1"], DisclosureRules()).arrays["times_0"].size == 0
    analysis = analysis.add({s: answer(req, t, DisclosureRules()) for s, t in sites.items()})
    out = answer(analysis.request(), sites["s1"], DisclosureRules())
    assert out.records == 0
    assert out.arrays["withheld"].tolist() == [1.0]
    assert all(not out.arrays[k].any() for k in out.arrays if k != "withheld")


def test_site_rules_stricter_than_request_coarsen_more() -> None:
    sites = make_sites(11)
    loose = run(km_query(), sites, DisclosureRules(min_at_risk=5))
    strict = run(
        km_query(),
        sites,
        DisclosureRules(min_at_risk=5),
        site_rules=DisclosureRules(min_at_risk=30),
    )
    assert strict.curves[0].tail_after < loose.curves[0].tail_after


# -- hostile input ---------------------------------------------------------------------------
def test_options_are_checked() -> None:
    base = {"time": "time", "event": "event"}
    for bad, msg in [
        ({**base, "group": "g"}, "levels"),
        ({**base, "levels": [1]}, "group"),
        ({**base, "alpha": 1.5}, "alpha"),
        ({**base, "grid": {"step": 0, "stop": 5}}, "step"),
        ({**base, "grid": [3, 2]}, "increasing"),
        ({**base, "grid": {"step": 1e-6, "stop": 1e6}}, "points"),
        ({**base, "bogus": 1}, "bogus"),
    ]:
        with pytest.raises(ConfigurationError, match=msg):
            Query(kind="km", options=bad)
    with pytest.raises(ConfigurationError, match="group"):
        Query(kind="logrank", options=base)
    with pytest.raises(ConfigurationError, match="DP"):
        Query(kind="km", options=base, dp=an.DPOptions(mechanism="laplace", epsilon=1.0))


def test_bad_data_and_bad_answers_are_refused() -> None:
    # ten good rows beside the bad one: a cohort under min_cell is withheld unread
    good = [3.0] * 10
    table = QueryTable(
        name="x",
        columns={"time": [1.0, -2.0, *good], "event": [1.0, 0.0, *[1.0] * 10]},
        kinds={"time": "numeric", "event": "numeric"},
        ids=list(range(12)),
        is_test=[False] * 12,
    )
    req = start(km_query(), DisclosureRules()).request()
    with pytest.raises(DataError, match="negative"):
        answer(req, table, DisclosureRules())
    table2 = QueryTable(
        name="x",
        columns={"time": [1.0, 2.0, *good], "event": [1.0, 2.0, *[1.0] * 10]},
        kinds={"time": "numeric", "event": "numeric"},
        ids=list(range(12)),
        is_test=[False] * 12,
    )
    with pytest.raises(DataError, match=r"0 \(censored\) or 1"):
        answer(req, table2, DisclosureRules())
    with pytest.raises(ProtocolError):
        check_answer(req, {"times_0": np.array([3.0, 1.0])}, 2)
    with pytest.raises(ProtocolError):
        check_answer(req, {"times_0": np.array([1.0]), "extra": np.array([1.0])}, 2)
    # a counts answer that does not add up
    sites = make_sites(1, sizes=(50,))
    analysis = start(km_query(grid=[1, 2, 3]), DisclosureRules())
    req2 = analysis.request()
    good = answer(req2, sites["s0"], DisclosureRules())
    arrays = dict(good.arrays)
    arrays["size"] = arrays["size"] + 5
    with pytest.raises(ProtocolError, match="add up"):
        check_answer(req2, arrays, good.records)
    arrays = dict(good.arrays)
    arrays["events"] = arrays["events"] + 0.5
    with pytest.raises(ProtocolError, match="counts"):
        check_answer(req2, arrays, good.records)
    with pytest.raises(ProtocolError, match="add"):
        analysis.add_total(good, ["s0"])  # plain mode needs each site's answer


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("grid", [None, {"step": 0.5, "stop": 12}])
def test_plain_rule_holds_per_site_per_group(seed: int, grid: dict[str, float] | None) -> None:
    """Property: every released step of every group has >= k at risk at every site, and
    the released values equal lifelines on the pooled (binned) data."""
    k = 12
    sites = make_sites(seed, sizes=(150, 90, 75))
    opts: dict[str, Any] = {"group": "arm", "levels": [0, 1, 2]}
    if grid is not None:
        opts["grid"] = grid
    res = run(km_query(**opts), sites, DisclosureRules(min_at_risk=k))
    points = None if grid is None else np.arange(0, 12.0001, 0.5)
    assert sum(len(c.times) for c in res.curves) > 8  # not vacuous
    for i, c in enumerate(res.curves):
        pooled_t, pooled_e = [], []
        for table in sites.values():
            mine = np.asarray(table.column("arm")) == i
            t = np.asarray(table.column("time"))[mine]
            if points is not None:  # binned to the first grid point >= t
                idx = np.searchsorted(points, t, side="left")
                t = np.where(idx < len(points), points[np.minimum(idx, len(points) - 1)], 99.0)
            at_risk = (t[None, :] >= c.times[:, None]).sum(axis=1)
            assert len(c.times) == 0 or at_risk.min() >= k
            pooled_t.append(t)
            pooled_e.append(np.asarray(table.column("event"))[mine])
        if len(c.times):
            kmf = KaplanMeierFitter().fit(np.concatenate(pooled_t), np.concatenate(pooled_e))
            np.testing.assert_allclose(
                c.estimate, kmf.survival_function_.iloc[:, 0].loc[c.times], atol=1e-10
            )


def test_secure_tail_patient_time_does_not_move_the_result() -> None:
    """Secure mode applies the rule to totals: a patient in the consortium's tail (fewer
    than k at risk in total) can take any time there without changing the result."""
    sites = make_sites(3)
    grid = {"step": 0.25, "stop": 20}
    base = run(km_query(grid=grid), sites, DisclosureRules(), secure=True)
    last = base.curves[0].tail_after
    assert last is not None
    t_all = np.concatenate([np.asarray(s.column("time")) for s in sites.values()])
    assert (t_all > last).sum() < 10
    victim = sites["s0"]
    t = np.asarray(victim.column("time")).copy()
    j = int(np.argmax(t))
    assert t[j] > last
    for guess in (last + 0.3, last + 2.0, 25.0):
        t2 = t.copy()
        t2[j] = guess
        cols = {**victim.columns, "time": t2}
        table = QueryTable(
            name="gen-0",
            columns=cols,
            kinds=dict(victim.kinds),
            ids=victim.ids,
            is_test=victim.is_test,
        )
        res = run(km_query(grid=grid), {**sites, "s0": table}, DisclosureRules(), secure=True)
        assert res.to_json() == base.to_json()


def test_logrank_site_with_a_small_group_withholds_all_its_groups_and_says_so() -> None:
    # s3's 20 patients over three arms: an arm of fewer than min_cell there, so s3 drops
    # out of the test whole; the result is the other sites' test, flagged as such
    sites = make_sites(4, sizes=(120, 90, 60, 20))
    arms = [float((sites["s3"].column("arm") == a).sum()) for a in (0, 1, 2)]
    assert min(arms) < 10
    q = Query(
        kind="logrank",
        options={"time": "time", "event": "event", "group": "arm", "levels": [0, 1, 2]},
        split="train",
    )
    res = run(q, sites, DisclosureRules())
    without = run(q, {s: sites[s] for s in ("s0", "s1", "s2")}, DisclosureRules())
    assert res.withheld_sites == 1
    assert res.records == 270
    assert not res.exact
    assert res.statistic == pytest.approx(without.statistic, rel=1e-12)
    assert "withheld at 1 site" in res.table()[1][-1][-1]
    assert type(res).from_dict(res.to_dict()).withheld_sites == 1
