"""Federated preprocessing equals pooled preprocessing (issue 13's acceptance for section 2).

Fixtures are ExtractedTable-shaped numpy tables built here (no OMOP), several sites each, with
missing values, skewed values, rare categories and a train/test split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import DataError
from biofed.data import (
    ColumnPlan,
    ExtractedTable,
    NumericRequest,
    Preprocessing,
    PreprocessingFit,
    SiteSummary,
    StudySpec,
    SummaryRequest,
    summarise,
)
from biofed.data._fit import HIST_BINS, HIST_SDS, REFINE_BINS

KINDS = {"age": "numeric", "bmi": "numeric", "smoker": "binary", "sex": "categorical"}


def make_site(rng: np.random.Generator, name: str, n: int, *, shift: float = 0.0) -> ExtractedTable:
    age = rng.normal(55 + shift, 12, n)
    bmi = np.exp(rng.normal(3.3, 0.2, n))
    bmi[rng.random(n) < 0.2] = np.nan
    smoker = (rng.random(n) < 0.3).astype(np.float64)
    sex = rng.choice(
        np.array(["female", "male", "intersex", "a/b"], dtype=object), n, p=[0.48, 0.48, 0.02, 0.02]
    )
    sex[rng.random(n) < 0.05] = None
    return ExtractedTable(
        name=name,
        ids=np.arange(n, dtype=np.int64) + hash(name) % 1000 * 10_000,
        columns={"age": age, "bmi": bmi, "smoker": smoker, "sex": sex},
        kinds=KINDS,
        outcome_kind="binary",
        targets={"label": (rng.random(n) < 0.2).astype(np.float64)},
        is_test=rng.random(n) < 0.25,
    )


def pooled(tables: Mapping[str, ExtractedTable]) -> ExtractedTable:
    parts = list(tables.values())
    return ExtractedTable(
        name="pooled",
        ids=np.arange(sum(len(t) for t in parts), dtype=np.int64),
        columns={k: np.concatenate([t.columns[k] for t in parts]) for k in KINDS},
        kinds=KINDS,
        outcome_kind=parts[0].outcome_kind,
        targets={k: np.concatenate([t.targets[k] for t in parts]) for k in parts[0].targets},
        is_test=np.concatenate([t.is_test for t in parts]),
    )


def run_fit(
    fit: PreprocessingFit, tables: Mapping[str, ExtractedTable], *, min_cell: int = 1
) -> tuple[PreprocessingFit, list[SummaryRequest]]:
    """Drive the fit as the engine does: JSON request out, arrays back, both re-parsed."""
    requests = []
    while not fit.done:
        request = SummaryRequest.from_json(fit.request().to_json())
        requests.append(request)
        replies = {
            site: SiteSummary.from_arrays(summarise(t, request, min_cell=min_cell).to_arrays())
            for site, t in tables.items()
        }
        fit = fit.add(replies)
    return fit, requests


@pytest.fixture
def sites() -> dict[str, ExtractedTable]:
    rng = np.random.default_rng(7)
    return {f"site{i}": make_site(rng, f"site{i}", n) for i, n in enumerate((300, 80, 500, 41))}


def _train(table: ExtractedTable, key: str) -> np.ndarray:
    return np.asarray(table.columns[key])[~table.is_test]


def test_means_and_sds_equal_the_pooled_ones(sites: dict[str, ExtractedTable]) -> None:
    plans = {k: ColumnPlan(kind=v, standardise=v == "numeric") for k, v in KINDS.items()}
    fit, requests = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="binary"), sites)
    assert len(requests) == 2  # moments, then the common histograms (no quantiles needed)
    prep = fit.result()
    all_rows = pooled(sites)
    for name in ("age", "bmi"):
        x = _train(all_rows, name)
        present = x[~np.isnan(x)]
        filled = np.where(np.isnan(x), present.mean(), x)
        col = next(c for c in prep.columns if c.name == name)
        assert col.fill == pytest.approx(present.mean(), rel=1e-12, abs=1e-9)
        assert col.center == pytest.approx(filled.mean(), rel=1e-12, abs=1e-9)
        assert col.scale == pytest.approx(filled.std(), rel=1e-12, abs=1e-9)
    bmi = next(c for c in prep.columns if c.name == "bmi")
    age = next(c for c in prep.columns if c.name == "age")
    assert bmi.indicator
    assert not age.indicator
    smoker = next(c for c in prep.columns if c.name == "smoker")
    assert (smoker.center, smoker.scale, smoker.indicator) == (0.0, 1.0, False)
    # the vocabulary is exactly the pooled one (min_cell 1: nothing merged at the sites)
    sex = [None if v is None else str(v) for v in _train(all_rows, "sex")]
    counts = {c: sex.count(c) for c in set(sex)}
    expected = sorted(("missing" if c is None else c) for c, n in counts.items() if n >= 10)
    sex_col = next(c for c in prep.columns if c.name == "sex")
    assert sex_col.vocabulary == (*expected, "other")
    # the common histograms of every numeric covariate, per site: the heterogeneity input
    assert set(fit.last_summaries) == set(sites)
    for summary in fit.last_summaries.values():
        for name in ("age", "bmi", "smoker"):
            stats = summary.numeric[name]
            assert stats.edges is not None
            assert len(stats.edges) == HIST_BINS + 1
        assert "sex" in summary.categorical


def test_applied_per_site_equals_pooled_then_split(sites: dict[str, ExtractedTable]) -> None:
    plans = {
        "age": ColumnPlan(kind="numeric", winsorise=(0.05, 0.95)),
        "bmi": ColumnPlan(kind="numeric", log=True, impute="median", missing_indicator=True),
        "smoker": ColumnPlan(kind="binary", standardise=False),
        "sex": ColumnPlan(kind="categorical", min_count=10),
    }
    fit, _ = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="binary"), sites)
    prep = fit.result()
    all_rows = pooled(sites)
    whole = prep.apply(all_rows)
    offset = 0
    for table in sites.values():
        x = prep.apply(table)
        np.testing.assert_array_equal(x, whole[offset : offset + len(table)])
        data = prep.site_data(table)
        np.testing.assert_allclose(data.train.features, x[~table.is_test].astype(np.float32))
        assert data.test is not None
        np.testing.assert_array_equal(
            data.test.targets["label"], table.targets["label"][table.is_test]
        )
        assert data.train.feature_names == prep.feature_names
        offset += len(table)
    assert prep.feature_names[:3] == ("age", "bmi", "bmi__missing")
    # standardised columns of the pooled train rows have mean 0 and sd 1
    train = whole[~all_rows.is_test]
    for i in (0, 1):
        assert train[:, i].mean() == pytest.approx(0.0, abs=1e-9)
        assert train[:, i].std() == pytest.approx(1.0, abs=1e-9)


def test_quantiles_are_within_the_stated_bound(sites: dict[str, ExtractedTable]) -> None:
    plans = {
        "age": ColumnPlan(kind="numeric", winsorise=(0.01, 0.99), impute="median"),
        "bmi": ColumnPlan(kind="numeric", log=True, impute="median"),
    }
    fit, requests = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="binary"), sites)
    prep = fit.result()
    all_rows = pooled(sites)
    age_raw = _train(all_rows, "age")
    bound = (2 * HIST_SDS * age_raw.std() / HIST_BINS) / REFINE_BINS
    age = prep.columns[0]
    assert age.clip is not None
    assert abs(age.clip[0] - np.quantile(age_raw, 0.01)) <= bound
    assert abs(age.clip[1] - np.quantile(age_raw, 0.99)) <= bound
    clipped = np.clip(age_raw, *age.clip)
    assert age.fill is not None
    assert abs(age.fill - np.median(clipped)) <= (2 * HIST_SDS * clipped.std() / HIST_BINS) / 32
    bmi = np.log1p(_train(all_rows, "bmi"))
    bmi = bmi[~np.isnan(bmi)]
    assert prep.columns[1].fill is not None
    assert abs(prep.columns[1].fill - np.median(bmi)) <= (8 * bmi.std() / HIST_BINS) / 32
    # raw moments, raw histogram, refine, moments after clip, common histograms, refine medians
    assert len(requests) == 6


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    q=st.floats(0.0, 1.0),
    heavy=st.booleans(),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=4),
)
def test_any_quantile_is_within_the_bound(
    seed: int, q: float, heavy: bool, sizes: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    tables = {}
    for i, n in enumerate(sizes):
        x = rng.standard_cauchy(n) if heavy else rng.normal(0, 1, n).round(1)
        tables[f"s{i}"] = ExtractedTable(
            name=f"s{i}",
            ids=np.arange(n, dtype=np.int64),
            columns={"x": x},
            kinds={"x": "numeric"},
            outcome_kind="binary",
            targets={"label": np.zeros(n)},
            is_test=np.zeros(n, dtype=bool),
        )
    plans = {"x": ColumnPlan(kind="numeric", winsorise=(q, q))}
    fit, _ = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="binary"), tables)
    allx = np.concatenate([t.columns["x"] for t in tables.values()])
    bound = (2 * HIST_SDS * allx.std() / HIST_BINS) / REFINE_BINS
    clip = fit.result().columns[0].clip
    assert clip is not None
    assert abs(clip[0] - np.quantile(allx, q)) <= bound * (1 + 1e-9) + 1e-12


def test_rare_categories_go_to_other_and_are_counted_as_suppressed() -> None:
    n = 40
    sex = np.array(["female"] * 20 + ["male"] * 17 + ["x", "x", "y"], dtype=object)
    table = ExtractedTable(
        name="a",
        ids=np.arange(n, dtype=np.int64),
        columns={"sex": sex},
        kinds={"sex": "categorical"},
        outcome_kind="binary",
        targets={"label": np.zeros(n)},
        is_test=np.zeros(n, dtype=bool),
    )
    summary = summarise(table, SummaryRequest(pass_no=1, categorical=("sex",)), min_cell=5)
    # "other" alone would hold 3 < 5 records, so the next-smallest category joins it
    assert dict(summary.categorical["sex"]) == {"female": 20, "other": 20}
    assert summary.suppressed["sex"] == 3
    fit, _ = run_fit(
        PreprocessingFit.from_plans(
            {"sex": ColumnPlan(kind="categorical", min_count=1)}, outcome_kind="binary"
        ),
        {"a": table},
        min_cell=5,
    )
    prep = fit.result()
    assert prep.feature_names == ("sex=female", "sex=other")
    unseen = ExtractedTable(
        name="b",
        ids=np.arange(3, dtype=np.int64),
        columns={"sex": np.array(["male", "zzz", None], dtype=object)},
        kinds={"sex": "categorical"},
        outcome_kind="binary",
        targets={"label": np.zeros(3)},
        is_test=np.zeros(3, dtype=bool),
    )
    np.testing.assert_array_equal(prep.apply(unseen), [[0, 1], [0, 1], [0, 1]])


def test_a_site_below_min_cell_refuses(sites: dict[str, ExtractedTable]) -> None:
    request = PreprocessingFit.from_plans(
        {"age": ColumnPlan(kind="numeric")}, outcome_kind="binary"
    ).request()
    with pytest.raises(DataError, match="min_cell=1000") as info:
        summarise(sites["site1"], request, min_cell=1000)
    assert str(int((~sites["site1"].is_test).sum())) not in str(info.value)


def test_a_sparse_numeric_column_is_withheld() -> None:
    x = np.full(30, np.nan)
    x[:3] = [1.0, 2.0, 3.0]
    table = ExtractedTable(
        name="a",
        ids=np.arange(30, dtype=np.int64),
        columns={"bmi": x},
        kinds={"bmi": "numeric"},
        outcome_kind="time_to_event",
        targets={"time": np.ones(30), "event": np.zeros(30)},
        is_test=np.zeros(30, dtype=bool),
    )
    summary = summarise(
        table, SummaryRequest(pass_no=1, numeric={"bmi": NumericRequest()}), min_cell=5
    )
    assert summary.numeric["bmi"].n == 0
    assert summary.suppressed == {"bmi": 1}
    assert summary.outcome == {"n": 30.0, "events": 0.0, "time_sum": 30.0}
    x[5] = np.inf
    with pytest.raises(DataError, match="'bmi' has infinite values"):
        summarise(
            replace(table, columns={"bmi": x}),
            SummaryRequest(pass_no=1, numeric={"bmi": NumericRequest()}),
            min_cell=5,
        )


def test_a_site_that_drops_out_or_lies_fails_the_fit(sites: dict[str, ExtractedTable]) -> None:
    fit = PreprocessingFit.from_plans(
        {"age": ColumnPlan(kind="numeric", impute="median")}, outcome_kind="binary"
    )
    request = fit.request()
    fit = fit.add({s: summarise(t, request, min_cell=1) for s, t in sites.items()})
    request = fit.request()
    replies = {s: summarise(t, request, min_cell=1) for s, t in sites.items()}
    with pytest.raises(DataError, match="other sites than pass 1"):
        fit.add({k: v for k, v in replies.items() if k != "site0"})
    bad = summarise(
        sites["site0"], SummaryRequest(pass_no=2, numeric={"age": NumericRequest()}), min_cell=1
    )
    with pytest.raises(DataError, match="not on the edges asked"):
        fit.add({**replies, "site0": bad})
    liar = replace(replies["site0"], outcome={"n": 5.0, "events": 1.0, "time_sum": 3.0})
    with pytest.raises(DataError, match="outcome statistics must be"):
        fit.add({**replies, "site0": liar})


def test_preprocessing_json_round_trips_and_refuses_hostile_input(
    sites: dict[str, ExtractedTable],
) -> None:
    plans = {k: ColumnPlan(kind=v) for k, v in KINDS.items()}
    fit, _ = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="binary"), sites)
    prep = fit.result()
    again = Preprocessing.from_json(prep.to_json())
    assert again == prep
    assert again.digest == prep.digest
    assert len(prep.digest) == 64
    body = json.loads(prep.to_json())
    hostile = [
        ("[]", "must be an object"),
        (json.dumps({**body, "format": 2}), "unknown format"),
        (prep.to_json().replace('"scale":', '"scale":-', 1), "scale must be > 0"),
        (prep.to_json().replace('"center":', '"center":NaN,"x":', 1), "NaN"),
        (json.dumps({**body, "columns": [{**body["columns"][0], "sql": 1}]}), "exactly the fields"),
        (json.dumps({**body, "columns": [{**body["columns"][0], "name": "a b"}]}), "column name"),
        (json.dumps({**body, "columns": body["columns"] * 2}), "named twice"),
        (json.dumps({**body, "outcome_kind": "poisson"}), "outcome kind"),
    ]
    for text, message in hostile:
        with pytest.raises(DataError, match=message) as info:
            Preprocessing.from_json(text)
        assert "\n" not in str(info.value)


def test_start_from_a_study_spec_uses_the_default_transforms(
    sites: dict[str, ExtractedTable],
) -> None:
    spec = StudySpec.from_mapping(
        {
            "study": {"name": "t", "source": "file"},
            "columns": {
                "features": ["age", "bmi", "smoker", "sex"],
                "categorical": ["sex"],
                "binary": ["smoker"],
            },
            "outcome": {"kind": "binary", "label": "y"},
            "transforms": {"bmi": {"impute": "median", "log": True}},
        }
    )
    fit, requests = run_fit(PreprocessingFit.start(spec), sites)
    prep = fit.result()
    assert prep.feature_names[:4] == ("age", "bmi", "bmi__missing", "smoker")
    assert [c.name for c in prep.columns] == ["age", "bmi", "smoker", "sex"]
    assert prep.columns[1].log
    assert prep.columns[2].scale == 1.0
    assert len(requests) == 3  # moments, common histograms, median refinement


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=5),
    missing=st.floats(0.0, 0.9),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
)
def test_federated_moments_equal_numpy_for_any_sites(
    seed: int, sizes: list[int], missing: float, scale: float
) -> None:
    rng = np.random.default_rng(seed)
    tables = {}
    for i, n in enumerate(sizes):
        x = rng.lognormal(3, 1, n) * scale
        x[rng.random(n) < missing] = np.nan
        if i == 0:
            x[0] = 1.0 * scale  # every fit has a present value
        cat = rng.choice(np.array(["a", "b", "c", None], dtype=object), n)
        tables[f"s{i}"] = ExtractedTable(
            name=f"s{i}",
            ids=np.arange(n, dtype=np.int64),
            columns={"x": x, "c": cat},
            kinds={"x": "numeric", "c": "categorical"},
            outcome_kind="time_to_event",
            targets={"time": rng.random(n) * 100, "event": (rng.random(n) < 0.5) * 1.0},
            is_test=np.zeros(n, dtype=bool),
        )
    plans = {"x": ColumnPlan(kind="numeric"), "c": ColumnPlan(kind="categorical", min_count=3)}
    fit, _ = run_fit(PreprocessingFit.from_plans(plans, outcome_kind="time_to_event"), tables)
    prep = fit.result()
    allx = np.concatenate([t.columns["x"] for t in tables.values()])
    present = allx[~np.isnan(allx)]
    filled = np.where(np.isnan(allx), present.mean(), allx)
    col = prep.columns[0]
    assert col.fill == pytest.approx(present.mean(), rel=1e-9)
    assert col.center == pytest.approx(filled.mean(), rel=1e-9)
    if filled.std() > 1e-9 * scale:
        assert col.scale == pytest.approx(filled.std(), rel=1e-9)
    assert col.indicator == bool(np.isnan(allx).any())
    cats = [("missing" if v is None else v) for t in tables.values() for v in t.columns["c"]]
    kept = sorted(c for c in set(cats) if cats.count(c) >= 3)
    assert prep.columns[1].vocabulary == (*kept, "other")
    # targets travel as tasks read them
    data = prep.site_data(tables["s0"])
    assert set(data.train.targets) == {"time", "event"}
    assert data.test is None


def _rows(table: ExtractedTable, name: str, rows: np.ndarray) -> ExtractedTable:
    return ExtractedTable(
        name=name,
        ids=table.ids[rows],
        columns={k: v[rows] for k, v in table.columns.items()},
        kinds=table.kinds,
        outcome_kind=table.outcome_kind,
        targets={k: v[rows] for k, v in table.targets.items()},
        is_test=table.is_test[rows],
    )


def test_eunomia_gi_bleed_federated_equals_pooled() -> None:
    """The real Eunomia GI-bleed table (read-only), split into 4 age-skewed sites."""
    from biofed.data import extract
    from biofed.datasets import eunomia_path, gi_bleed_study

    spec = gi_bleed_study("time_to_event")
    whole = extract(spec, eunomia_path())
    order = np.argsort(whole.columns["age"] + np.random.default_rng(0).normal(0, 10, len(whole)))
    tables = {
        f"site-{i}": _rows(whole, f"site-{i}", np.sort(part))
        for i, part in enumerate(np.array_split(order, [300, 900, 1700]))
    }
    fit, requests = run_fit(PreprocessingFit.start(spec), tables, min_cell=5)
    prep = fit.result()
    assert len(requests) == 2
    age = _train(whole, "age")
    col = prep.columns[0]
    assert (col.name, col.fill, col.indicator) == ("age", pytest.approx(age.mean()), False)
    assert col.center == pytest.approx(age.mean(), rel=1e-12)
    assert col.scale == pytest.approx(age.std(), rel=1e-12)
    sexes = _train(whole, "sex")
    expected = sorted({str(s) for s in sexes if s is not None and list(sexes).count(s) >= 10})
    assert prep.columns[1].vocabulary == (*expected, "other")
    assert prep.feature_names == (
        "age",
        *(f"sex={v}" for v in (*expected, "other")),
        "peptic_ulcer",
        "ulcerative_colitis",
        "acetaminophen",
    )
    # each site's matrix is the pooled matrix's rows for its persons
    pooled_x = prep.apply(whole)
    by_id = {int(p): i for i, p in enumerate(whole.ids)}
    for table in tables.values():
        rows = [by_id[int(p)] for p in table.ids]
        np.testing.assert_array_equal(prep.apply(table), pooled_x[rows])
        data = prep.site_data(table)
        assert set(data.train.targets) == {"time", "event"}
    events = sum(s.outcome["events"] for s in fit.last_summaries.values())
    assert events == float(np.sum(whole.targets["event"][~whole.is_test]))
