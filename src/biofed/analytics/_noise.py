"""DP noise for query answers: where a site draws it, and how much it draws.

:class:`SecureNoise` is what a real site uses (:class:`biofed.analytics.NoiseSource`):
Laplace and Gaussian values from a ChaCha20 keystream under a fresh OS key per call
(:class:`biofed.privacy.LaplaceNoise`, :class:`biofed.privacy.GaussianNoise`).
:class:`SeededNoise` is numpy's PCG64 under a seed, for tests and simulations only.

Calibration
-----------
:func:`laplace_scale` is the Laplace mechanism's b = Δ₁/ε (Dwork, McSherry, Nissim and
Smith 2006): ε-DP for a statistic of L1 sensitivity Δ₁.

:func:`gaussian_std` is the *analytic* Gaussian mechanism of Balle and Wang (2018),
"Improving the Gaussian Mechanism for Differential Privacy", Theorem 8: the smallest σ
with Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ) ≤ δ, found by root finding. It is exact (the
Gaussian mechanism is (ε, δ)-DP iff that holds), valid for every ε > 0, and gives less
noise than the classic bound σ = Δ√(2 ln(1.25/δ))/ε of Dwork and Roth (2014, Thm A.1),
which holds only for ε < 1 (ε = 1, δ = 1e-5: 3.73 against 4.84).

Privacy notes
-------------
Threat: noise an observer can predict (a seeded PRNG) and subtract, and floating-point
samplers that leak the noised value (Mironov 2012); see the samplers in
:mod:`biofed.privacy` for the mitigations. A site must never answer a DP query with
:class:`SeededNoise`; the node builds :class:`SecureNoise`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special

from biofed.core import Array, ConfigurationError
from biofed.privacy import GaussianNoise, LaplaceNoise


def _shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = tuple(shape)
    if any(isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0 for d in dims):
        raise ConfigurationError("a noise shape must be sizes >= 0")
    return tuple(int(d) for d in dims)


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{what} must be a finite number")
    if value < 0:
        raise ConfigurationError(f"{what} must be >= 0, got {value}")
    return float(value)


class SecureNoise:
    """A site's DP noise from a CSPRNG (the default for every real site)."""

    secure = True

    def laplace(self, scale: float, shape: tuple[int, ...]) -> Array:
        """Laplace(0, ``scale``) values of ``shape``."""
        return LaplaceNoise(_positive(scale, "laplace scale")).sample(_shape(shape))

    def gaussian(self, std: float, shape: tuple[int, ...]) -> Array:
        """N(0, ``std``²) values of ``shape``."""
        return GaussianNoise(_positive(std, "gaussian std")).sample(_shape(shape))


class SeededNoise:
    """Reproducible noise from numpy's PCG64 under ``seed``: **NOT private** (anyone who
    knows the seed removes the noise). Tests and simulations only."""

    secure = False

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def laplace(self, scale: float, shape: tuple[int, ...]) -> Array:
        """Laplace(0, ``scale``) values of ``shape``."""
        scale = _positive(scale, "laplace scale")
        return np.asarray(self._rng.laplace(0.0, 1.0, _shape(shape)) * scale, np.float64)

    def gaussian(self, std: float, shape: tuple[int, ...]) -> Array:
        """N(0, ``std``²) values of ``shape``."""
        std = _positive(std, "gaussian std")
        return np.asarray(self._rng.standard_normal(_shape(shape)) * std, np.float64)


def _check_budget(sensitivity: float, epsilon: float) -> tuple[float, float]:
    sens = _positive(sensitivity, "sensitivity")
    eps = _positive(epsilon, "epsilon")
    if eps == 0:
        raise ConfigurationError("epsilon must be > 0")
    return sens, eps


def laplace_scale(sensitivity: float, epsilon: float) -> float:
    """Laplace scale b = Δ₁/ε for ε-DP of a statistic with L1 sensitivity Δ₁."""
    sens, eps = _check_budget(sensitivity, epsilon)
    return sens / eps


def analytic_gaussian_delta(sensitivity: float, epsilon: float, std: float) -> float:
    """The δ at which N(0, std²) noise makes a Δ₂-sensitive statistic (ε, δ)-DP (Balle
    and Wang 2018, Thm 8): Φ(Δ/2σ − εσ/Δ) − e^ε Φ(−Δ/2σ − εσ/Δ)."""
    sens, eps = _check_budget(sensitivity, epsilon)
    if std <= 0 or sens == 0:
        return 1.0 if sens > 0 else 0.0
    a = sens / (2.0 * std)
    b = eps * std / sens
    first = float(special.ndtr(a - b))
    second = math.exp(eps + float(special.log_ndtr(-a - b)))
    return max(0.0, first - second)


def gaussian_std(sensitivity: float, epsilon: float, delta: float) -> float:
    """Smallest σ for (ε, δ)-DP of a statistic with L2 sensitivity Δ₂ (the analytic Gaussian
    mechanism, Balle and Wang 2018; see the module docstring for why not the classic bound).
    """
    sens, eps = _check_budget(sensitivity, epsilon)
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise ConfigurationError("delta must lie in (0, 1)")
    if sens == 0:
        return 0.0

    def excess(log_ratio: float) -> float:
        return analytic_gaussian_delta(sens, eps, sens * math.exp(log_ratio)) - delta

    lo, hi = -20.0, 0.0
    while excess(hi) > 0:
        hi += 2.0
        if hi > 60:
            raise ConfigurationError("no finite noise reaches that (epsilon, delta)")
    if excess(lo) <= 0:
        return sens * math.exp(lo)
    root = optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14)
    std = sens * math.exp(root)
    # Never undershoot: nudge up until the δ condition holds exactly.
    while analytic_gaussian_delta(sens, eps, std) > delta:
        std = math.nextafter(std, math.inf) * (1 + 1e-12)
    return std
