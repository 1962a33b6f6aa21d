"""Every strategy against expectations computed by hand from the papers' formulas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import biofed.strategies as strategies_pkg
from biofed.core import (
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    ConfigurationError,
    MessageKind,
    NodeInfo,
    ParameterMismatch,
    ParameterSet,
    Reply,
    RoundFailed,
)
from biofed.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Scaffold,
    Strategy,
    make_strategy,
)


def ps(**arrays: object) -> ParameterSet:
    return ParameterSet({k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})


def reply(node: str, n: int, params: ParameterSet, **extras: ParameterSet) -> Reply:
    return Reply(
        run_id="r",
        round=1,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=params,
        num_examples=n,
        metrics={"loss": float(n)},
        extras=extras,
    )


def aggregate(
    strategy: Strategy, x: ParameterSet, replies: list[Reply], state=None, num_nodes=None
):
    state = strategy.init_state(x) if state is None else state
    agg = strategy.begin_train_aggregation(1, x, state, num_nodes or len(replies))
    for r in replies:
        agg.add(r)
    return agg.finish()


X0 = ps(w=[1.0, 2.0], b=[0.5])
Y1 = ps(w=[3.0, 0.0], b=[1.5])
Y2 = ps(w=[0.0, 6.0], b=[0.0])


def test_public_api() -> None:
    assert set(strategies_pkg.__all__) == {
        "DECISION_ACTIONS",
        "DP_CLIP_NORM",
        "DP_NOISE_STD_SHARE",
        "EMPTY_STATE",
        "ROBUST_AGGREGATORS",
        "STRATEGIES",
        "AggregateResult",
        "DPFedAvg",
        "DecisionAction",
        "FedAdagrad",
        "FedAdam",
        "FedAvg",
        "FedAvgM",
        "FedOpt",
        "FedProx",
        "FedYogi",
        "NodePlan",
        "Robust",
        "Scaffold",
        "Strategy",
        "StrategyState",
        "StrategyWrapper",
        "TrainAggregator",
        "TrustedValidation",
        "UpdateDecision",
        "UpdateJudge",
        "UpdateValidation",
        "WeightedSum",
        "capped_examples",
        "make_strategy",
        "planned_count",
        "select_nodes",
    }


def test_fedavg_weights_by_examples() -> None:
    result = aggregate(FedAvg(), X0, [reply("a", 1, Y1), reply("b", 3, Y2)])
    # (1·[3,0] + 3·[0,6]) / 4 = [0.75, 4.5]; (1·1.5 + 0) / 4 = 0.375
    np.testing.assert_allclose(result.parameters["w"], [0.75, 4.5])
    np.testing.assert_allclose(result.parameters["b"], [0.375])
    assert result.parameters["w"].dtype == np.float32
    assert result.metrics["loss"] == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert result.num_replies == 2


def test_fedavg_unweighted() -> None:
    result = aggregate(FedAvg(weighted=False), X0, [reply("a", 1, Y1), reply("b", 3, Y2)])
    np.testing.assert_allclose(result.parameters["w"], [1.5, 3.0])


def test_fedavg_refuses_empty_round_and_bad_layout() -> None:
    agg = FedAvg().begin_train_aggregation(1, X0, {}, 2)
    with pytest.raises(RoundFailed):
        agg.finish()
    with pytest.raises(ParameterMismatch):
        agg.add(reply("a", 1, ps(w=[1.0, 2.0])))
    with pytest.raises(ParameterMismatch):
        agg.add(reply("a", 0, Y1))


def test_fedprox_sends_mu_and_never_writes_into_callers_config() -> None:
    config = {"local_steps": 10, "learning_rate": 0.1}
    strategy = FedProx(proximal_mu=0.1, train_config=config)
    nodes = [NodeInfo(node_id=n) for n in ("b", "a")]
    plans = strategy.configure_train(1, X0, {}, nodes, np.random.default_rng(0))
    assert [p.node_id for p in plans] == ["a", "b"]
    assert plans[0].config["proximal_mu"] == 0.1
    assert plans[0].config["local_steps"] == 10
    assert config == {"local_steps": 10, "learning_rate": 0.1}
    assert "proximal_mu" not in strategy.train_config
    with pytest.raises(ConfigurationError, match="proximal_mu must be >= 0"):
        FedProx(proximal_mu=-1.0)


def test_fedavgm_momentum_by_hand() -> None:
    strategy = FedAvgM(server_learning_rate=0.5, server_momentum=0.9)
    r1 = aggregate(strategy, X0, [reply("a", 1, Y1)])
    # Δ = [2, -2], [1]; m = Δ; x = x0 + 0.5·m
    np.testing.assert_allclose(r1.parameters["w"], [2.0, 1.0])
    np.testing.assert_allclose(r1.state["server_momentum"]["w"], [2.0, -2.0])
    r2 = aggregate(strategy, r1.parameters, [reply("a", 1, Y1)], state=r1.state)
    # Δ = [3,0]-[2,1] = [1,-1]; m = 0.9·[2,-2] + [1,-1] = [2.8,-2.8]; x = [2,1] + 1.4·[1,-1]
    np.testing.assert_allclose(r2.parameters["w"], [3.4, -0.4], rtol=1e-6)


def _fedopt_by_hand(variant: str, x, ys, lr=0.1, b1=0.9, b2=0.99, tau=1e-3):
    x = np.asarray(x, float)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    for y in ys:
        d = np.asarray(y, float) - x
        m = b1 * m + (1 - b1) * d
        if variant == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        elif variant == "fedyogi":
            v = v - (1 - b2) * d * d * np.sign(v - d * d)
        else:
            v = v + d * d
        x = x + lr * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_formulas_over_three_rounds(cls: type[Strategy]) -> None:
    strategy = cls(server_learning_rate=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    targets = [[3.0, 0.0], [2.0, 5.0], [-1.0, 1.0]]
    x, state = ps(w=[1.0, 2.0]), None
    for t in targets:
        result = aggregate(strategy, x, [reply("a", 2, ps(w=t))], state=state)
        x, state = result.parameters, result.state
    expected = _fedopt_by_hand(cls.name, [1.0, 2.0], targets)
    np.testing.assert_allclose(x["w"], expected, rtol=1e-5)


def test_fedopt_validation() -> None:
    with pytest.raises(ConfigurationError, match="beta_1"):
        FedAdam(beta_1=1.0)
    with pytest.raises(ConfigurationError, match="tau"):
        FedYogi(tau=0.0)
    with pytest.raises(ConfigurationError, match="server_learning_rate"):
        FedAdagrad(server_learning_rate=-0.1)


def test_scaffold_sends_control_and_updates_by_the_formula() -> None:
    strategy = Scaffold(server_learning_rate=0.5)
    state = strategy.init_state(X0)
    nodes = [NodeInfo(node_id=n) for n in ("a", "b", "c", "d")]
    plans = strategy.configure_train(1, X0, state, nodes, np.random.default_rng(0))
    assert all(SCAFFOLD_SERVER_CONTROL in p.extras for p in plans)
    dc1 = ps(w=[1.0, 1.0], b=[2.0])
    dc2 = ps(w=[3.0, -1.0], b=[0.0])
    result = aggregate(
        strategy,
        X0,
        [
            reply("a", 1, Y1, **{SCAFFOLD_CONTROL_DELTA: dc1}),
            reply("b", 3, Y2, **{SCAFFOLD_CONTROL_DELTA: dc2}),
        ],
        state=state,
        num_nodes=4,
    )
    # ȳ (weighted) = [0.75, 4.5], [0.375]; x = x0 + 0.5·(ȳ − x0)
    np.testing.assert_allclose(result.parameters["w"], [0.875, 3.25])
    np.testing.assert_allclose(result.parameters["b"], [0.4375])
    # c = 0 + (|S|/N)·mean(Δc) = 0.5·[2, 0], 0.5·[1]
    c = result.state[SCAFFOLD_SERVER_CONTROL]
    np.testing.assert_allclose(c["w"], [1.0, 0.0])
    np.testing.assert_allclose(c["b"], [0.5])


def test_scaffold_requires_control_delta_and_sgd() -> None:
    agg = Scaffold().begin_train_aggregation(1, X0, Scaffold().init_state(X0), 2)
    with pytest.raises(ParameterMismatch, match="lacks"):
        agg.add(reply("a", 1, Y1))
    with pytest.raises(ConfigurationError, match="sgd"):
        Scaffold(train_config={"optimizer": "adam"})


def test_selection_respects_fraction_minimum_and_is_deterministic() -> None:
    nodes = [NodeInfo(node_id=f"n{i:02d}") for i in range(10)]
    strategy = FedAvg(fraction_train=0.3, min_train_nodes=2)
    a = strategy.configure_train(1, X0, {}, nodes, np.random.default_rng(5))
    b = strategy.configure_train(1, X0, {}, list(reversed(nodes)), np.random.default_rng(5))
    assert [p.node_id for p in a] == [p.node_id for p in b]
    assert len(a) == 3
    with pytest.raises(RoundFailed):
        FedAvg(min_train_nodes=11).configure_train(1, X0, {}, nodes, np.random.default_rng(0))
    with pytest.raises(ConfigurationError, match="fraction_train"):
        FedAvg(fraction_train=0.0)


def test_make_strategy() -> None:
    assert isinstance(make_strategy("FedAdam", server_learning_rate=0.2), FedAdam)
    with pytest.raises(ConfigurationError, match="unknown strategy"):
        make_strategy("fedmagic")
    with pytest.raises(ConfigurationError, match="bad arguments"):
        make_strategy("fedavg", nonsense=1)


def test_aggregate_evaluate_is_example_weighted() -> None:
    replies = [
        Reply(
            run_id="r", round=1, node_id="a", kind="evaluate", num_examples=1, metrics={"c": 1.0}
        ),
        Reply(
            run_id="r", round=1, node_id="b", kind="evaluate", num_examples=3, metrics={"c": 0.5}
        ),
    ]
    assert FedAvg().aggregate_evaluate(1, replies)["c"] == pytest.approx(0.625)


# -- properties ---------------------------------------------------------------------------

_updates = st.integers(2, 6).flatmap(
    lambda n: st.tuples(
        st.lists(
            hnp.arrays(np.float32, (5,), elements=st.floats(-1e3, 1e3, width=32)),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.integers(1, 1000), min_size=n, max_size=n),
        st.permutations(list(range(n))),
    )
)


@settings(max_examples=60, deadline=None)
@given(_updates)
def test_fedavg_is_permutation_invariant_and_within_min_max(data) -> None:
    arrays, counts, perm = data
    x = ps(w=np.zeros(5))
    replies = [
        reply(f"n{i}", c, ps(w=a)) for i, (a, c) in enumerate(zip(arrays, counts, strict=True))
    ]
    first = aggregate(FedAvg(), x, replies).parameters["w"]
    second = aggregate(FedAvg(), x, [replies[i] for i in perm]).parameters["w"]
    stack = np.stack(arrays)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-3)
    slack = 1e-4 * (1 + np.abs(stack).max())
    assert np.all(first >= stack.min(axis=0) - slack)
    assert np.all(first <= stack.max(axis=0) + slack)
    expected = np.average(stack.astype(np.float64), axis=0, weights=counts)
    np.testing.assert_allclose(first, expected, rtol=1e-4, atol=1e-3)


def test_streaming_sum_handles_models_larger_than_one_chunk() -> None:
    rng = np.random.default_rng(0)
    d = 100_003
    arrays = [rng.standard_normal(d).astype(np.float32) for _ in range(3)]
    x = ps(w=np.zeros(d))
    result = aggregate(FedAvg(), x, [reply(f"n{i}", i + 1, ps(w=a)) for i, a in enumerate(arrays)])
    expected = np.average(np.stack(arrays).astype(np.float64), axis=0, weights=[1, 2, 3])
    np.testing.assert_allclose(result.parameters["w"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", [FedAvg(), FedAvg(weighted=False)])
def test_secure_aggregate_equals_the_weighted_fold_of_the_replies(strategy: FedAvg) -> None:
    """What secure aggregation releases (the weighted mean update and the total weight)
    gives the same model as folding the individual replies."""
    replies = [reply("a", 1, Y1), reply("b", 3, Y2)]
    folded = aggregate(strategy, X0, replies)
    weights = [1.0, 3.0] if strategy.weighted else [1.0, 1.0]
    mean = {
        k: sum(w * (r.parameters[k] - X0[k]) for w, r in zip(weights, replies, strict=True))
        / sum(weights)
        for k in X0
        if all(r.parameters is not None for r in replies)
    }
    secure = strategy.aggregate_secure(
        1,
        X0,
        strategy.init_state(X0),
        mean,
        total_weight=int(sum(weights)),
        num_replies=2,
        num_nodes=2,
    )
    for k in X0:
        np.testing.assert_allclose(secure.parameters[k], folded.parameters[k], rtol=1e-6)
    assert secure.num_replies == 2


def test_scaffold_refuses_secure_aggregation() -> None:
    strategy = Scaffold()
    with pytest.raises(ConfigurationError, match="cannot run under secure aggregation"):
        strategy.aggregate_secure(
            1,
            X0,
            strategy.init_state(X0),
            dict(X0.items()),
            total_weight=1,
            num_replies=1,
            num_nodes=1,
        )
