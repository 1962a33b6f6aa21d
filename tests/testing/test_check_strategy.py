"""Every shipped strategy passes the contract check, and the check catches a broken one."""

from __future__ import annotations

import pytest

from biofed.core import ParameterSet
from biofed.strategies import STRATEGIES, FedAvg, StrategyState, TrainAggregator, make_strategy
from biofed.testing import check_strategy


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_shipped_strategies_keep_the_contract(name: str) -> None:
    kwargs = {"proximal_mu": 0.1} if name == "fedprox" else {}
    check_strategy(make_strategy(name, train_config={"local_steps": 3}, **kwargs))
    check_strategy(make_strategy(name, fraction_train=0.5, **kwargs), num_nodes=8)


class _OrderDependent(FedAvg):
    """Keeps only the last reply: not a valid aggregation."""

    def begin_train_aggregation(
        self, server_round: int, parameters: ParameterSet, state: StrategyState, num_nodes: int
    ) -> TrainAggregator:
        inner = super().begin_train_aggregation(server_round, parameters, state, num_nodes)
        last: list[object] = []

        class Last(TrainAggregator):
            def add(self, reply):  # type: ignore[no-untyped-def]
                last[:] = [reply]
                inner.add(reply)

            @property
            def count(self) -> int:
                return inner.count

            def finish(self):  # type: ignore[no-untyped-def]
                result = inner.finish()
                params = last[0].parameters  # type: ignore[attr-defined]
                return type(result)(parameters=params, state=result.state, num_replies=1)

        return Last()


class _WritesConfig(FedAvg):
    def round_train_config(self, server_round: int) -> dict[str, object]:  # type: ignore[override]
        self.train_config = {**self.train_config, "round": server_round}  # type: ignore[assignment]
        return dict(self.train_config)


def test_check_catches_order_dependence_and_config_writes() -> None:
    with pytest.raises(AssertionError, match="order replies arrive"):
        check_strategy(_OrderDependent())
    with pytest.raises(AssertionError, match="wrote into its train_config"):
        check_strategy(_WritesConfig())
