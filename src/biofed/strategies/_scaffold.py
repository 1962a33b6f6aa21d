"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, Algorithm 1 with option II for the client control update).

Server state: the control variate ``c``. Each round the selected sites get ``x`` and ``c``;
site *i* corrects every local gradient by ``c − cᵢ``, then returns its model ``yᵢ`` and
``Δcᵢ = cᵢ⁺ − cᵢ`` (the client side is the task adapter's). The server sets
``x ← x + η_g · (ȳ − x)`` (ȳ the mean of the yᵢ, example-weighted by default like FLamby)
and ``c ← c + (|S| / N) · mean(Δcᵢ)``, where N is the number of sites.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from biofed.core import (
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    ConfigurationError,
    NodeInfo,
    ParameterMismatch,
    ParameterSet,
    Reply,
    RoundFailed,
)
from biofed.core.checks import check_float
from biofed.strategies._base import (
    AggregateResult,
    NodePlan,
    StrategyState,
    TrainAggregator,
)
from biofed.strategies._fedavg import FedAvg
from biofed.strategies._weighted import WeightedReplyMean, WeightedSum


class _ScaffoldAggregator(TrainAggregator):
    def __init__(
        self,
        strategy: Scaffold,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> None:
        self._strategy = strategy
        self._parameters = parameters
        self._control = state[SCAFFOLD_SERVER_CONTROL]
        self._num_nodes = max(num_nodes, 1)
        self._models = WeightedReplyMean(
            parameters, weighted=strategy.weighted, max_weight=strategy.max_weight
        )
        self._deltas = WeightedSum(self._control)

    def add(self, reply: Reply) -> None:
        delta_c = reply.extras.get(SCAFFOLD_CONTROL_DELTA)
        if delta_c is None:
            raise ParameterMismatch(
                f"SCAFFOLD reply from {reply.node_id} lacks {SCAFFOLD_CONTROL_DELTA!r}"
            )
        self._control.spec.validate(delta_c, what=f"control delta from {reply.node_id}")
        self._models.add(reply)
        self._deltas.add(delta_c, 1.0)

    @property
    def count(self) -> int:
        return self._models.count

    def finish(self) -> AggregateResult:
        if self.count == 0:
            raise RoundFailed("no training reply to aggregate")
        lr = self._strategy.server_learning_rate
        mean_y = self._models.mean()
        x = {
            k: (self._parameters[k] + lr * (mean_y[k] - self._parameters[k])).astype(
                self._parameters[k].dtype, copy=False
            )
            for k in mean_y
        }
        share = self.count / self._num_nodes
        mean_dc = self._deltas.mean()
        c = {
            k: (self._control[k] + share * mean_dc[k]).astype(self._control[k].dtype, copy=False)
            for k in mean_dc
        }
        return AggregateResult(
            parameters=ParameterSet(x),
            state={SCAFFOLD_SERVER_CONTROL: ParameterSet(c)},
            metrics=self._models.metrics(),
            num_replies=self.count,
        )


class Scaffold(FedAvg):
    """SCAFFOLD with server and client control variates.

    Parameters
    ----------
    server_learning_rate:
        η_g > 0 (1.0 in the paper's experiments and FLamby's).
    **kwargs:
        See :class:`~biofed.strategies.FedAvg`. Sites must train with plain SGD.
    """

    name = "scaffold"

    #: Control variates need each site's delta on its own: no secure aggregation.
    supports_secure_aggregation = False

    def __init__(self, *, server_learning_rate: float = 1.0, **kwargs: Any) -> None:
        check_float(server_learning_rate, "server_learning_rate", above=0)
        super().__init__(**kwargs)
        if self.train_config.get("optimizer", "sgd") != "sgd":
            raise ConfigurationError("SCAFFOLD needs sites to train with optimizer 'sgd'")
        self.server_learning_rate = float(server_learning_rate)

    def init_state(self, parameters: ParameterSet) -> StrategyState:
        zeros = ParameterSet({k: np.zeros(v.shape, dtype=v.dtype) for k, v in parameters.items()})
        return {SCAFFOLD_SERVER_CONTROL: zeros}

    def configure_train(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        plans = super().configure_train(server_round, parameters, state, nodes, rng)
        extras = {SCAFFOLD_SERVER_CONTROL: state[SCAFFOLD_SERVER_CONTROL]}
        return [NodePlan(node_id=p.node_id, config=p.config, extras=extras) for p in plans]

    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        return _ScaffoldAggregator(self, parameters, state, num_nodes)
