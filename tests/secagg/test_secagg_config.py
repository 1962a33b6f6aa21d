"""SecAggConfig and SecAggPlan: ring choice, wrap-around refused, threshold rules."""

from __future__ import annotations

import dataclasses

import pytest

from biofed.core import ConfigurationError, PayloadError
from biofed.secagg import SecAggConfig, SecAggPlan


def _config(**overrides: object) -> SecAggConfig:
    fields: dict[str, object] = {
        "dimension": 10,
        "clip_range": 1.0,
        "quantisation_step": 1e-3,
        "max_weight": 1,
    }
    fields.update(overrides)
    return SecAggConfig(**fields)  # type: ignore[arg-type]


def test_smallest_ring_that_cannot_wrap_is_chosen() -> None:
    config = _config(quantisation_step=2 / 1000, max_weight=1000)  # L = 1000
    assert config.levels == 1000
    assert config.plan(4000).ring_bits == 32  # 4000 × 1000 × 1000 = 4e9 < 2^32
    assert config.plan(5000).ring_bits == 64  # 5e9 ≥ 2^32
    assert config.plan(5000).dtype.name == "uint64"


def test_a_sum_that_could_wrap_is_refused_before_the_round() -> None:
    config = _config(quantisation_step=2 / 2**40, max_weight=2**20)  # L = 2^40
    config.plan(2**3)  # 2^3 × 2^20 × 2^40 = 2^63 fits 64 bits
    with pytest.raises(ConfigurationError, match="wrap around the 64-bit ring"):
        config.plan(2**4)  # 2^64 does not
    with pytest.raises(ConfigurationError, match="ring_bits=64"):
        _config(quantisation_step=1e-6, max_weight=10_000, ring_bits=32).plan(10)


def test_wrap_check_is_exact_at_the_boundary() -> None:
    # n · W · L = 2^32 - 1 fits; one more level does not.
    levels = (2**32 - 1) // 3
    config = _config(quantisation_step=2 / levels, ring_bits=32)
    assert config.levels == levels
    assert config.plan(3).ring_bits == 32
    with pytest.raises(ConfigurationError):
        _config(quantisation_step=2 / (levels + 1), ring_bits=32).plan(3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dimension": 0}, "dimension"),
        ({"clip_range": -1.0}, "clip_range"),
        ({"clip_range": float("nan")}, "clip_range"),
        ({"quantisation_step": 0.0}, "quantisation_step"),
        ({"max_weight": 0}, "max_weight"),
        ({"max_weight": 2.5}, "max_weight"),
        ({"num_neighbours": 3}, "even"),
        ({"num_neighbours": 0}, "num_neighbours"),
        ({"threshold": 1}, "threshold"),
        ({"ring_bits": 16}, "ring_bits"),
    ],
)
def test_bad_config_values_are_refused(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _config(**overrides)


def test_threshold_defaults_to_a_strict_majority_of_holders() -> None:
    assert _config().plan(10).threshold == 6  # full graph: 10 holders
    plan = _config(num_neighbours=4).plan(100)
    assert (plan.num_neighbours, plan.threshold) == (4, 3)  # 5 holders
    assert _config(num_neighbours=8).plan(5).num_neighbours == 4  # k capped at n - 1


def test_threshold_must_fit_the_holders_and_be_a_majority() -> None:
    with pytest.raises(ConfigurationError, match="exceeds"):
        _config(num_neighbours=4, threshold=6).plan(20)
    with pytest.raises(ConfigurationError, match="strict majority"):
        _config(num_neighbours=4, threshold=2).plan(20)
    with pytest.raises(ConfigurationError, match="num_sites"):
        _config().plan(1)


def test_plan_fields_are_derived_and_checked() -> None:
    plan = _config(num_neighbours=4).plan(20)
    with pytest.raises(ConfigurationError, match="does not match"):
        dataclasses.replace(plan, ring_bits=64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.num_sites = 3  # type: ignore[misc]


def test_plan_bytes_round_trip_and_fingerprint() -> None:
    plan = _config(num_neighbours=4, threshold=4, max_weight=7).plan(20)
    again = SecAggPlan.from_bytes(plan.to_bytes())
    assert again == plan
    assert again.fingerprint == plan.fingerprint
    assert _config().plan(20).fingerprint != plan.fingerprint
    with pytest.raises(PayloadError, match="trailing"):
        SecAggPlan.from_bytes(plan.to_bytes() + b"\0")
    with pytest.raises(PayloadError, match="truncated"):
        SecAggPlan.from_bytes(plan.to_bytes()[:-1])


def test_error_bound_is_half_a_step_plus_float32_rounding() -> None:
    plan = _config(quantisation_step=1e-3).plan(3)
    assert 5e-4 < plan.error_bound < 5e-4 + 1e-6
