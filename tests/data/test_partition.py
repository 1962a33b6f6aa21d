"""Tests of biofed.data's simulation partitioners and train/test split."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import ConfigurationError, DataError
from biofed.data import (
    Dataset,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    train_test_split,
)

Partitioner = Callable[[Dataset, int, np.random.Generator], dict[str, Dataset]]


def _dataset(n: int, num_classes: int = 3, seed: int = 0) -> Dataset:
    """Feature 0 is the row number, so every example can be traced back."""
    rng = np.random.default_rng(seed)
    features = np.column_stack([np.arange(n), rng.normal(size=n)]).astype(np.float32)
    return Dataset(
        name="toy",
        features=features,
        feature_names=("row", "x"),
        targets={"label": rng.integers(0, num_classes, n), "time": rng.random(n)},
    )


PARTITIONERS: dict[str, Partitioner] = {
    "iid": partition_iid,
    "dirichlet": lambda ds, k, rng: partition_dirichlet(ds, k, 1.0, rng),
    "quantity": lambda ds, k, rng: partition_quantity_skew(ds, k, 0.5, rng),
}


def _rows(sites: dict[str, Dataset]) -> list[np.ndarray]:
    return [site.features[:, 0].astype(np.int64) for site in sites.values()]


def _assert_exact_cover(ds: Dataset, sites: dict[str, Dataset], k: int) -> None:
    assert list(sites) == [f"site-{i}" for i in range(k)]
    rows = _rows(sites)
    assert all(len(r) >= 1 for r in rows)
    np.testing.assert_array_equal(np.sort(np.concatenate(rows)), np.arange(len(ds)))
    for name, site in sites.items():
        assert site.name == f"toy-{name}"
        idx = site.features[:, 0].astype(np.int64)
        assert np.all(np.diff(idx) > 0)  # original order kept
        np.testing.assert_array_equal(site.target("label"), ds.target("label")[idx])
        np.testing.assert_array_equal(site.features, ds.features[idx])


@st.composite
def _cases(draw: st.DrawFn) -> tuple[int, int, int]:
    n = draw(st.integers(1, 120))
    k = draw(st.integers(1, min(n, 12)))
    return n, k, draw(st.integers(0, 2**32 - 1))


@pytest.mark.parametrize("kind", ["iid", "quantity"])
@given(case=_cases())
@settings(max_examples=60, deadline=None)
def test_always_feasible_partitions_cover_exactly_once(
    kind: str, case: tuple[int, int, int]
) -> None:
    n, k, seed = case
    ds = _dataset(n, seed=seed)
    sites = PARTITIONERS[kind](ds, k, np.random.default_rng(seed))
    _assert_exact_cover(ds, sites, k)
    if kind == "iid":
        sizes = [len(s) for s in sites.values()]
        assert max(sizes) - min(sizes) <= 1


@given(
    case=_cases(),
    alpha=st.floats(0.05, 100.0),
    min_size=st.integers(1, 3),
    num_classes=st.integers(1, 5),
)
@settings(max_examples=60, deadline=None)
def test_dirichlet_covers_exactly_once_or_says_why(
    case: tuple[int, int, int], alpha: float, min_size: int, num_classes: int
) -> None:
    n, k, seed = case
    ds = _dataset(n, num_classes=num_classes, seed=seed)
    rng = np.random.default_rng(seed)
    try:
        sites = partition_dirichlet(ds, k, alpha, rng, min_size=min_size, max_tries=200)
    except ConfigurationError as exc:
        message = str(exc)
    else:
        _assert_exact_cover(ds, sites, k)
        assert min(len(s) for s in sites.values()) >= min_size
        return
    assert "min_size" in message


@pytest.mark.parametrize("kind", sorted(PARTITIONERS))
def test_deterministic_for_a_seed(kind: str) -> None:
    ds = _dataset(200)
    first = _rows(PARTITIONERS[kind](ds, 5, np.random.default_rng(7)))
    again = _rows(PARTITIONERS[kind](ds, 5, np.random.default_rng(7)))
    other = _rows(PARTITIONERS[kind](ds, 5, np.random.default_rng(8)))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(len(a) != len(b) or np.any(a != b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("kind", sorted(PARTITIONERS))
def test_invalid_num_sites(kind: str) -> None:
    ds = _dataset(10)
    rng = np.random.default_rng(0)
    for bad in (0, -1):
        with pytest.raises(ConfigurationError, match="num_sites must be >= 1"):
            PARTITIONERS[kind](ds, bad, rng)
    with pytest.raises(ConfigurationError, match="more than the 10 examples"):
        PARTITIONERS[kind](ds, 11, rng)
    with pytest.raises(ConfigurationError, match="integer"):
        PARTITIONERS[kind](ds, 2.5, rng)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"numpy\.random\.Generator"):
        PARTITIONERS[kind](ds, 2, 42)  # type: ignore[arg-type]


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_alpha(alpha: float) -> None:
    ds, rng = _dataset(10), np.random.default_rng(0)
    with pytest.raises(ConfigurationError, match="alpha"):
        partition_dirichlet(ds, 2, alpha, rng)
    with pytest.raises(ConfigurationError, match="alpha"):
        partition_quantity_skew(ds, 2, alpha, rng)


def test_dirichlet_label_skew_and_limits() -> None:
    ds = _dataset(3000, num_classes=4)
    skewed = partition_dirichlet(ds, 4, 0.1, np.random.default_rng(1))
    even = partition_dirichlet(ds, 4, 1000.0, np.random.default_rng(1))

    def max_share(sites: dict[str, Dataset]) -> float:
        shares = [
            np.bincount(s.target("label"), minlength=4).max() / len(s) for s in sites.values()
        ]
        return float(np.mean(shares))

    assert max_share(skewed) > 0.6 > 0.3 > max_share(even)
    with pytest.raises(ConfigurationError, match="need 40 examples"):
        partition_dirichlet(_dataset(30), 4, 1.0, np.random.default_rng(0), min_size=10)
    with pytest.raises(ConfigurationError, match="raise alpha"):
        partition_dirichlet(_dataset(40), 20, 0.01, np.random.default_rng(0), max_tries=5)
    with pytest.raises(DataError, match="no target 'y'"):
        partition_dirichlet(ds, 2, 1.0, np.random.default_rng(0), label_key="y")
    with pytest.raises(ConfigurationError, match="min_size"):
        partition_dirichlet(ds, 2, 1.0, np.random.default_rng(0), min_size=0)


def test_quantity_skew_sizes_vary() -> None:
    sites = partition_quantity_skew(_dataset(1000), 10, 0.3, np.random.default_rng(3))
    sizes = np.array([len(s) for s in sites.values()])
    assert sizes.sum() == 1000
    assert sizes.min() >= 1
    assert sizes.max() > 3 * np.median(sizes)


@given(
    n=st.integers(2, 200),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
    stratify=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_train_test_split_properties(n: int, fraction: float, seed: int, stratify: bool) -> None:
    ds = _dataset(n, seed=seed)
    key = "label" if stratify else None
    split = train_test_split(ds, fraction, np.random.default_rng(seed), stratify_key=key)
    assert split.test is not None
    train_rows = split.train.features[:, 0].astype(np.int64)
    test_rows = split.test.features[:, 0].astype(np.int64)
    expected = min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)
    assert len(test_rows) == expected
    np.testing.assert_array_equal(np.sort(np.concatenate([train_rows, test_rows])), np.arange(n))
    assert np.all(np.diff(train_rows) > 0)
    assert np.all(np.diff(test_rows) > 0)
    assert (split.train.name, split.test.name) == ("toy-train", "toy-test")
    if stratify:
        labels = ds.target("label")
        for c in np.unique(labels):
            want = np.count_nonzero(labels == c) * expected / n
            got = np.count_nonzero(split.test.target("label") == c)
            assert abs(got - want) < 1.0 + 1e-9


def test_train_test_split_validation() -> None:
    rng = np.random.default_rng(0)
    for bad in (0.0, 1.0, -0.5, 1.5):
        with pytest.raises(ConfigurationError, match="test_fraction"):
            train_test_split(_dataset(10), bad, rng)
    with pytest.raises(DataError, match="at least 2"):
        train_test_split(_dataset(1), 0.5, rng)
    with pytest.raises(DataError, match="no target 'y'"):
        train_test_split(_dataset(10), 0.5, rng, stratify_key="y")
    a = train_test_split(_dataset(50), 0.2, np.random.default_rng(5))
    b = train_test_split(_dataset(50), 0.2, np.random.default_rng(5))
    assert a.test is not None
    assert b.test is not None
    np.testing.assert_array_equal(a.test.features, b.test.features)
