"""Noise calibration never overshoots the target ε, and is close to tight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.core import ConfigurationError
from biofed.privacy import calibrate_noise, make_accountant


def _epsilon(accountant: str, z: float, q: float, steps: int, delta: float) -> float:
    acc = make_accountant(accountant)
    acc.step(z, q, steps)
    return acc.epsilon(delta)


@settings(max_examples=10, deadline=None)
@given(
    target=st.floats(0.1, 20.0),
    delta=st.sampled_from([1e-3, 1e-5, 1e-7]),
    q=st.floats(1e-3, 1.0),
    steps=st.integers(1, 2000),
)
def test_rdp_calibration_never_exceeds_target(
    target: float, delta: float, q: float, steps: int
) -> None:
    z = calibrate_noise(target, delta, q, steps, "rdp")
    epsilon = _epsilon("rdp", z, q, steps, delta)
    assert epsilon <= target
    if z > 1e-3:  # tight: a little less noise would overshoot
        assert _epsilon("rdp", z / 1.01, q, steps, delta) > target


@settings(max_examples=4, deadline=None)
@given(target=st.floats(0.5, 4.0), steps=st.integers(1, 8))
def test_pld_calibration_never_exceeds_target(target: float, steps: int) -> None:
    z = calibrate_noise(target, 1e-5, 1.0, steps)  # q = 1 keeps PLD fast
    assert _epsilon("pld", z, 1.0, steps, 1e-5) <= target
    assert _epsilon("pld", z / 1.01, 1.0, steps, 1e-5) > target


def test_pld_calibration_recovers_a_reference_row() -> None:
    table = json.loads(Path(__file__).with_name("dp_reference_table.json").read_text())
    row = next(r for r in table["rows"] if (r["q"], r["z"], r["T"]) == (0.01, 2.0, 100))
    z = calibrate_noise(row["dpa_pld"], row["delta"], row["q"], row["T"])
    assert z == pytest.approx(2.0, rel=2e-3)
    assert _epsilon("pld", z, row["q"], row["T"], row["delta"]) <= row["dpa_pld"]


def test_pld_needs_less_noise_than_rdp() -> None:
    rdp = calibrate_noise(2.0, 1e-5, 1.0, 10, "rdp")
    pld = calibrate_noise(2.0, 1e-5, 1.0, 10, "pld")
    assert pld < rdp


def test_unreachable_target_is_reported() -> None:
    with pytest.raises(ConfigurationError, match="no noise multiplier up to 10000 reaches"):
        calibrate_noise(1e-6, 1e-10, 1.0, 1, "rdp")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.0, 1e-5, 0.1, 10), "target_epsilon must be > 0"),
        ((1.0, 1.0, 0.1, 10), "delta must satisfy 0 < δ < 1"),
        ((1.0, 1e-5, 2.0, 10), "sampling_rate must satisfy 0 < q ≤ 1"),
        ((1.0, 1e-5, 0.1, 0), "steps must be ≥ 1"),
    ],
)
def test_arguments_are_validated(args: tuple[float, float, float, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        calibrate_noise(*args)
    with pytest.raises(ConfigurationError, match="accountant must be pld or rdp"):
        calibrate_noise(1.0, 1e-5, 0.1, 10, "prv")
