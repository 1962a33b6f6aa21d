"""Checks of the quantities differential privacy is stated in, written in its notation
(``0 < q ≤ 1``, ``0 < δ < 1``, ``z ≥ 0``), on top of :mod:`biofed.core.checks` (value first,
then the name; type and finiteness are checked there)."""

from __future__ import annotations

from numbers import Integral

from biofed.core import ConfigurationError
from biofed.core.checks import check_float

__all__ = [
    "check_delta",
    "check_float",
    "check_non_negative",
    "check_quantile",
    "check_real",
    "check_sampling_rate",
    "check_steps",
]


def check_real(name: str, value: object) -> float:
    """``value`` as a finite float (kept for callers of ``biofed.privacy.check_real``; new code
    calls :func:`biofed.core.checks.check_float` with the value first)."""
    return check_float(value, name)


def check_non_negative(value: object, name: str) -> float:
    """A finite float ≥ 0 (a noise multiplier, a standard deviation, a count)."""
    number = check_float(value, name)
    if number < 0:
        raise ConfigurationError(f"{name} must be ≥ 0, got {number}")
    return number


def check_sampling_rate(value: object, name: str = "sampling_rate") -> float:
    """A sampling rate q with 0 < q ≤ 1."""
    number = check_float(value, name)
    if not 0 < number <= 1:
        raise ConfigurationError(f"{name} must satisfy 0 < q ≤ 1, got {number}")
    return number


def check_delta(value: object) -> float:
    """A δ with 0 < δ < 1."""
    number = check_float(value, "delta")
    if not 0 < number < 1:
        raise ConfigurationError(f"delta must satisfy 0 < δ < 1, got {number}")
    return number


def check_steps(value: object, name: str = "steps") -> int:
    """A whole number of steps ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigurationError(f"{name} must be a whole number ≥ 1, got {value!r}")
    steps = int(value)
    if steps < 1:
        raise ConfigurationError(f"{name} must be ≥ 1, got {steps}")
    return steps


def check_quantile(value: object, name: str) -> float:
    """A quantile in [0, 1]."""
    number = check_float(value, name)
    if not 0 <= number <= 1:
        raise ConfigurationError(f"{name} must lie in [0, 1], got {number}")
    return number
