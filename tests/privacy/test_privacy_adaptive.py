"""Adaptive clipping (Andrew et al. 2021) as a pure state machine."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biofed.core import ConfigurationError, PayloadError
from biofed.privacy import AdaptiveClipping


def _state(**overrides: float) -> AdaptiveClipping:
    values = {
        "initial_norm": 1.0,
        "target_quantile": 0.5,
        "learning_rate": 0.2,
        "count_noise_std": 0.0,
    }
    values.update(overrides)
    return AdaptiveClipping(**values)  # type: ignore[arg-type]


def test_geometric_update() -> None:
    state = _state()
    assert state.norm == 1.0
    # All 10 unclipped: b̄ = 1 > γ → C shrinks by exp(-0.2 · 0.5).
    after = state.update(noisy_count=10, expected_count=10)
    assert after.norm == pytest.approx(math.exp(-0.1))
    assert after.rounds == 1
    assert state.norm == 1.0  # frozen: the old state is untouched
    # None unclipped: C grows.
    assert state.update(noisy_count=0, expected_count=10).norm == pytest.approx(math.exp(0.1))
    # Exactly at the target quantile: C stays.
    assert state.update(noisy_count=5, expected_count=10).norm == pytest.approx(1.0)


def test_tracks_the_target_quantile() -> None:
    rng = np.random.default_rng(0)
    norms = rng.lognormal(mean=1.0, sigma=0.5, size=(400, 50))
    state = _state(initial_norm=0.1, target_quantile=0.8, count_noise_std=2.5)
    for round_norms in norms:
        unclipped = sum(state.unclipped(n) for n in round_norms)
        state = state.update(noisy_count=state.noisy_count(unclipped, rng=rng), expected_count=50)
    assert state.norm == pytest.approx(np.quantile(norms, 0.8), rel=0.15)


def test_noisy_count_is_secure_by_default() -> None:
    state = _state(count_noise_std=1.0)
    assert state.noisy_count(3) != state.noisy_count(3)
    assert _state().noisy_count(3) == 3.0


def test_dict_round_trip() -> None:
    state = _state(count_noise_std=0.5).update(noisy_count=2.5, expected_count=10)
    data = state.to_dict()
    assert AdaptiveClipping.from_dict(data) == state
    assert data["rounds"] == 1


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"initial_norm": 1.0},
        {**_state().to_dict(), "extra": 1},
        {**_state().to_dict(), "clip_norm": -1.0},
        {**_state().to_dict(), "rounds": 1.5},
    ],
)
def test_bad_dicts_are_refused(data: dict[str, float]) -> None:
    with pytest.raises(PayloadError):
        AdaptiveClipping.from_dict(data)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("initial_norm", 0.0, "initial_norm must be > 0"),
        ("target_quantile", 1.5, r"target_quantile must lie in \[0, 1\]"),
        ("learning_rate", -0.1, "learning_rate must be ≥ 0"),
        ("count_noise_std", math.nan, "count_noise_std must be finite"),
    ],
)
def test_parameters_are_validated(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _state(**{field: value})


def test_update_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="expected_count must be > 0"):
        _state().update(noisy_count=1, expected_count=0)
    with pytest.raises(ConfigurationError, match="noisy_count must be a finite number"):
        _state().update(noisy_count=math.inf, expected_count=3)


def test_update_noise_multiplier() -> None:
    state = _state(count_noise_std=5.0)
    z_update = state.update_noise_multiplier(1.0)
    assert z_update > 1.0
    # Composing both Gaussians gives back the total noise multiplier.
    assert (z_update**-2 + 5.0**-2) ** -0.5 == pytest.approx(1.0)
    with pytest.raises(ConfigurationError, match="must exceed the noise multiplier"):
        _state(count_noise_std=0.5).update_noise_multiplier(1.0)
