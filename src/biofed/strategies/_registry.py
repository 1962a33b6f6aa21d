"""Strategies by name, for the CLI and job files."""

from __future__ import annotations

from typing import Any

from biofed.core import ConfigurationError
from biofed.strategies._base import Strategy
from biofed.strategies._fedavg import FedAvg, FedProx
from biofed.strategies._fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from biofed.strategies._scaffold import Scaffold

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, Scaffold)
}


def make_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build the strategy called ``name`` (``fedavg``, ``fedadam``…) with ``kwargs``.

    Raises
    ------
    ConfigurationError
        For an unknown name or an argument the strategy does not take.
    """
    try:
        cls = STRATEGIES[name.lower()]
    except KeyError:
        raise ConfigurationError(
            f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}"
        ) from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"bad arguments for strategy {name!r}: {exc}") from exc
