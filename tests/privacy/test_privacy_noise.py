"""Gaussian noise: the right law, secure by default, reproducible only when seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from biofed.core import ConfigurationError, ParameterSet
from biofed.privacy import GaussianNoise

N = 200_000


def _check_law(sample: np.ndarray, std: float) -> None:
    """Empirical mean and std within 5 standard errors of N(0, std²), and a KS test."""
    n = sample.size
    assert abs(sample.mean()) < 5 * std / math.sqrt(n)
    # The sample std of n normals has standard error ≈ std / sqrt(2n).
    assert abs(sample.std(ddof=1) - std) < 5 * std / math.sqrt(2 * n)
    assert stats.kstest(sample / std, "norm").pvalue > 1e-5


@pytest.mark.parametrize("std", [1.0, 0.01, 37.5])
def test_secure_noise_has_the_requested_law(std: float) -> None:
    noise = GaussianNoise(std)
    assert noise.secure
    _check_law(noise.sample(N), std)


def test_seeded_noise_has_the_requested_law() -> None:
    noise = GaussianNoise.seeded(2.0, seed=7)
    assert not noise.secure
    _check_law(noise.sample(N), 2.0)


def test_secure_noise_tails_are_gaussian() -> None:
    sample = GaussianNoise(1.0).sample(N)
    # P(|X| > 3) = 0.0027; a binomial count within 6 standard deviations.
    expected = N * 2 * stats.norm.sf(3)
    assert abs((np.abs(sample) > 3).sum() - expected) < 6 * math.sqrt(expected)
    assert abs(stats.kurtosis(sample)) < 0.1


def test_seeded_is_reproducible_and_default_is_not() -> None:
    params = ParameterSet({"w": np.zeros((4, 5), dtype=np.float32), "b": np.zeros(3)})
    first = GaussianNoise.seeded(1.0, seed=3).add(params)
    assert first == GaussianNoise.seeded(1.0, seed=3).add(params)
    assert first != GaussianNoise.seeded(1.0, seed=4).add(params)
    secure = GaussianNoise(1.0)
    assert secure.add(params) != secure.add(params)
    assert not np.array_equal(GaussianNoise(1.0).sample(64), GaussianNoise(1.0).sample(64))


def test_add_keeps_names_shapes_and_dtypes() -> None:
    params = ParameterSet({"w": np.ones((2, 3), dtype=np.float32), "b": np.ones(4)})
    noisy = GaussianNoise(0.5).add(params)
    assert noisy.spec == params.spec
    assert not np.array_equal(noisy["w"], params["w"])


def test_zero_std_adds_nothing() -> None:
    params = ParameterSet({"w": np.arange(4.0)})
    assert GaussianNoise(0.0).add(params) == params


def test_integer_arrays_are_refused() -> None:
    params = ParameterSet({"w": np.ones(2), "count": np.array([5])})
    with pytest.raises(ConfigurationError, match="cannot add Gaussian noise to 'count'"):
        GaussianNoise(1.0).add(params)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_std_is_validated(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="std must be"):
        GaussianNoise(bad)


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(ConfigurationError, match="numpy Generator"):
        GaussianNoise(1.0, rng=42)  # type: ignore[arg-type]


def test_sample_shapes() -> None:
    noise = GaussianNoise(1.0)
    assert noise.sample((3, 4)).shape == (3, 4)
    assert noise.sample(5).shape == (5,)
    assert noise.sample(0).shape == (0,)
    assert noise.sample((2, 0)).shape == (2, 0)
