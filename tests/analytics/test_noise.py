"""DP noise for query answers: calibration against known values, the right laws, secure
by default, reproducible only when seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from biofed.analytics import (
    SecureNoise,
    SeededNoise,
    analytic_gaussian_delta,
    gaussian_std,
    laplace_scale,
)
from biofed.core import ConfigurationError
from biofed.privacy import LaplaceNoise

N = 100_000


def test_laplace_scale_is_sensitivity_over_epsilon() -> None:
    assert laplace_scale(1.0, 0.5) == 2.0
    assert laplace_scale(3.0, 1.5) == 2.0
    with pytest.raises(ConfigurationError, match="epsilon"):
        laplace_scale(1.0, 0.0)
    with pytest.raises(ConfigurationError, match="sensitivity"):
        laplace_scale(-1.0, 1.0)


def test_analytic_gaussian_matches_balle_wang() -> None:
    # Balle & Wang (2018): at ε = 1, δ = 1e-5, Δ = 1 the analytic σ is ≈ 3.73, below the
    # classic Dwork–Roth bound √(2 ln(1.25/δ))/ε ≈ 4.84.
    std = gaussian_std(1.0, 1.0, 1e-5)
    assert std == pytest.approx(3.7305, abs=5e-4)
    classic = math.sqrt(2 * math.log(1.25 / 1e-5))
    assert std < classic
    # The root is tight and never overshoots the target δ.
    assert analytic_gaussian_delta(1.0, 1.0, std) <= 1e-5
    assert analytic_gaussian_delta(1.0, 1.0, std * 0.999) > 1e-5
    # Scales linearly in the sensitivity.
    assert gaussian_std(4.0, 1.0, 1e-5) == pytest.approx(4 * std, rel=1e-9)


@pytest.mark.parametrize(("eps", "delta"), [(0.1, 1e-6), (1.0, 1e-5), (5.0, 1e-3)])
def test_analytic_gaussian_agrees_with_the_privacy_loss_distribution(
    eps: float, delta: float
) -> None:
    """dp-accounting's PLD of one Gaussian mechanism at our σ gives δ(ε) ≈ the target."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    std = gaussian_std(1.0, eps, delta)
    dist = pld.from_gaussian_mechanism(std, value_discretization_interval=1e-4)
    # PLD discretisation is pessimistic: its δ is at most slightly above ours.
    got = dist.get_delta_for_epsilon(eps)
    assert delta * 0.98 <= got <= delta * 1.05


def test_gaussian_std_refuses_bad_budgets() -> None:
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(ConfigurationError, match="delta"):
            gaussian_std(1.0, 1.0, bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="epsilon"):
        gaussian_std(1.0, float("nan"), 1e-5)
    assert gaussian_std(0.0, 1.0, 1e-5) == 0.0


@pytest.mark.parametrize("scale", [1.0, 0.02, 40.0])
def test_secure_laplace_has_the_laplace_law(scale: float) -> None:
    sample = SecureNoise().laplace(scale, (N,))
    assert sample.shape == (N,)
    assert abs(sample.mean()) < 5 * scale * math.sqrt(2 / N)
    assert sample.var() == pytest.approx(2 * scale**2, rel=0.05)
    assert stats.kstest(sample / scale, "laplace").pvalue > 1e-5


def test_secure_gaussian_has_the_normal_law() -> None:
    sample = SecureNoise().gaussian(3.0, (400, 250))
    assert sample.shape == (400, 250)
    assert stats.kstest(sample.ravel() / 3.0, "norm").pvalue > 1e-5


def test_secure_noise_is_fresh_and_seeded_noise_repeats() -> None:
    noise = SecureNoise()
    assert noise.secure
    assert not np.array_equal(noise.laplace(1.0, (64,)), noise.laplace(1.0, (64,)))
    assert not np.array_equal(noise.gaussian(1.0, (64,)), noise.gaussian(1.0, (64,)))
    assert not SeededNoise(1).secure
    np.testing.assert_array_equal(
        SeededNoise(5).laplace(2.0, (9,)), SeededNoise(5).laplace(2.0, (9,))
    )
    assert not np.array_equal(SeededNoise(5).laplace(2.0, (9,)), SeededNoise(6).laplace(2.0, (9,)))
    seeded = SeededNoise(3).laplace(1.0, (N,))
    assert stats.kstest(seeded, "laplace").pvalue > 1e-5


def test_noise_refuses_bad_scales_and_shapes() -> None:
    for noise in (SecureNoise(), SeededNoise(0)):
        with pytest.raises(ConfigurationError, match="scale"):
            noise.laplace(-1.0, (2,))
        with pytest.raises(ConfigurationError, match="std"):
            noise.gaussian(float("inf"), (2,))
        with pytest.raises(ConfigurationError, match="shape"):
            noise.laplace(1.0, (-1,))
    assert SecureNoise().laplace(0.0, (3,)).tolist() == [0.0, 0.0, 0.0]
    assert LaplaceNoise(1.0).secure
    assert not LaplaceNoise.seeded(1.0, 2).secure
