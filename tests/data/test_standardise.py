"""Federated standardisation: per-site sums give the pooled mean and std, applied everywhere."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import DataError
from biofed.data import (
    Dataset,
    FeatureMoments,
    FederatedDataset,
    SiteData,
    Standardiser,
    pooled_train_moments,
    standardise_sites,
)


def _fed(seed: int = 0) -> FederatedDataset:
    rng = np.random.default_rng(seed)
    sites = {}
    for k, (n, shift, scale) in enumerate([(50, 0.0, 1.0), (120, 3.0, 10.0), (7, -2.0, 1000.0)]):
        x = shift + scale * rng.standard_normal((n, 3))
        x[:, 2] = 5.0  # a constant feature is centred, not divided by zero
        rows = Dataset(
            name=f"s{k}", features=x, feature_names=("a", "b", "c"), targets={"label": x[:, 0] > 0}
        )
        sites[f"s{k}"] = SiteData(train=rows.subset(range(n - 2)), test=rows.subset([n - 2, n - 1]))
    return FederatedDataset(name="toy", sites=sites)


def test_federated_moments_equal_the_pooled_ones() -> None:
    fed = _fed()
    pooled = np.asarray(fed.pooled("train").features, dtype=np.float64)
    moments = pooled_train_moments(fed)
    assert moments.count == len(pooled)
    np.testing.assert_allclose(moments.mean, pooled.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(moments.std, pooled.std(axis=0), rtol=1e-9, atol=1e-9)


def test_combining_is_order_free() -> None:
    parts = [FeatureMoments.of(s.train) for s in _fed(1).sites.values()]
    one = FeatureMoments.combine(parts)
    two = FeatureMoments.combine(reversed(parts))
    np.testing.assert_allclose(one.total, two.total)
    np.testing.assert_allclose(one.total_sq, two.total_sq)


def test_standardise_sites_applies_one_transform_to_train_and_test() -> None:
    fed = _fed()
    out, scaler = standardise_sites(fed)
    train = np.asarray(out.pooled("train").features, dtype=np.float64)
    np.testing.assert_allclose(train[:, :2].mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train[:, :2].std(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(train[:, 2], 0.0)
    for site, data in fed.sites.items():
        assert data.test is not None
        test = out.sites[site].split("test")
        expected = (np.asarray(data.test.features, np.float64)[:, :2] - scaler.mean[:2]) / (
            scaler.std[:2]
        )
        np.testing.assert_allclose(test.features[:, :2], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(test.targets["label"], data.test.targets["label"])


def test_mismatched_columns_are_refused() -> None:
    fed = _fed()
    scaler = Standardiser.from_moments(pooled_train_moments(fed))
    other = Dataset(name="x", features=np.zeros((2, 2)), feature_names=("a", "b"))
    with pytest.raises(DataError, match="fitted on"):
        scaler.apply(other)
    with pytest.raises(DataError, match="zero sites"):
        FeatureMoments.combine([])
