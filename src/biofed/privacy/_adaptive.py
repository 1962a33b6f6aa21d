"""Adaptive clipping (Andrew et al. 2021): track a quantile of update norms privately."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.core import ConfigurationError, PayloadError
from biofed.core.checks import check_float, check_int
from biofed.privacy._checks import check_non_negative, check_quantile
from biofed.privacy._noise import GaussianNoise

_FIELDS = ("initial_norm", "target_quantile", "learning_rate", "count_noise_std")


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveClipping:
    """The state of adaptive clipping: the clip norm C and the rule that moves it.

    Each round every contributor reports whether its update norm was ≤ C (the bit
    ``norm <= state.clip_norm``); the server sums the bits, adds N(0, ``count_noise_std``²)
    (:meth:`noisy_count`), and moves to :meth:`update`'s geometric step
    ``C ← C · exp(−η (b̄ − γ))`` with b̄ the noisy fraction of unclipped updates. C then
    tracks the γ-quantile of the update norms. Pure: no I/O, no clock; a new state per round.

    Parameters
    ----------
    initial_norm:
        C before the first round (> 0).
    target_quantile:
        γ ∈ [0, 1], the fraction of updates that should end up unclipped (0.5 in the paper).
    learning_rate:
        η ≥ 0 of the geometric update (0.2 in the paper).
    count_noise_std:
        σ_b ≥ 0, the std of the Gaussian noise on the count of unclipped updates (the paper
        suggests about the expected number of contributors / 20).
    clip_norm:
        The current C; ``None`` means ``initial_norm`` (a fresh state).
    rounds:
        How many updates this state has seen.

    Privacy notes
    -------------
    The count of unclipped updates is itself a query on the contributors and must be noised
    and accounted (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning
    with Adaptive Clipping", Theorem 1). The bits and the clipped updates are released
    together; :meth:`update_noise_multiplier` returns the smaller noise multiplier the updates
    may use so that both together are covered by the noise multiplier the accountant is told.
    """

    initial_norm: float
    target_quantile: float
    learning_rate: float
    count_noise_std: float
    clip_norm: float | None = None
    rounds: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "initial_norm", check_float(self.initial_norm, "initial_norm", above=0)
        )
        object.__setattr__(
            self, "target_quantile", check_quantile(self.target_quantile, "target_quantile")
        )
        object.__setattr__(
            self, "learning_rate", check_non_negative(self.learning_rate, "learning_rate")
        )
        object.__setattr__(
            self, "count_noise_std", check_non_negative(self.count_noise_std, "count_noise_std")
        )
        current = self.initial_norm if self.clip_norm is None else self.clip_norm
        object.__setattr__(self, "clip_norm", check_float(current, "clip_norm", above=0))
        object.__setattr__(self, "rounds", check_int(self.rounds, "rounds", minimum=0))

    @property
    def norm(self) -> float:
        """The clip norm C to use this round."""
        assert self.clip_norm is not None  # set by __post_init__
        return self.clip_norm

    def unclipped(self, update_norm: float) -> bool:
        """A contributor's bit: True when its update norm is ≤ C (it is not clipped)."""
        return bool(update_norm <= self.norm)

    def noisy_count(self, unclipped: int, *, rng: np.random.Generator | None = None) -> float:
        """The number of unclipped updates plus N(0, σ_b²) noise (CSPRNG unless ``rng``)."""
        count = check_non_negative(unclipped, "unclipped")
        noise = GaussianNoise(self.count_noise_std, rng=rng)
        return count + float(noise.sample(1)[0])

    def update(self, *, noisy_count: float, expected_count: float) -> AdaptiveClipping:
        """The state for the next round, given this round's noisy count of unclipped updates.

        Parameters
        ----------
        noisy_count:
            Σ bits + N(0, σ_b²), as :meth:`noisy_count` returns (may be negative or above
            ``expected_count`` because of the noise; it is used as is, as in the paper).
        expected_count:
            The number of contributors the fraction is taken over (> 0): the planned number
            per round, so that the denominator itself reveals nothing.
        """
        if isinstance(noisy_count, bool) or not math.isfinite(float(noisy_count)):
            raise ConfigurationError(f"noisy_count must be a finite number, got {noisy_count!r}")
        total = check_float(expected_count, "expected_count", above=0)
        fraction = float(noisy_count) / total
        step = -self.learning_rate * (fraction - self.target_quantile)
        return dataclasses.replace(
            self, clip_norm=self.norm * math.exp(step), rounds=self.rounds + 1
        )

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """The noise multiplier z_Δ for the updates so the round's total is ``noise_multiplier``.

        With the bits' sum having sensitivity 1 (add/remove one contributor), releasing it
        with std σ_b next to updates noised with z_Δ is a Gaussian mechanism with
        z = (z_Δ⁻² + σ_b⁻²)^(−1/2); hence z_Δ = (z⁻² − σ_b⁻²)^(−1/2). The paper's (2σ_b)
        assumes centred bits (b − ½, sensitivity ½) and a public count; biofed takes the
        conservative sensitivity 1.

        Raises
        ------
        ConfigurationError
            If σ_b ≤ z: the count noise alone would use up the whole budget.
        """
        z = check_float(noise_multiplier, "noise_multiplier", above=0)
        if self.count_noise_std <= z:
            raise ConfigurationError(
                f"count_noise_std ({self.count_noise_std}) must exceed the noise multiplier "
                f"({z}) for adaptive clipping to leave noise for the updates; raise it"
            )
        return 1.0 / math.sqrt(z**-2 - self.count_noise_std**-2)

    def to_dict(self) -> dict[str, float | int]:
        """The state as JSON-ready numbers."""
        return {
            "initial_norm": self.initial_norm,
            "target_quantile": self.target_quantile,
            "learning_rate": self.learning_rate,
            "count_noise_std": self.count_noise_std,
            "clip_norm": self.norm,
            "rounds": self.rounds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptiveClipping:
        """The state :meth:`to_dict` wrote; PayloadError on anything else."""
        expected = {*_FIELDS, "clip_norm", "rounds"}
        if not isinstance(data, Mapping) or set(data) != expected:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise PayloadError(f"adaptive clipping state needs keys {sorted(expected)}, got {got}")
        try:
            return cls(**{key: data[key] for key in expected})
        except ConfigurationError as exc:
            raise PayloadError(f"invalid adaptive clipping state: {exc}") from exc
