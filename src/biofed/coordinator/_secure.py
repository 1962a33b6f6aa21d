"""A training round under secure aggregation: the SecAgg+ server state machine
(:class:`~biofed.secagg.SecAggServer`) driven over the round engine's
:class:`~biofed.coordinator.Exchange`, whatever transport is under it.

The four stages are four exchanges of ``MessageKind.SECAGG`` instructions, each carrying
one protocol message in ``extras["secagg"]`` and ``config["secagg.stage"]``:

1. ``advertise_keys``: the round's plan goes out; each site answers with its signed public
   keys and its certificate.
2. ``share_keys``: each site gets the roster (its neighbours' signed keys) and every
   participant's certificate, checks the signatures against the consortium CA, and answers
   with encrypted shares.
3. ``masked_input``: each site gets the global model, the shares addressed to it and the
   training config; it trains (with its DP, policy and budget checks), and answers with its
   masked, quantised, weighted update.
4. ``unmask``: each site gets the list of survivors and dropouts and answers with shares.

Only then does the coordinator hold an aggregate: the weighted mean of the survivors'
updates, which the strategy turns into the next model (:meth:`Strategy.aggregate_secure`).
A site that does not answer a stage in time is a dropout; below the threshold the round
fails cleanly (``RoundFailed``: the model stays, no partial sum is released) and the run
goes on.

Security notes
--------------
Threat: a curious coordinator reading one site's update. It sees only masked vectors,
uniformly distributed in the ring; it cannot substitute keys, because sites check each
other's signatures against certificates from the consortium CA (Bonawitz et al. 2017,
Bell et al. 2020; see :mod:`biofed.secagg`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from biofed.coordinator._exchange import Exchange
from biofed.coordinator._records import RunCancelled
from biofed.core import (
    Array,
    BiofedError,
    ConfigurationError,
    MessageKind,
    ParameterSet,
    ProtocolError,
    Reply,
    RoundFailed,
    Scalar,
    SecureAggregationError,
)
from biofed.secagg import (
    CERTIFICATE_ARRAY,
    CERTIFICATE_PREFIX,
    STAGE_KEY,
    WEIGHTING_KEY,
    SecAggResult,
    SecAggServer,
    SecAggStage,
    SecureAggregationSettings,
    pack_message,
    unpack_message,
)
from biofed.strategies import AggregateResult, NodePlan, Strategy, StrategyState

_STAGES = (
    SecAggStage.ADVERTISE_KEYS,
    SecAggStage.SHARE_KEYS,
    SecAggStage.MASKED_INPUT,
    SecAggStage.UNMASK,
)


def flat_dimension(parameters: ParameterSet) -> int:
    """Length of the update vector: every parameter must be floating point."""
    for name, array in parameters.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise ConfigurationError(
                f"secure aggregation sums floating-point updates; {name!r} is {array.dtype}"
            )
    return sum(int(a.size) for a in parameters.values())


def unflatten(vector: Array, template: ParameterSet) -> dict[str, Array]:
    """Split a flat vector into arrays shaped like ``template`` (name order)."""
    out: dict[str, Array] = {}
    offset = 0
    for name, array in template.items():
        out[name] = np.asarray(vector[offset : offset + array.size], dtype=np.float64).reshape(
            array.shape
        )
        offset += array.size
    return out


class SecureRound:
    """One training round under SecAgg+ (a :class:`~biofed.coordinator.TrainingRound`): four
    exchanges over the engine's :class:`~biofed.coordinator.Exchange`.

    Parameters
    ----------
    strategy:
        Turns the survivors' weighted mean into the next model.
    settings:
        The job's ``[secure_aggregation]`` table.
    min_replies:
        Sites that must remain in the sum; fewer and the round fails.
    """

    def __init__(
        self, strategy: Strategy, settings: SecureAggregationSettings, *, min_replies: int = 1
    ) -> None:
        self.strategy = strategy
        self.settings = settings
        self.min_replies = min_replies

    def train(
        self,
        exchange: Exchange,
        server_round: int,
        params: ParameterSet,
        state: StrategyState,
        plans: list[NodePlan],
        num_nodes: int,
    ) -> AggregateResult:
        """Run the four stages; return the aggregate (refused replies are counted by the
        exchange).

        Raises
        ------
        RoundFailed
            When fewer sites than the protocol's threshold or the run's ``min_replies``
            remain, or the plan is refused (a sum that could wrap around the ring).
        """
        strategy = self.strategy
        if not strategy.supports_secure_aggregation:
            raise RoundFailed(f"{strategy.name} cannot run under secure aggregation")
        participants = [p.node_id for p in plans]
        needed = max(2, self.min_replies)
        if len(participants) < needed:
            raise RoundFailed(
                f"secure aggregation needs at least {needed} "
                f"sites, {len(participants)} were selected"
            )
        try:
            plan = self.settings.secagg_config(flat_dimension(params)).plan(len(participants))
            server = SecAggServer(plan, participants, run_id=exchange.run_id, round=server_round)
        except ConfigurationError as exc:
            raise RoundFailed(f"secure aggregation refused: {exc}") from None
        by_node = {p.node_id: p for p in plans}
        weighting = "examples" if strategy.weighted else "equal"
        try:
            result = run_stages(
                exchange,
                server_round,
                server,
                {n: {**by_node[n].config, WEIGHTING_KEY: weighting} for n in participants},
                masked_model=params,
            )
        except SecureAggregationError as exc:
            raise RoundFailed(f"secure aggregation aborted: {exc}") from None
        except RunCancelled:
            raise
        except BiofedError as exc:
            raise RoundFailed(f"secure aggregation failed: {exc}") from None
        if len(result.survivors) < self.min_replies:
            raise RoundFailed(
                f"{len(result.survivors)} sites in the secure sum, the run needs {self.min_replies}"
            )
        for node_id, stage_left in sorted(result.dropouts.items()):
            exchange.event(
                server_round, "secagg_dropout", f"dropped at {stage_left.value}", node_id
            )
        aggregate = strategy.aggregate_secure(
            server_round,
            params,
            state,
            unflatten(result.mean, params),
            total_weight=result.total_weight,
            num_replies=len(result.survivors),
            num_nodes=num_nodes,
        )
        metrics = {
            **aggregate.metrics,
            "secagg.survivors": float(len(result.survivors)),
            "secagg.total_weight": float(result.total_weight),
        }
        return AggregateResult(
            parameters=aggregate.parameters,
            state=aggregate.state,
            metrics=metrics,
            num_replies=aggregate.num_replies,
            decisions=aggregate.decisions,  # robust checks of the aggregate (run events)
        )


def run_stages(
    exchange: Exchange,
    server_round: int,
    server: SecAggServer,
    configs: Mapping[str, Mapping[str, Scalar]],
    *,
    masked_model: ParameterSet,
    plain_arrays: bool = True,
) -> SecAggResult:
    """Drive ``server`` through the four SecAgg+ stages over ``exchange``: one
    ``MessageKind.SECAGG`` exchange per stage, each site's instruction carrying its
    ``configs`` entry, the stage and the protocol message (the share-keys stage also every
    participant's certificate); ``masked_model`` goes out with the masked-input stage
    only. The one stage loop of a training round (:class:`SecureRound`) and of a query's
    secure sum (:class:`~biofed.coordinator.SecureSum`).

    Parameters
    ----------
    plain_arrays:
        Whether a stage reply may carry plain arrays beside its masked message (False for
        a query: only the masked message may come back).

    Raises
    ------
    SecureAggregationError, BiofedError
        From the protocol (the caller words the failure); RunCancelled once cancelled.
    """
    certificates: dict[str, bytes] = {}

    def accept(reply: Reply) -> None:
        if not plain_arrays and reply.parameters is not None and len(reply.parameters):
            raise ProtocolError(
                "a secure-aggregation reply carries plain arrays: only its masked message "
                "may come back"
            )
        message, more = unpack_message(reply.extras)
        if CERTIFICATE_ARRAY in more:
            certificates[reply.node_id] = more[CERTIFICATE_ARRAY]
        server.receive(reply.node_id, message)

    outgoing: dict[str, bytes] = {n: server.plan.to_bytes() for n in configs}
    empty = ParameterSet({})
    for stage in _STAGES:
        stage_plans = []
        for node_id, message in outgoing.items():
            more = {}
            if stage is SecAggStage.SHARE_KEYS:
                more = {f"{CERTIFICATE_PREFIX}{n}": c for n, c in certificates.items()}
            stage_plans.append(
                NodePlan(
                    node_id=node_id,
                    config={**configs[node_id], STAGE_KEY: stage.value},
                    extras=pack_message(message, **more),
                )
            )
        model = masked_model if stage is SecAggStage.MASKED_INPUT else empty
        exchange.exchange(server_round, MessageKind.SECAGG, model, stage_plans, accept)
        outgoing = {n: m.to_bytes() for n, m in server.close_stage().items()}
    return server.result()
