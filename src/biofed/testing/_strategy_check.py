"""``check_strategy``: the contract every strategy must keep, for ours and for users' own.

Like scikit-learn's ``check_estimator``: call it in a test with an instance of your
strategy; it raises AssertionError naming the first broken rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from biofed.core import (
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    MessageKind,
    NodeInfo,
    ParameterSet,
    Reply,
    RoundFailed,
)
from biofed.strategies import NodePlan, Strategy, StrategyState

ReplyExtras = Callable[[NodePlan, ParameterSet], Mapping[str, ParameterSet]]


def _default_extras(plan: NodePlan, params: ParameterSet) -> Mapping[str, ParameterSet]:
    if SCAFFOLD_SERVER_CONTROL in plan.extras:
        delta = params.map(lambda a: np.full_like(a, 0.01))
        return {SCAFFOLD_CONTROL_DELTA: delta}
    return {}


def _model() -> ParameterSet:
    return ParameterSet(
        {
            "layer.weight": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
            "layer.bias": np.array([0.5, -0.5, 0.0], dtype=np.float32),
        }
    )


def _aggregate(
    strategy: Strategy,
    params: ParameterSet,
    state: StrategyState,
    replies: Sequence[Reply],
    num_nodes: int,
) -> tuple[ParameterSet, StrategyState]:
    aggregator = strategy.begin_train_aggregation(1, params, state, num_nodes)
    for reply in replies:
        aggregator.add(reply)
    assert aggregator.count == len(replies), "aggregator.count does not count added replies"
    result = aggregator.finish()
    return result.parameters, result.state


def check_strategy(
    strategy: Strategy,
    *,
    num_nodes: int = 5,
    reply_extras: ReplyExtras = _default_extras,
) -> None:
    """Assert that ``strategy`` keeps the strategy contract.

    Checks: selection is deterministic for an RNG state, picks known nodes once each, and
    does not depend on the order nodes are listed in; the strategy never writes into its
    configs; aggregation keeps the model's names, shapes and dtypes, is finite, does not
    depend on the order replies arrive in, returns state with the keys of ``init_state``,
    and refuses to finish a round without replies; evaluation aggregates to floats.

    Parameters
    ----------
    strategy:
        The strategy to check.
    num_nodes:
        Virtual nodes to plan rounds for (≥ 2).
    reply_extras:
        Builds the extras a node would return for a plan (SCAFFOLD's control delta by
        default); override for strategies with extras of their own.
    """
    assert num_nodes >= 2, "check_strategy needs at least 2 nodes"
    params = _model()
    nodes = [NodeInfo(node_id=f"node-{i}", num_examples=10 * (i + 1)) for i in range(num_nodes)]
    train_config = copy.deepcopy(dict(strategy.train_config))
    state = strategy.init_state(params)
    assert all(isinstance(v, ParameterSet) for v in state.values()), (
        "state values not ParameterSets"
    )

    plans = strategy.configure_train(1, params, state, nodes, np.random.default_rng(0))
    again = strategy.configure_train(1, params, state, nodes[::-1], np.random.default_rng(0))
    ids = [p.node_id for p in plans]
    assert plans, "configure_train selected no node"
    assert len(set(ids)) == len(ids), "configure_train selected a node twice"
    assert set(ids) <= {n.node_id for n in nodes}, "configure_train selected an unknown node"
    assert ids == [p.node_id for p in again], "selection depends on the order of the node list"
    assert dict(strategy.train_config) == train_config, "strategy wrote into its train_config"

    replies = []
    for k, plan in enumerate(plans):
        local = params.map(lambda a, k=k: (a + 0.1 * (k + 1)).astype(a.dtype))
        replies.append(
            Reply(
                run_id="check",
                round=1,
                node_id=plan.node_id,
                kind=MessageKind.TRAIN,
                parameters=local,
                num_examples=10 * (k + 1),
                metrics={"train_loss": 1.0 / (k + 1)},
                extras=reply_extras(plan, local),
            )
        )
    new, new_state = _aggregate(strategy, params, state, replies, len(nodes))
    assert new.spec == params.spec, "aggregate changed parameter names, shapes or dtypes"
    assert new.all_finite(), "aggregate is not finite"
    assert set(new_state) == set(state), "aggregate state keys differ from init_state's"
    reordered, _ = _aggregate(strategy, params, state, replies[::-1], len(nodes))
    for name in params:
        np.testing.assert_allclose(
            reordered[name],
            new[name],
            rtol=1e-5,
            atol=1e-6,
            err_msg="aggregate depends on the order replies arrive in",
        )
    empty = strategy.begin_train_aggregation(1, params, state, len(nodes))
    try:
        empty.finish()
    except RoundFailed:
        pass
    else:
        raise AssertionError("finish() without replies must raise RoundFailed")

    eval_plans = strategy.configure_evaluate(1, new, nodes, np.random.default_rng(0))
    assert eval_plans, "configure_evaluate selected no node"
    eval_replies = [
        Reply(
            run_id="check",
            round=1,
            node_id=p.node_id,
            kind=MessageKind.EVALUATE,
            num_examples=5 + k,
            metrics={"score": 0.5 + 0.01 * k},
        )
        for k, p in enumerate(eval_plans)
    ]
    metrics = strategy.aggregate_evaluate(1, eval_replies)
    assert all(isinstance(v, float) for v in metrics.values()), "evaluation metrics not floats"
    assert dict(strategy.train_config) == train_config, "strategy wrote into its train_config"
