"""One call for a method named in a job or an agreement."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from biofed.contribution._exact import leave_one_out, shapley
from biofed.contribution._game import (
    DEFAULT_DUPLICATE_COSINE,
    DEFAULT_FREE_RIDER_NORM,
    DEFAULT_MAX_EVALUATIONS,
    RoundGame,
    Updates,
    ValueFunction,
)
from biofed.contribution._result import METHODS, Contributions
from biofed.contribution._sampling import gtg_shapley, tmc_shapley
from biofed.core import ConfigurationError, ParameterSet


def measure(
    method: str,
    x: ParameterSet,
    updates: Updates,
    value: ValueFunction,
    *,
    rng: np.random.Generator | None = None,
    duplicate_cosine: float | None = DEFAULT_DUPLICATE_COSINE,
    free_rider_norm: float | None = DEFAULT_FREE_RIDER_NORM,
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    server_round: int = 0,
    clock: Callable[[], float] = time.perf_counter,
    **options: Any,
) -> Contributions:
    """Measure one round's contributions with ``method`` (one of :data:`METHODS`).

    Builds a fresh :class:`RoundGame` (so the evaluation count is the method's own) and
    passes ``options`` to the method (``truncation``, ``tolerance``, ``round_tolerance`` …).
    The samplers need ``rng``; without one they draw from a fresh unseeded generator.
    """
    if method not in METHODS:
        raise ConfigurationError(
            f"contribution: unknown method {method!r}; choose one of {list(METHODS)}"
        )
    game = RoundGame(
        x,
        updates,
        value,
        duplicate_cosine=duplicate_cosine,
        free_rider_norm=free_rider_norm,
        max_evaluations=max_evaluations,
        clock=clock,
    )
    if method in ("leave_one_out", "shapley"):
        if options:
            raise ConfigurationError(
                f"contribution: {method} takes no options, got {sorted(options)}"
            )
        exact = leave_one_out if method == "leave_one_out" else shapley
        return exact(game, server_round=server_round)
    sampler = tmc_shapley if method == "tmc_shapley" else gtg_shapley
    allowed = set(sampler.__kwdefaults__ or {}) - {"server_round"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(
            f"contribution: {method} has no option {unknown[0]!r}; it takes {sorted(allowed)}"
        )
    generator = rng if rng is not None else np.random.default_rng()
    return sampler(game, rng=generator, server_round=server_round, **options)
