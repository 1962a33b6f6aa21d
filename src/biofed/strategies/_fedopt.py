"""Server-side optimisers: FedAvgM (Hsu et al. 2019) and FedOpt — FedAdagrad, FedAdam,
FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2).

Each treats ``Δ = mean(site models) − x`` as a pseudo-gradient and applies a server optimiser
step to ``x``. The optimiser's moments are explicit strategy state, so they are checkpointed
with the model and a resumed run continues exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from biofed.core import Array, ParameterSet, Reply, RoundFailed
from biofed.core.checks import check_float
from biofed.strategies._base import AggregateResult, StrategyState, TrainAggregator
from biofed.strategies._fedavg import FedAvg
from biofed.strategies._weighted import WeightedReplyMean

_M = "server_momentum"  # first moment / momentum buffer
_V = "server_second_moment"


def _zeros_like(parameters: ParameterSet) -> ParameterSet:
    return ParameterSet({k: np.zeros(v.shape, dtype=v.dtype) for k, v in parameters.items()})


class _ServerOptAggregator(TrainAggregator):
    def __init__(
        self, strategy: _ServerOptStrategy, parameters: ParameterSet, state: StrategyState
    ) -> None:
        self._strategy = strategy
        self._parameters = parameters
        self._state = state
        self._mean = WeightedReplyMean(
            parameters, weighted=strategy.weighted, max_weight=strategy.max_weight
        )

    def add(self, reply: Reply) -> None:
        self._mean.add(reply)

    @property
    def count(self) -> int:
        return self._mean.count

    def finish(self) -> AggregateResult:
        if self.count == 0:
            raise RoundFailed("no training reply to aggregate")
        mean = self._mean.mean()
        delta = {k: np.subtract(mean[k], self._parameters[k], out=mean[k]) for k in mean}
        new_params, new_state = self._strategy.server_step(self._parameters, delta, self._state)
        return AggregateResult(
            parameters=new_params,
            state=new_state,
            metrics=self._mean.metrics(),
            num_replies=self.count,
        )


class _ServerOptStrategy(FedAvg):
    """FedAvg whose aggregate is applied through a server optimiser step."""

    def __init__(self, *, server_learning_rate: float, **kwargs: Any) -> None:
        lr = check_float(server_learning_rate, "server_learning_rate", above=0)
        super().__init__(**kwargs)
        self.server_learning_rate = lr

    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        return _ServerOptAggregator(self, parameters, state)

    def server_step(
        self, x: ParameterSet, delta: dict[str, Array], state: StrategyState
    ) -> tuple[ParameterSet, StrategyState]:
        """Apply one optimiser step with pseudo-gradient ``delta`` (may be overwritten)."""
        raise NotImplementedError


class FedAvgM(_ServerOptStrategy):
    """FedAvg with server momentum: ``m ← β·m + Δ``, ``x ← x + η·m``.

    Parameters
    ----------
    server_learning_rate:
        η (1.0 with β = 0 is plain FedAvg).
    server_momentum:
        β in [0, 1).
    """

    name = "fedavgm"

    def __init__(
        self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.9, **kwargs: Any
    ) -> None:
        momentum = check_float(server_momentum, "server_momentum", minimum=0, below=1)
        super().__init__(server_learning_rate=server_learning_rate, **kwargs)
        self.server_momentum = momentum

    def init_state(self, parameters: ParameterSet) -> StrategyState:
        return {_M: _zeros_like(parameters)}

    def server_step(
        self, x: ParameterSet, delta: dict[str, Array], state: StrategyState
    ) -> tuple[ParameterSet, StrategyState]:
        m_old = state[_M]
        m = {k: self.server_momentum * m_old[k] + delta[k] for k in delta}
        new_x = {k: x[k] + self.server_learning_rate * m[k] for k in delta}
        return ParameterSet(new_x), {_M: ParameterSet(m)}


class FedOpt(_ServerOptStrategy):
    """Adaptive server optimisation (Reddi et al. 2021, Algorithm 2).

    ``m ← β₁·m + (1 − β₁)·Δ``; ``v`` updated by the variant's rule;
    ``x ← x + η · m / (√v + τ)``. Moments start at zero.

    Parameters
    ----------
    server_learning_rate:
        η > 0.
    beta_1, beta_2:
        Moment decay rates in [0, 1).
    tau:
        τ > 0, the adaptivity floor.

    Notes
    -----
    Defaults are Reddi et al.'s (§5 and App. D: β₁ = 0.9, β₂ = 0.99, τ = 10⁻³; η = 0.1, the
    value Flower also ships). β₂ was 0.999, Adam's centralised default: without bias
    correction, ``√v`` then starts at ``√(1 − β₂)·|Δ|`` ≈ 0.03·|Δ|, so the first rounds move
    every coordinate by 3–6·η whatever its pseudo-gradient's size — a sign step that made
    FedAdam swing by 0.13 ROC-AUC between rounds on a real two-study table
    (``benchmarks/defaults_real_tables.py``). τ was 10⁻⁸, far below any pseudo-gradient, so
    the update never left that sign-step regime.
    """

    name = "fedopt"

    def __init__(
        self,
        *,
        server_learning_rate: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        check_float(beta_1, "beta_1", minimum=0, below=1)
        check_float(beta_2, "beta_2", minimum=0, below=1)
        check_float(tau, "tau", above=0)
        super().__init__(server_learning_rate=server_learning_rate, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)

    def init_state(self, parameters: ParameterSet) -> StrategyState:
        zeros = _zeros_like(parameters)
        return {_M: zeros, _V: zeros}

    def second_moment(self, v: Array, delta_sq: Array) -> Array:
        """The variant's update of ``v`` given ``Δ²``."""
        raise NotImplementedError

    def server_step(
        self, x: ParameterSet, delta: dict[str, Array], state: StrategyState
    ) -> tuple[ParameterSet, StrategyState]:
        m_old, v_old = state[_M], state[_V]
        m: dict[str, Array] = {}
        v: dict[str, Array] = {}
        new_x: dict[str, Array] = {}
        for k, d in delta.items():
            m[k] = self.beta_1 * m_old[k] + (1.0 - self.beta_1) * d
            v[k] = self.second_moment(v_old[k], np.square(d)).astype(d.dtype, copy=False)
            step = self.server_learning_rate * m[k] / (np.sqrt(v[k]) + self.tau)
            new_x[k] = (x[k] + step).astype(x[k].dtype, copy=False)
        return ParameterSet(new_x), {_M: ParameterSet(m), _V: ParameterSet(v)}


class FedAdagrad(FedOpt):
    """FedAdagrad: ``v ← v + Δ²``."""

    name = "fedadagrad"

    def second_moment(self, v: Array, delta_sq: Array) -> Array:
        return v + delta_sq


class FedAdam(FedOpt):
    """FedAdam: ``v ← β₂·v + (1 − β₂)·Δ²``."""

    name = "fedadam"

    def second_moment(self, v: Array, delta_sq: Array) -> Array:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq


class FedYogi(FedOpt):
    """FedYogi: ``v ← v − (1 − β₂)·Δ²·sign(v − Δ²)``."""

    name = "fedyogi"

    def second_moment(self, v: Array, delta_sq: Array) -> Array:
        out: Array = v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
        return out
