"""FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020)."""

from __future__ import annotations

from typing import Any

from biofed.core import ParameterSet, Reply, RoundFailed, Scalar
from biofed.core.checks import check_float
from biofed.strategies._base import (
    AggregateResult,
    Strategy,
    StrategyState,
    TrainAggregator,
)
from biofed.strategies._weighted import WeightedReplyMean


class _MeanAggregator(TrainAggregator):
    """New global model = the (example-weighted) mean of the sites' models."""

    def __init__(
        self,
        parameters: ParameterSet,
        state: StrategyState,
        *,
        weighted: bool,
        max_weight: int | None = None,
    ) -> None:
        self._mean = WeightedReplyMean(parameters, weighted=weighted, max_weight=max_weight)
        self._state = state

    def add(self, reply: Reply) -> None:
        self._mean.add(reply)

    @property
    def count(self) -> int:
        return self._mean.count

    def finish(self) -> AggregateResult:
        if self.count == 0:
            raise RoundFailed("no training reply to aggregate")
        return AggregateResult(
            parameters=ParameterSet(self._mean.mean()),
            state=self._state,
            metrics=self._mean.metrics(),
            num_replies=self.count,
        )


class FedAvg(Strategy):
    """Federated averaging: the new model is the mean of the sites' local models.

    Parameters
    ----------
    weighted:
        Weight each site by its number of training examples (default), or equally.
    **kwargs:
        See :class:`~biofed.strategies.Strategy` (fractions, minimums, configs).
    """

    name = "fedavg"

    def __init__(self, *, weighted: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weighted = weighted

    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        return _MeanAggregator(
            parameters, state, weighted=self.weighted, max_weight=self.max_weight
        )


class FedProx(FedAvg):
    """FedProx: FedAvg whose sites add ``μ/2 ‖w − w_global‖²`` to their local loss.

    The proximal term is applied by the task adapter at each site; this strategy only sends
    ``proximal_mu`` with every training instruction.
    """

    name = "fedprox"

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        mu = check_float(proximal_mu, "proximal_mu", minimum=0)
        super().__init__(**kwargs)
        self.proximal_mu = mu

    def round_train_config(self, server_round: int) -> dict[str, Scalar]:
        config = super().round_train_config(server_round)
        config["proximal_mu"] = self.proximal_mu
        return config
