"""The server step of the FedAvg family, for wrappers that compute their own mean update.

DPFedAvg (a noised mean of clipped updates) and Robust (a robust aggregate of the updates)
both replace how the sites' updates are combined but keep the inner strategy's server step:
``x + Δ`` for FedAvg and FedProx, the optimiser step for FedAvgM and FedOpt. This module is
that shared step, and the check of which inner strategies it can drive.
"""

from __future__ import annotations

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.strategies._base import Strategy, StrategyState
from biofed.strategies._fedavg import FedAvg
from biofed.strategies._fedopt import _ServerOptStrategy


def check_mean_family(inner: object, wrapper: str, *, verb: str) -> Strategy:
    """``inner`` if a wrapper can drive its server step; else a ConfigurationError.

    Accepted: FedAvg, FedProx, FedAvgM and the FedOpt variants (strategies whose
    aggregation is the mean of the sites' models, followed by a server step). Refused:
    SCAFFOLD, DPFedAvg, Robust and anything else that aggregates in its own way.
    """
    if not isinstance(inner, Strategy):
        raise ConfigurationError(f"inner must be a Strategy, got {type(inner).__name__}")
    plain_mean = type(inner).begin_train_aggregation is FedAvg.begin_train_aggregation
    if not (plain_mean or isinstance(inner, _ServerOptStrategy)):
        raise ConfigurationError(
            f"{wrapper} wraps FedAvg, FedProx, FedAvgM or FedOpt strategies; "
            f"{type(inner).__name__} aggregates in its own way and cannot be {verb} here"
        )
    return inner


def apply_server_step(
    inner: Strategy, x: ParameterSet, delta: dict[str, Array], state: StrategyState
) -> tuple[ParameterSet, StrategyState]:
    """The model after the inner strategy's server step with mean update ``delta``.

    ``x + Δ`` (in ``x``'s dtypes) for FedAvg and FedProx; ``server_step`` for FedAvgM and
    FedOpt, whose moments are in ``state``. ``delta`` may be overwritten.
    """
    if isinstance(inner, _ServerOptStrategy):
        return inner.server_step(x, delta, state)
    new = {k: (x[k] + delta[k]).astype(x[k].dtype, copy=False) for k in x}
    return ParameterSet(new), state
