"""The strategy interface: how a federation picks sites, configures them and aggregates.

A strategy is a small, pure object (Flower's ``Strategy`` shape): it gets a snapshot of the
available nodes, the current parameters, its own explicit server state and an injected RNG,
and returns plans; it never touches a transport. Aggregation is a *fold*: the engine opens an
aggregator per round and feeds it each reply as it arrives, so memory stays O(model) however
many sites reply (DESIGN.md, "Aggregation streams").
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import numpy as np

from biofed.core import (
    Array,
    Config,
    ConfigurationError,
    MessageKind,
    Metrics,
    NodeInfo,
    ParameterSet,
    Reply,
    RoundFailed,
    Scalar,
    freeze_config,
    freeze_metrics,
    weighted_mean_metrics,
)
from biofed.core.checks import check_fraction, check_int

#: A strategy's server-side state (optimizer moments, control variates): named ParameterSets.
StrategyState = Mapping[str, ParameterSet]

EMPTY_STATE: StrategyState = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePlan:
    """What one selected node is asked to do in a round (the engine turns it into a message)."""

    node_id: str
    config: Config = field(default_factory=lambda: MappingProxyType({}))
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", freeze_config(self.config))
        object.__setattr__(self, "extras", MappingProxyType(dict(self.extras)))


#: What a robust or validating aggregator did with one site's update (see UpdateDecision).
DecisionAction = Literal["accepted", "rejected", "downweighted", "clipped"]
DECISION_ACTIONS: tuple[DecisionAction, ...] = ("accepted", "rejected", "downweighted", "clipped")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateDecision:
    """What the aggregation decided about one site's update (or, in secure mode, about the
    aggregate: ``node_id`` is then ``"secure-aggregate"``).

    The round engine turns each into a run event ``update_<action>`` and the coordinator
    into an audit entry ``update.<action>``, so a rejected or down-weighted site can see
    why.

    Attributes
    ----------
    node_id:
        The site whose update it is.
    action:
        ``accepted``, ``rejected`` (weight 0), ``downweighted`` (weight reduced) or
        ``clipped`` (norm bounded).
    weight:
        The weight the update finally had in the aggregate (0 when rejected).
    reason:
        One line a person reads (which rule, which figures).
    score:
        The validation score of the update on the trusted data, when it was scored.
    """

    node_id: str
    action: DecisionAction
    weight: float
    reason: str
    score: float | None = None

    def __post_init__(self) -> None:
        if self.action not in DECISION_ACTIONS:
            raise ConfigurationError(f"unknown update decision {self.action!r}")

    def to_dict(self) -> dict[str, str | float | None]:
        """The decision as JSON-ready values (event messages, audit entries)."""
        return {
            "node": self.node_id,
            "action": self.action,
            "weight": self.weight,
            "score": self.score,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateResult:
    """The outcome of a training round's aggregation.

    ``decisions`` lists what a robust or validating aggregator decided about each update
    (empty for plain strategies). ``events`` are run events a wrapper wants recorded with
    the round, kind → message (e.g. ``contribution``: the round's measured contributions
    as JSON); the round engine records each as it records the decisions.
    """

    parameters: ParameterSet
    state: StrategyState = field(default_factory=lambda: EMPTY_STATE)
    metrics: Metrics = field(default_factory=lambda: MappingProxyType({}))
    num_replies: int = 0
    decisions: tuple[UpdateDecision, ...] = ()
    events: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", MappingProxyType(dict(self.state)))
        object.__setattr__(self, "metrics", freeze_metrics(self.metrics))
        object.__setattr__(self, "decisions", tuple(self.decisions))
        object.__setattr__(self, "events", MappingProxyType(dict(self.events)))


class TrainAggregator(abc.ABC):
    """A per-round fold over training replies: ``add`` each, then ``finish`` once."""

    @abc.abstractmethod
    def add(self, reply: Reply) -> None:
        """Fold one validated, successful reply into the running aggregate."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Replies folded in so far."""

    @abc.abstractmethod
    def finish(self) -> AggregateResult:
        """The aggregate; raises :class:`~biofed.core.RoundFailed` if nothing was added."""


def select_nodes(
    nodes: Sequence[NodeInfo], fraction: float, minimum: int, rng: np.random.Generator
) -> list[NodeInfo]:
    """Pick ``max(minimum, ceil(fraction · len(nodes)))`` nodes at random, in id order.

    Deterministic for a given RNG state and node set (nodes are sorted by id first, so the
    order in which they registered does not matter).
    """
    ordered = sorted(nodes, key=lambda n: n.node_id)
    if len(ordered) < minimum:
        raise RoundFailed(f"{len(ordered)} nodes available, the strategy needs at least {minimum}")
    count = max(minimum, int(np.ceil(fraction * len(ordered))))
    if count >= len(ordered):
        return ordered
    chosen = sorted(rng.choice(len(ordered), size=count, replace=False).tolist())
    return [ordered[i] for i in chosen]


class Strategy(abc.ABC):
    """Base class of every aggregation strategy.

    Parameters
    ----------
    fraction_train, fraction_evaluate:
        Share of available nodes asked to train / evaluate each round, in (0, 1].
    min_train_nodes, min_evaluate_nodes:
        At least this many are asked (the round fails if fewer are available).
    train_config, evaluate_config:
        Scalar settings sent to every node (local steps, learning rate…). Copied, never
        modified: a strategy does not write into a config it was handed.
    max_weight:
        The largest example count any one reply weighs with, in training and in evaluation
        (``None``: no cap beyond what each site declared when it registered, which the
        exchange enforces). Bounds weight inflation: a site claiming 10¹⁵ examples weighs
        ``max_weight``.
    """

    #: Short name used in the CLI, tables and results.
    name: str = "strategy"

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 1,
        min_evaluate_nodes: int = 1,
        train_config: Mapping[str, Scalar] | None = None,
        evaluate_config: Mapping[str, Scalar] | None = None,
        max_weight: int | None = None,
    ) -> None:
        self.max_weight = (
            None if max_weight is None else check_int(max_weight, "max_weight", minimum=1)
        )
        self.fraction_train = check_fraction(fraction_train, "fraction_train", above=0)
        self.fraction_evaluate = check_fraction(fraction_evaluate, "fraction_evaluate", above=0)
        self.min_train_nodes = check_int(min_train_nodes, "min_train_nodes", minimum=1)
        self.min_evaluate_nodes = check_int(min_evaluate_nodes, "min_evaluate_nodes", minimum=1)
        self.train_config = freeze_config(train_config)
        self.evaluate_config = freeze_config(evaluate_config)

    # -- state ---------------------------------------------------------------------------
    def init_state(self, parameters: ParameterSet) -> StrategyState:
        """The server state before round 1 (empty unless the strategy keeps some)."""
        return EMPTY_STATE

    # -- training ------------------------------------------------------------------------
    def round_train_config(self, server_round: int) -> dict[str, Scalar]:
        """The config every training node gets in ``server_round`` (a fresh dict)."""
        return dict(self.train_config)

    def configure_train(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        """Choose the nodes that train in ``server_round`` and what each is sent."""
        config = self.round_train_config(server_round)
        chosen = select_nodes(nodes, self.fraction_train, self.min_train_nodes, rng)
        return [NodePlan(node_id=n.node_id, config=config) for n in chosen]

    @abc.abstractmethod
    def begin_train_aggregation(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        num_nodes: int,
    ) -> TrainAggregator:
        """Open the fold for ``server_round``'s replies.

        ``num_nodes`` is the number of nodes available when the round was configured (used
        by SCAFFOLD's control-variate update).
        """

    #: True when sites weigh their updates by example count (FedAvg's default); secure
    #: aggregation then carries each site's count inside its masked vector.
    weighted: bool = True
    #: False for strategies whose aggregation needs each site's reply on its own (SCAFFOLD's
    #: control variates): they cannot run under secure aggregation.
    supports_secure_aggregation: bool = True

    def aggregate_secure(
        self,
        server_round: int,
        parameters: ParameterSet,
        state: StrategyState,
        mean_update: Mapping[str, Array],
        *,
        total_weight: int,
        num_replies: int,
        num_nodes: int,
    ) -> AggregateResult:
        """The round's result from what secure aggregation releases: the (weighted) mean of
        the sites' updates ``xᵢ − x`` and the total weight, never one site's update.

        The default folds the mean model ``x + mean_update`` as a single reply of weight
        ``total_weight``, which is exactly what a weighted mean of the individual replies
        gives for the FedAvg family and FedOpt (their server step sees only the mean).
        Strategies that need more override this or set
        :attr:`supports_secure_aggregation` to False.
        """
        if not self.supports_secure_aggregation:
            raise ConfigurationError(f"{self.name} cannot run under secure aggregation")
        merged = ParameterSet(
            {
                k: (x.astype(np.float64) + mean_update[k]).astype(x.dtype)
                for k, x in parameters.items()
            }
        )
        aggregator = self.begin_train_aggregation(server_round, parameters, state, num_nodes)
        aggregator.add(
            Reply(
                run_id="secure",
                round=server_round,
                node_id="secure-aggregate",
                kind=MessageKind.TRAIN,
                parameters=merged,
                num_examples=max(1, total_weight),
            )
        )
        result = aggregator.finish()
        return dataclasses.replace(result, num_replies=num_replies)

    # -- evaluation ----------------------------------------------------------------------
    def configure_evaluate(
        self,
        server_round: int,
        parameters: ParameterSet,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        """Choose the nodes that evaluate the global model and their config."""
        chosen = select_nodes(nodes, self.fraction_evaluate, self.min_evaluate_nodes, rng)
        config = dict(self.evaluate_config)
        return [NodePlan(node_id=n.node_id, config=config) for n in chosen]

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, float]:
        """Example-weighted mean of each evaluation metric over the replies (each weight
        capped at :attr:`max_weight`)."""
        cap = self.max_weight
        return weighted_mean_metrics(
            [
                (r.num_examples if cap is None else min(r.num_examples, cap), r.metrics)
                for r in replies
                if r.ok
            ]
        )

    def describe(self) -> dict[str, Scalar]:
        """The strategy's settings, for results and logs."""
        out: dict[str, Scalar] = {"strategy": self.name}
        if self.max_weight is not None:
            out["max_weight"] = self.max_weight
        out.update({f"train.{k}": v for k, v in self.train_config.items()})
        return out


def planned_count(strategy: Strategy, num_nodes: int) -> int:
    """How many nodes :func:`select_nodes` asks for ``strategy`` when ``num_nodes`` are up."""
    wanted = max(strategy.min_train_nodes, math.ceil(strategy.fraction_train * num_nodes))
    return max(1, min(num_nodes, wanted))


class StrategyWrapper(Strategy):
    """Base of the strategies that wrap another (DPFedAvg, Robust, Measured).

    The wrapper takes the inner strategy's selection settings, configs and weight cap, keeps
    it as :attr:`inner`, and leaves evaluation to it unless it overrides
    :meth:`configure_evaluate` or :meth:`aggregate_evaluate`. Training is the wrapper's own
    business (each wraps the fold differently), so nothing of it is forwarded here.
    """

    def __init__(self, inner: Strategy) -> None:
        super().__init__(
            fraction_train=inner.fraction_train,
            fraction_evaluate=inner.fraction_evaluate,
            min_train_nodes=inner.min_train_nodes,
            min_evaluate_nodes=inner.min_evaluate_nodes,
            train_config=inner.train_config,
            evaluate_config=inner.evaluate_config,
            max_weight=inner.max_weight,
        )
        self.inner = inner

    def configure_evaluate(
        self,
        server_round: int,
        parameters: ParameterSet,
        nodes: Sequence[NodeInfo],
        rng: np.random.Generator,
    ) -> list[NodePlan]:
        return self.inner.configure_evaluate(server_round, parameters, nodes, rng)

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, float]:
        return self.inner.aggregate_evaluate(server_round, replies)
