"""Federated imputation and one-hot vocabularies (biofed.data's encoder): known answers."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import ConfigurationError
from biofed.data import CategoryCounts, NumericSummary, fit_encoder
from biofed.data._encode import MEDIAN_BINS


def _sites_numeric(seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sites = []
    for n, shift in ((50, 0.0), (80, 3.0), (31, -2.0)):
        x = rng.normal(shift, 1.0 + shift**2, size=n)
        x[rng.random(n) < 0.2] = np.nan
        sites.append({"x": x})
    return sites


def test_federated_mean_equals_pooled_mean() -> None:
    sites = _sites_numeric()
    enc = fit_encoder(sites, numeric=["x"], impute="mean")
    pooled = np.concatenate([s["x"] for s in sites])
    assert enc.fill["x"] == pytest.approx(np.nanmean(pooled), abs=1e-9)


def test_federated_median_is_within_one_bin_of_pooled_median() -> None:
    sites = _sites_numeric(1)
    enc = fit_encoder(sites, numeric=["x"], impute="median")
    pooled = np.concatenate([s["x"] for s in sites])
    width = (np.nanmax(pooled) - np.nanmin(pooled)) / MEDIAN_BINS
    assert abs(enc.fill["x"] - np.nanmedian(pooled)) <= width


@pytest.mark.parametrize("seed", range(20))
def test_median_bound_holds_for_odd_even_and_gapped_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    x = np.concatenate([rng.normal(0, 1, n), rng.normal(1000, 1, int(rng.integers(1, 40)))])
    x = np.append(x, np.nan)
    sites = [{"x": part} for part in np.array_split(rng.permutation(x), 3)]
    enc = fit_encoder(sites, numeric=["x"], impute="median")
    width = (np.nanmax(x) - np.nanmin(x)) / MEDIAN_BINS
    assert abs(enc.fill["x"] - np.nanmedian(x)) <= width + 1e-9


def test_median_of_two_separated_halves_is_the_middle_of_the_gap() -> None:
    sites = [{"x": np.array([0.0, 1.0, np.nan])}, {"x": np.array([1023.0, 1024.0])}]
    enc = fit_encoder(sites, numeric=["x"], impute="median")
    assert abs(enc.fill["x"] - 512.0) <= 1024.0 / MEDIAN_BINS


def test_zero_imputation_and_missing_indicator() -> None:
    sites = [{"x": np.array([1.0, np.nan])}, {"x": np.array([3.0, 5.0])}]
    enc = fit_encoder(sites, numeric=["x"], impute="zero")
    assert enc.feature_names == ("x", "x__missing")
    np.testing.assert_array_equal(enc.apply(sites[0]), [[1.0, 0.0], [0.0, 1.0]])


def test_column_without_missing_training_values_is_not_imputed() -> None:
    enc = fit_encoder([{"x": np.array([1.0, 2.0])}], numeric=["x"])
    assert enc.fill == {}


def test_summaries_combine_to_the_pooled_ones() -> None:
    sites = _sites_numeric(2)
    pooled = NumericSummary.combine(NumericSummary.of(s["x"]) for s in sites)
    allx = np.concatenate([s["x"] for s in sites])
    assert pooled.count == int(np.sum(~np.isnan(allx)))
    assert pooled.missing == int(np.sum(np.isnan(allx)))
    assert pooled.lo == np.nanmin(allx)
    assert pooled.hi == np.nanmax(allx)


def _sites_text() -> list[dict[str, list[object]]]:
    return [
        {"c": ["a"] * 6 + ["b"] * 2 + ["rare"] + [None]},
        {"c": ["a"] * 5 + ["b"] * 9 + ["c"] * 3},
        {"c": ["c"] * 8 + ["rare"] * 2},
    ]


def test_vocabulary_equals_pooled_counts_exactly() -> None:
    sites = _sites_text()
    pooled = CategoryCounts.combine(CategoryCounts.of(s["c"]) for s in sites)
    assert pooled.counts == {"a": 11, "b": 11, "c": 11, "rare": 3, "missing": 1}


def test_rare_categories_are_merged_into_other() -> None:
    enc = fit_encoder(_sites_text(), text=["c"], min_category_count=10)
    assert enc.vocabularies["c"] == ("a", "b", "c", "other")
    assert enc.feature_names == ("c=a", "c=b", "c=c", "c=other")
    x = enc.apply({"c": ["rare", None, "a"]})
    np.testing.assert_array_equal(x, [[0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 0, 0]])


def test_unseen_category_maps_to_other() -> None:
    enc = fit_encoder(_sites_text(), text=["c"], min_category_count=1)
    x = enc.apply({"c": ["never-seen"]})
    assert x[0, enc.vocabularies["c"].index("other")] == 1.0
    assert x.sum() == 1.0


def test_same_columns_at_every_site() -> None:
    text = _sites_text()
    num = _sites_numeric()
    sites = [{**t, **n} for t, n in zip(text, num, strict=True)]
    enc = fit_encoder(sites, numeric=["x"], text=["c"], min_category_count=10)
    widths = {enc.apply({"x": s["x"][: len(s["c"])], "c": s["c"]}).shape[1] for s in sites}
    assert widths == {len(enc.feature_names)}
    assert enc.feature_names[:2] == ("x", "x__missing")


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="impute must be one of"):
        fit_encoder([{"x": np.array([1.0])}], numeric=["x"], impute="mode")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="min_category_count"):
        fit_encoder([{"c": ["a"]}], text=["c"], min_category_count=0)
