"""Parameter checks shared by the privacy modules: one place for each actionable message."""

from __future__ import annotations

import math
from numbers import Integral, Real

from biofed.core import ConfigurationError


def check_real(name: str, value: object) -> float:
    """``value`` as a float, or ConfigurationError unless it is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigurationError(f"{name} must be finite, got {number}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """``value`` as a float, or ConfigurationError unless it is finite and ≥ 0."""
    number = check_real(name, value)
    if number < 0:
        raise ConfigurationError(f"{name} must be ≥ 0, got {number}")
    return number


def check_positive(name: str, value: object) -> float:
    """``value`` as a float, or ConfigurationError unless it is finite and > 0."""
    number = check_real(name, value)
    if number <= 0:
        raise ConfigurationError(f"{name} must be > 0, got {number}")
    return number


def check_sampling_rate(value: object, name: str = "sampling_rate") -> float:
    """A sampling rate q with 0 < q ≤ 1."""
    number = check_real(name, value)
    if not 0 < number <= 1:
        raise ConfigurationError(f"{name} must satisfy 0 < q ≤ 1, got {number}")
    return number


def check_delta(value: object) -> float:
    """A δ with 0 < δ < 1."""
    number = check_real("delta", value)
    if not 0 < number < 1:
        raise ConfigurationError(f"delta must satisfy 0 < δ < 1, got {number}")
    return number


def check_steps(value: object, name: str = "steps") -> int:
    """A whole number of steps ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigurationError(f"{name} must be a whole number ≥ 1, got {value!r}")
    if value < 1:
        raise ConfigurationError(f"{name} must be ≥ 1, got {value}")
    return int(value)


def check_fraction(name: str, value: object) -> float:
    """A number in [0, 1]."""
    number = check_real(name, value)
    if not 0 <= number <= 1:
        raise ConfigurationError(f"{name} must lie in [0, 1], got {number}")
    return number
