"""The heterogeneity report: planted shifts are flagged, nothing below min_cell shows."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import ConfigurationError, DataError
from biofed.data import (
    HeterogeneityReport,
    NumericStats,
    SiteSummary,
    heterogeneity_report,
)
from biofed.data._disclosure import merge_bars, recode
from biofed.datasets import load_tcga_brca

K = 10


def common_edges(pooled: np.ndarray) -> tuple[float, ...]:
    """As the final preprocessing pass draws them: pooled mean ± 4 sd, 32 bins."""
    x = pooled[~np.isnan(pooled)]
    mean, sd = float(x.mean()), float(x.std())
    return tuple(float(e) for e in np.linspace(mean - 4 * sd, mean + 4 * sd, 33))


def summaries_of(
    numeric: Mapping[str, Mapping[str, np.ndarray]],
    *,
    categorical: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    labels: Mapping[str, np.ndarray] | None = None,
    events: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, SiteSummary]:
    """Each site's summary from its raw columns, with the real value types."""
    features = sorted({f for cols in numeric.values() for f in cols})
    edges = {
        f: common_edges(np.concatenate([cols[f] for cols in numeric.values() if f in cols]))
        for f in features
    }
    out = {}
    for site, cols in numeric.items():
        records = len(next(iter(cols.values())))
        outcome: dict[str, float] = {}
        if labels is not None:
            outcome = {"n": float(records), "positives": float(labels[site].sum())}
        if events is not None:
            time, event = events[site]
            outcome = {
                "n": float(records),
                "events": float(event.sum()),
                "time_sum": float(time.sum()),
            }
        out[site] = SiteSummary(
            records=records,
            outcome=outcome,
            numeric={f: NumericStats.of(x, edges[f]) for f, x in cols.items()},
            categorical={
                name: dict(Counter(values))
                for name, values in (categorical or {}).get(site, {}).items()
            },
        )
    return out


def normal_sites(
    rng: np.random.Generator, sizes: Mapping[str, int], shift: tuple[str, str, float] | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Sites drawn from one population: age, bmi, a skewed lab value; ``shift`` moves one
    site's feature by that many standard deviations."""
    spread = {"age": (60.0, 10.0), "bmi": (27.0, 4.0)}
    sites: dict[str, dict[str, np.ndarray]] = {}
    for site, n in sizes.items():
        cols = {f: rng.normal(m, s, n) for f, (m, s) in spread.items()}
        cols["crp"] = rng.lognormal(1.0, 0.5, n)
        sites[site] = cols
    if shift is not None:
        site, feature, by = shift
        sd = spread[feature][1] if feature in spread else float(np.std(sites[site][feature]))
        sites[site][feature] = sites[site][feature] + by * sd
    return sites


def flagged(report: HeterogeneityReport) -> set[tuple[str, str, str]]:
    return {(f.site, f.feature, f.measure) for f in report.flags}


# -- planted shifts ---------------------------------------------------------------------------


def test_a_planted_two_sd_shift_is_flagged_for_exactly_that_site_and_feature() -> None:
    rng = np.random.default_rng(7)
    sizes = {"north": 1500, "south": 1500, "east": 1500, "west": 1500}
    sites = normal_sites(rng, sizes, shift=("east", "age", 2.0))
    labels = {s: rng.random(n) < 0.3 for s, n in sizes.items()}
    sexes = {s: {"sex": list(rng.choice(["female", "male"], n))} for s, n in sizes.items()}
    report = heterogeneity_report(summaries_of(sites, labels=labels, categorical=sexes), min_cell=K)
    assert flagged(report) == {
        ("east", "age", "smd"),
        ("east", "age", "wasserstein"),
        ("east", "age", "ks"),
    }
    smd = next(f for f in report.flags if f.measure == "smd")
    assert smd.score == pytest.approx(2.0, abs=0.15)
    # the shifted site is left out of the others' reference, so they are not swamped
    north_age = next(
        f for f in report.findings if (f.site, f.feature, f.measure) == ("north", "age", "smd")
    )
    assert north_age.left_out == ("east",)
    assert abs(north_age.score or 0) < 0.1
    east_w1 = next(f for f in report.flags if f.measure == "wasserstein")
    assert east_w1.score == pytest.approx(2.0, abs=0.25)  # a pure shift: W1 = shift in sd


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    site=st.sampled_from(["a", "b", "c", "d", "e"]),
    feature=st.sampled_from(["age", "bmi", "crp"]),
    direction=st.sampled_from([-1.0, 1.0]),
)
def test_any_planted_shift_is_flagged_and_nothing_else(
    seed: int, site: str, feature: str, direction: float
) -> None:
    rng = np.random.default_rng(seed)
    sizes = dict.fromkeys("abcde", 1500)
    report = heterogeneity_report(
        summaries_of(normal_sites(rng, sizes, shift=(site, feature, 2.0 * direction))),
        min_cell=K,
    )
    assert flagged(report) == {(site, feature, m) for m in ("smd", "wasserstein", "ks")}


def test_without_a_shift_nothing_is_flagged() -> None:
    rng = np.random.default_rng(3)
    report = heterogeneity_report(
        summaries_of(normal_sites(rng, dict.fromkeys("abcd", 1500))), min_cell=K
    )
    assert report.flags == ()
    assert {f.measure for f in report.findings} >= {"records", "smd", "wasserstein", "ks"}


def test_a_shift_planted_in_real_data_is_flagged() -> None:
    """Fed-TCGA-BRCA's six centres as they are, then one centre's age moved by 2 sd."""
    data = load_tcga_brca()
    cols = {
        site: {
            re.sub(r"[^A-Za-z0-9_.-]", "_", name): np.asarray(
                part.train.features[:, i], dtype=np.float64
            )
            for i, name in enumerate(part.train.feature_names)
        }
        for site, part in data.sites.items()
    }
    before = heterogeneity_report(summaries_of(cols), min_cell=K)
    assert not {f for f in flagged(before) if f[0] == "center-2" and f[1] == "age_at_index"}
    sd = float(np.std(np.concatenate([c["age_at_index"] for c in cols.values()])))
    cols["center-2"]["age_at_index"] = cols["center-2"]["age_at_index"] + 2 * sd
    after = heterogeneity_report(summaries_of(cols), min_cell=K)
    assert {("center-2", "age_at_index", m) for m in ("smd", "wasserstein", "ks")} <= flagged(after)


# -- known answers ------------------------------------------------------------------------------


def test_smd_of_two_sites_is_austins() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(0, 1, 400), rng.normal(0.5, 2, 300)
    report = heterogeneity_report(summaries_of({"x": {"v": x}, "y": {"v": y}}), min_cell=K)
    smd = {f.site: f for f in report.findings if f.measure == "smd"}
    expected = (x.mean() - y.mean()) / math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    assert smd["x"].score == pytest.approx(expected, rel=1e-9)
    assert smd["y"].score == pytest.approx(-expected, rel=1e-9)
    assert smd["x"].value == pytest.approx(x.mean())
    assert smd["x"].reference == pytest.approx(y.mean())


def test_binary_features_and_outcomes_use_the_smd_of_proportions() -> None:
    a = np.r_[np.ones(300), np.zeros(700)]
    b = np.r_[np.ones(500), np.zeros(500)]
    report = heterogeneity_report(
        summaries_of({"a": {"flag": a}, "b": {"flag": b}}, labels={"a": a > 0, "b": b > 0}),
        min_cell=K,
    )
    expected = (0.3 - 0.5) / math.sqrt((0.3 * 0.7 + 0.5 * 0.5) / 2)
    by = {(f.site, f.measure): f for f in report.findings}
    assert by["a", "smd"].score == pytest.approx(expected)
    assert by["a", "outcome"].score == pytest.approx(expected)
    assert ("a", "wasserstein") not in by  # a 0/1 feature: the SMD says it all


def test_wasserstein_and_ks_on_bars_have_known_answers() -> None:
    edges = tuple(float(e) for e in range(0, 5))  # bins [0,1) [1,2) [2,3) [3,4)
    left = NumericStats(
        n=100, missing=0, mean=0.5, m2=100 / 12, edges=edges, counts=(0, 100, 0, 0, 0, 0)
    )
    right = NumericStats(
        n=100, missing=0, mean=2.5, m2=100 / 12, edges=edges, counts=(0, 0, 0, 100, 0, 0)
    )
    report = heterogeneity_report(
        {
            "l": SiteSummary(records=100, numeric={"v": left}),
            "r": SiteSummary(records=100, numeric={"v": right}),
        },
        min_cell=K,
    )
    by = {(f.site, f.measure): f.score for f in report.findings}
    sd = math.sqrt((100 / 12) / 99)  # both sample sds (m2 / (n − 1))
    assert by["l", "wasserstein"] == pytest.approx(2.0 / sd)  # uniform[0,1] vs uniform[2,3]
    assert by["l", "ks"] == pytest.approx(1.0)


def test_wasserstein_matches_scipy_on_fine_bins() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 5000), rng.gamma(2.0, 1.0, 5000)
    report = heterogeneity_report(summaries_of({"x": {"v": x}, "y": {"v": y}}), min_cell=K)
    w1 = next(f.score for f in report.findings if f.measure == "wasserstein" and f.site == "x")
    ks = next(f.score for f in report.findings if f.measure == "ks" and f.site == "x")
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    assert w1 is not None
    assert ks is not None
    exact = scipy_stats.wasserstein_distance(x, y) / sd
    assert w1 == pytest.approx(exact, rel=0.1)  # within a fraction of a bar
    assert ks == pytest.approx(scipy_stats.ks_2samp(x, y).statistic, abs=0.03)


def test_quantity_skew_missingness_and_event_rates() -> None:
    rng = np.random.default_rng(5)
    sizes = {"big": 6000, "a": 1000, "b": 1000, "c": 1000}
    sites = normal_sites(rng, sizes)
    sites["a"]["bmi"][:400] = np.nan  # 40 % missing at one site
    times = {
        s: (rng.exponential(300, n), (rng.random(n) < 0.2).astype(float)) for s, n in sizes.items()
    }
    report = heterogeneity_report(summaries_of(sites, events=times), min_cell=K)
    assert flagged(report) == {("big", "", "records"), ("a", "bmi", "missing")}
    assert report.outcome_kind == "time_to_event"
    big = next(s for s in report.sites if s.site == "big")
    assert big.share == pytest.approx(6000 / 9000)
    assert big.event_rate == pytest.approx(times["big"][1].sum() / times["big"][0].sum())


# -- disclosure control -------------------------------------------------------------------------


def walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in walk(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in walk(v, f"{path}[{i}]")]
    return [(path, value)]


def test_nothing_below_min_cell_appears() -> None:
    """A tiny site, a rare category, sparse histogram cells, a few missing values, a rare 0/1
    feature and a rare outcome: none shows, and none can be had by subtraction."""
    rng = np.random.default_rng(11)
    sizes = {"a": 400, "b": 500, "c": 600, "tiny": 7}
    sites = normal_sites(rng, sizes)
    sites["a"]["age"][:3] = 200.0  # three far outliers: a sparse overflow cell
    sites["b"]["bmi"][:4] = np.nan  # four missing values
    for s, n in sizes.items():
        sites[s]["rare"] = np.zeros(n)
    sites["c"]["rare"][:5] = 1.0  # five ones at one site
    labels = {s: rng.random(n) < 0.4 for s, n in sizes.items()}
    labels["b"] = np.zeros(500, dtype=bool)
    labels["b"][:6] = True  # six positives
    cats = {s: {"race": ["white"] * (n - 40) + ["black"] * 40} for s, n in sizes.items() if n > 40}
    cats["tiny"] = {"race": ["white"] * 7}
    cats["a"]["race"][:3] = ["asian"] * 3  # a category held three times
    summaries = summaries_of(sites, labels=labels, categorical=cats)
    report = heterogeneity_report(summaries, min_cell=K)
    data = report.to_json()
    text = json.dumps(data)

    # the tiny site is named, its numbers are not, and it enters no total or reference
    assert "tiny" in text
    tiny = next(s for s in data["sites"] if s["site"] == "tiny")
    assert tiny["records"] is None
    assert tiny["share"] is None
    assert data["total_records"] == 1500
    assert all(f["site"] != "tiny" for f in data["findings"])
    assert all("tiny" not in h["counts"] for h in data["histograms"])
    assert all("tiny" not in f["left_out"] for f in data["findings"])

    # every count shown is 0 or ≥ min_cell
    for path, value in walk(data):
        if "/counts/" in path or path.endswith("/records"):
            assert value is None or value == 0 or value >= K, (path, value)
    age = next(h for h in data["histograms"] if h["feature"] == "age")
    assert sum(age["counts"]["a"]) == 400  # outliers merged into a bar, not dropped

    # withheld blocks: b's bmi (4 missing), c's rare flag (5 ones), b's outcome (6 positives)
    by = {(f["site"], f["feature"], f["measure"], f["category"]): f for f in data["findings"]}
    for key in [
        ("b", "bmi", "smd", ""),
        ("b", "bmi", "missing", ""),
        ("c", "rare", "smd", ""),
        ("b", "", "outcome", ""),
    ]:
        assert by[key]["value"] is None, key
        assert by[key]["score"] is None, key
        assert "withheld" in by[key]["note"]
    # … and they are not inside the others' references (no differencing)
    a_bmi = by["a", "bmi", "smd", ""]
    c_bmi = summaries["c"].numeric["bmi"]
    assert a_bmi["reference"] == pytest.approx(c_bmi.mean, abs=1e-4)
    a_outcome = by["a", "", "outcome", ""]
    assert a_outcome["reference"] == pytest.approx(labels["c"].mean(), abs=1e-4)
    assert all(
        f["site"] != "b" or f["feature"] != "bmi" or f["value"] is None for f in data["findings"]
    )

    # the rare category is not shown at the site holding it; it stays inside "other"
    assert ("a", "race", "category", "asian") not in by or by["a", "race", "category", "asian"][
        "value"
    ] is None
    for (site, _feature, measure, category), f in by.items():
        if measure == "category" and f["value"] is not None:
            shown = round(f["value"] * summaries[site].records)
            assert shown == 0 or shown >= K, (site, category, shown)


def test_a_rare_category_merges_with_the_next_smallest_into_other() -> None:
    rng = np.random.default_rng(2)
    sites = normal_sites(rng, {"a": 100, "b": 100})
    cats = {
        "a": {"grade": ["1"] * 85 + ["2"] * 12 + ["3"] * 3},  # "3" alone in other: 3 < K
        "b": {"grade": ["1"] * 50 + ["2"] * 30 + ["3"] * 20},
    }
    report = heterogeneity_report(summaries_of(sites, categorical=cats), min_cell=K)
    shares = {(f.site, f.category): f.value for f in report.findings if f.measure == "category"}
    assert shares["a", "other"] == pytest.approx(0.15)  # "2" joined "3" in other: 15 ≥ K
    assert shares["a", "2"] is None
    assert shares["a", "3"] is None
    assert shares["a", "1"] == pytest.approx(0.85)
    assert shares["b", "3"] == pytest.approx(0.2)


def test_histogram_bars_are_merged_across_sites() -> None:
    rng = np.random.default_rng(4)
    sites = normal_sites(rng, {"a": 60, "b": 3000})
    report = heterogeneity_report(summaries_of(sites), min_cell=K)
    for histogram in report.histograms:
        assert len(histogram.edges) == len(histogram.counts["a"]) + 1
        for counts in histogram.counts.values():
            assert all(c == 0 or c >= K for c in counts)
        assert sum(histogram.counts["a"]) == 60
        assert len(histogram.edges) < 33  # the small site forced merging


# -- refusals -----------------------------------------------------------------------------------


def test_bad_parameters_are_refused_naming_them() -> None:
    summaries = summaries_of(normal_sites(np.random.default_rng(0), {"a": 50, "b": 50}))
    with pytest.raises(ConfigurationError, match="min_cell must be an integer ≥ 1"):
        heterogeneity_report(summaries, min_cell=0)
    with pytest.raises(ConfigurationError, match="smd threshold must be a number > 0"):
        heterogeneity_report(summaries, min_cell=K, smd_threshold=-1)
    with pytest.raises(ConfigurationError, match="size_ratio must be > 1"):
        heterogeneity_report(summaries, min_cell=K, size_ratio=0.5)
    with pytest.raises(DataError, match="no site summaries"):
        heterogeneity_report({}, min_cell=K)


def test_histograms_on_different_edges_are_refused_naming_the_site() -> None:
    a = NumericStats.of(np.arange(50.0), (0.0, 25.0, 50.0))
    b = NumericStats.of(np.arange(50.0), (0.0, 20.0, 50.0))
    with pytest.raises(DataError, match="site 'b': numeric 'v': histogram not on the common"):
        heterogeneity_report(
            {
                "a": SiteSummary(records=50, numeric={"v": a}),
                "b": SiteSummary(records=50, numeric={"v": b}),
            },
            min_cell=K,
        )


# -- the disclosure rules, attacked directly ---------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 15),
    rows=st.lists(st.lists(st.integers(0, 30), min_size=6, max_size=6), min_size=1, max_size=5),
)
def test_merged_bars_never_show_a_small_count_and_keep_every_value(
    k: int, rows: list[list[int]]
) -> None:
    edges = (0.0, 1.0, 2.0, 3.0, 4.0)  # 4 bins + under/overflow = 6 counts
    stats = {}
    for i, counts in enumerate(rows):
        n = sum(counts)
        if n < k:  # a site shown has at least k values (the report withholds the others)
            counts = [*counts[:-1], counts[-1] + k - n]
            n = k
        stats[f"s{i}"] = NumericStats(
            n=n, missing=0, mean=2.0, m2=1.0, edges=edges, counts=tuple(counts)
        )
    merged = merge_bars("v", stats, k)
    assert merged is not None
    bar_edges, counts = merged
    assert set(bar_edges.tolist()) <= set(edges)
    assert bar_edges[0] == edges[0]
    assert bar_edges[-1] == edges[-1]
    for site, c in counts.items():
        assert all(x == 0 or x >= k for x in c.tolist())
        assert c.sum() == stats[site].n  # nothing dropped
        assert len(c) == len(bar_edges) - 1


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 15),
    counts=st.dictionaries(st.sampled_from("abcdefg"), st.integers(0, 40), min_size=1),
)
def test_recoded_categories_never_show_a_small_count(k: int, counts: dict[str, int]) -> None:
    if sum(counts.values()) < k:
        return  # such a site is withheld before recoding
    recoded = recode(counts, k, merged=0)
    assert all(n == 0 or n >= k for n in recoded.counts.values())
    assert sum(recoded.counts.values()) == sum(counts.values())
    for category, n in counts.items():
        shown = recoded.count(category)
        assert shown is None or shown == n  # a category is shown exactly, or not at all
