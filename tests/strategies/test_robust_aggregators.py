"""Robust aggregation against values computed by hand from the papers' formulas, its
decisions, weight caps, refusals and secure-mode checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biofed.core import (
    ConfigurationError,
    MessageKind,
    NodeInfo,
    ParameterMismatch,
    ParameterSet,
    Reply,
    RoundFailed,
)
from biofed.core.sections import MAX_UPDATE_NORM
from biofed.strategies import (
    ROBUST_AGGREGATORS,
    AggregateResult,
    DPFedAvg,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    Robust,
    Scaffold,
    Strategy,
)
from biofed.testing import check_strategy

# The model: one float64 vector "w" (so hand-computed values are exact) and an x of zeros.
X = ParameterSet({"w": np.zeros(2, dtype=np.float64)})


def upd(*values: float) -> ParameterSet:
    return ParameterSet({"w": np.asarray(values, dtype=np.float64)})


def reply(node: str, params: ParameterSet, n: int = 10, **metrics: float) -> Reply:
    return Reply(
        run_id="r",
        round=1,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=params,
        num_examples=n,
        metrics=metrics,
    )


def aggregate(
    strategy: Strategy,
    replies: list[Reply],
    x: ParameterSet = X,
    state: object = None,
    planned: int | None = None,
) -> AggregateResult:
    state = strategy.init_state(x) if state is None else state
    nodes = len(replies) if planned is None else planned
    agg = strategy.begin_train_aggregation(1, x, state, nodes)  # type: ignore[arg-type]
    for r in replies:
        agg.add(r)
    assert agg.count == len(replies)
    return agg.finish()


def by_node(result: AggregateResult) -> dict[str, tuple[str, float, float | None]]:
    return {d.node_id: (d.action, d.weight, d.score) for d in result.decisions}


def test_median_hand_computed_odd_and_even() -> None:
    replies = [reply("a", upd(1, 10)), reply("b", upd(2, -5)), reply("c", upd(100, 0))]
    result = aggregate(Robust(FedAvg(), "median"), replies)
    np.testing.assert_array_equal(result.parameters["w"], [2.0, 0.0])
    assert {a for a, _, _ in by_node(result).values()} == {"accepted"}
    replies.append(reply("d", upd(3, 4)))
    even = aggregate(Robust(FedAvg(), "median"), replies)
    np.testing.assert_array_equal(even.parameters["w"], [2.5, 2.0])  # (2+3)/2, (0+4)/2


def test_median_goes_through_the_inner_server_step() -> None:
    # FedAvgM with η = 1, β = 0.5: m = 0.5·0 + Δ, x ← x + m; then again: m = 0.5·Δ + Δ.
    x = upd(1.0, 1.0)
    strategy = Robust(FedAvgM(server_learning_rate=1.0, server_momentum=0.5), "median")
    replies = [reply(n, upd(1 + d, 1)) for n, d in (("a", 1), ("b", 2), ("c", 300))]
    first = aggregate(strategy, replies, x=x)
    np.testing.assert_allclose(first.parameters["w"], [3.0, 1.0])
    second = aggregate(strategy, replies, x=x, state=first.state)
    np.testing.assert_allclose(second.parameters["w"], [1 + 1.5 * 2, 1.0])


def test_trimmed_mean_hand_computed_with_f_and_with_trim() -> None:
    values = [(1, -50), (2, 0), (3, 1), (4, 2), (100, 3)]
    replies = [reply(f"s{i}", upd(*v)) for i, v in enumerate(values)]
    for strategy in (
        Robust(FedAvg(), "trimmed_mean", f=1),
        Robust(FedAvg(), "trimmed_mean", trim=0.2),
    ):
        result = aggregate(strategy, replies)
        # per coordinate drop the smallest and largest: mean(2,3,4) = 3, mean(0,1,2) = 1
        np.testing.assert_allclose(result.parameters["w"], [3.0, 1.0])
    reasons = {d.node_id: d.reason for d in result.decisions}
    assert "(100% of this update's coordinates" in reasons["s0"]  # 1 and -50: both extremes
    assert "(0% of this update's coordinates" in reasons["s1"]
    # trim 0.1 of 5 updates drops ⌈0.5⌉ = 1 per side, as f = 1 does; trim 0 drops nothing
    default = aggregate(Robust(FedAvg(), "trimmed_mean", trim=0.1), replies)
    np.testing.assert_allclose(default.parameters["w"], [3.0, 1.0])
    plain = aggregate(Robust(FedAvg(), "trimmed_mean", trim=0.0), replies)
    np.testing.assert_allclose(plain.parameters["w"], [22.0, -44 / 5])


KRUM_POINTS = {"u1": (0, 0), "u2": (1, 0), "u3": (0, 2), "u4": (1, 1), "u5": (10, 10)}
# Squared distances: u1–u2 1, u1–u3 4, u1–u4 2, u2–u4 1, u2–u3 5, u3–u4 2, u5 ≥ 162.
# With f = 1, each score sums the n − f − 2 = 2 nearest: u1 1+2, u2 1+1, u3 2+4, u4 1+2,
# u5 162+164.
KRUM_SCORES = {"u1": 3.0, "u2": 2.0, "u3": 6.0, "u4": 3.0, "u5": 326.0}


def krum_replies() -> list[Reply]:
    return [reply(n, upd(*p)) for n, p in KRUM_POINTS.items()]


def test_krum_selects_the_lowest_score_and_rejects_the_rest_with_their_scores() -> None:
    result = aggregate(Robust(FedAvg(), "krum", f=1), krum_replies())
    np.testing.assert_array_equal(result.parameters["w"], [1.0, 0.0])  # u2
    decisions = by_node(result)
    assert decisions["u2"] == ("accepted", 1.0, 2.0)
    for node in ("u1", "u3", "u4", "u5"):
        action, weight, score = decisions[node]
        assert (action, weight, score) == ("rejected", 0.0, KRUM_SCORES[node])


def test_multi_krum_averages_the_m_best() -> None:
    three = aggregate(Robust(FedAvg(), "multi_krum", f=1, multi_krum_m=3), krum_replies())
    np.testing.assert_allclose(three.parameters["w"], [2 / 3, 1 / 3])  # u2, u1, u4
    default = aggregate(Robust(FedAvg(), "multi_krum", f=1), krum_replies())  # m = n − f = 4
    np.testing.assert_allclose(default.parameters["w"], [0.5, 0.75])  # u1..u4
    assert by_node(default)["u5"][0] == "rejected"
    assert by_node(default)["u3"] == ("accepted", 0.25, 6.0)


def test_krum_refuses_too_few_updates_for_f() -> None:
    replies = krum_replies()[:4]  # n = 4 ≤ 2f + 2 = 4
    # refused before any site trains when the plan is too small …
    with pytest.raises(
        RoundFailed, match=r"needs more than 4 updates \(n > 2f \+ 2\); the round plans 4"
    ):
        aggregate(Robust(FedAvg(), "krum", f=1), replies)
    # … and at the end when too few of the planned sites replied
    with pytest.raises(RoundFailed, match=r"needs more than 4 updates \(n > 2f \+ 2\), 4 arrived"):
        aggregate(Robust(FedAvg(), "krum", f=1), replies, planned=5)
    with pytest.raises(RoundFailed, match="multi_krum_m = 5 exceeds"):
        aggregate(Robust(FedAvg(), "multi_krum", f=1, multi_krum_m=5), krum_replies())


def test_krum_ties_go_to_the_lower_node_id_whatever_the_arrival_order() -> None:
    pts = [reply(n, upd(v, 0)) for n, v in (("c", 2), ("a", 0), ("b", 1), ("d", 3), ("e", 4))]
    # f = 1, two nearest: a 1+4, b 1+1, c 1+1, d 1+1, e 1+4 → b, c, d tie: b wins.
    for order in (pts, pts[::-1]):
        result = aggregate(Robust(FedAvg(), "krum", f=1), order)
        np.testing.assert_array_equal(result.parameters["w"], [1.0, 0.0])


def test_geometric_median_hand_computed_and_weight_capped() -> None:
    # In one dimension the geometric median is the (weighted) median.
    replies = [reply("a", upd(0, 0), 1), reply("b", upd(1, 0), 1), reply("c", upd(10, 0), 3)]
    equal = aggregate(Robust(FedAvg(weighted=False), "geometric_median", gm_iters=500), replies)
    np.testing.assert_allclose(equal.parameters["w"], [1.0, 0.0], atol=1e-6)
    # Weighted by capped counts: c holds 3 of 5 > half the weight, so it is the median …
    weighted = aggregate(Robust(FedAvg(max_weight=3), "geometric_median", gm_iters=500), replies)
    np.testing.assert_allclose(weighted.parameters["w"], [10.0, 0.0], atol=1e-6)
    assert by_node(weighted)["a"][0] == "downweighted"
    # … unless the cap is 1 example, and uncapped claims are not trusted at all
    for inner in (FedAvg(max_weight=1), FedAvg()):
        capped = aggregate(Robust(inner, "geometric_median", gm_iters=500), replies)
        np.testing.assert_allclose(capped.parameters["w"], [1.0, 0.0], atol=1e-6)


def test_geometric_median_of_a_square_is_its_centre_despite_an_outlier_on_the_diagonal() -> None:
    # By symmetry the median lies on the diagonal, and however far the outlier (weight
    # θ = 1/5) it stays within 2(1−θ)/(1−2θ)·max‖uᵢ − c‖ of the corners' centre c (compare
    # the objective at the median and at c with the triangle inequality).
    corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
    replies = [reply(f"c{i}", upd(*p)) for i, p in enumerate(corners)]
    replies.append(reply("out", upd(1e6, 1e6)))
    result = aggregate(Robust(FedAvg(), "geometric_median"), replies)
    w = result.parameters["w"]
    assert w[0] == pytest.approx(w[1], abs=1e-9)
    assert math.dist(w, (0.5, 0.5)) <= 8 / 3 * math.sqrt(0.5)
    assert by_node(result)["out"][0] == "downweighted"


def test_centered_clipping_hand_computed_streaming_and_iterated() -> None:
    replies = [reply("a", upd(0.5, 0)), reply("b", upd(0, 0.5)), reply("c", upd(10, 0))]
    strategy = Robust(FedAvg(weighted=False), "centered_clipping", cc_tau=1.0)
    assert not strategy.buffers
    first = aggregate(strategy, replies)
    # reference 0: a and b within τ, c clipped to (1, 0): ((0.5 + 0 + 1)/3, 0.5/3)
    v1 = np.array([0.5, 1 / 6])
    np.testing.assert_allclose(first.parameters["w"], v1)
    assert by_node(first)["c"][0] == "clipped"
    assert by_node(first)["a"][0] == "accepted"
    np.testing.assert_allclose(first.state["robust_cc_reference"]["reference"], v1)
    # The next round starts from the previous aggregate (kept in the state).
    second = aggregate(strategy, replies, state=first.state)
    diffs = [np.array(u) - v1 for u in ((0.5, 0), (0, 0.5), (10, 0))]
    step = sum(d * min(1.0, 1.0 / np.linalg.norm(d)) for d in diffs) / 3
    np.testing.assert_allclose(second.parameters["w"], v1 + step)
    # Two iterations in one round (buffered): the same formula applied twice from 0.
    twice = aggregate(
        Robust(FedAvg(weighted=False), "centered_clipping", cc_tau=1.0, cc_iters=2), replies
    )
    np.testing.assert_allclose(twice.parameters["w"], v1 + step)


def test_norm_bound_clips_each_update_and_sends_the_bound() -> None:
    strategy = Robust(FedAvg(weighted=False), "norm_bound", norm_bound=1.0)
    replies = [reply("a", upd(0.6, 0)), reply("b", upd(0, 30))]
    result = aggregate(strategy, replies)
    np.testing.assert_allclose(result.parameters["w"], [0.3, 0.5])  # (0.6, 0) and (0, 1)
    decisions = {d.node_id: d for d in result.decisions}
    assert decisions["b"].action == "clipped"
    assert "update norm 30 > bound 1" in decisions["b"].reason
    assert decisions["a"].action == "accepted"
    nodes = [NodeInfo(node_id=f"n{i}", num_examples=5) for i in range(3)]
    plans = strategy.configure_train(1, X, strategy.init_state(X), nodes, np.random.default_rng(0))
    assert all(p.config[MAX_UPDATE_NORM] == 1.0 for p in plans)
    assert MAX_UPDATE_NORM not in strategy.train_config  # the handed config is not written


def test_norm_bound_combines_with_any_rule() -> None:
    replies = [reply(n, upd(v, 0)) for n, v in (("a", 0.2), ("b", 0.4), ("c", -90))]
    result = aggregate(Robust(FedAvg(), "median", norm_bound=0.5), replies)
    np.testing.assert_allclose(result.parameters["w"], [0.2, 0.0])  # median(0.2, 0.4, -0.5)
    assert by_node(result)["c"][0] == "clipped"


def test_weight_inflation_is_capped_at_max_weight() -> None:
    replies = [
        reply("liar", upd(1000, 0), 10**15),
        reply("h1", upd(0, 0), 100),
        reply("h2", upd(0, 0), 100),
    ]
    # A 10**15 claim weighs max_weight = 100: 1000 · 100/300.
    capped = aggregate(Robust(FedAvg(max_weight=100), "mean"), replies)
    np.testing.assert_allclose(capped.parameters["w"], [1000 / 3, 0.0])
    assert by_node(capped)["liar"][1] == pytest.approx(1 / 3)
    # Without max_weight the claims do not weigh at all: every site counts once.
    uncapped = aggregate(Robust(FedAvg(), "mean"), replies)
    np.testing.assert_allclose(uncapped.parameters["w"], [1000 / 3, 0.0])
    # Order statistics ignore weights altogether.
    median = aggregate(Robust(FedAvg(), "median"), replies)
    np.testing.assert_array_equal(median.parameters["w"], [0.0, 0.0])


def test_evaluation_claims_are_combined_robustly() -> None:
    def ev(node: str, n: int, c: float) -> Reply:
        return Reply(
            run_id="r",
            round=1,
            node_id=node,
            kind=MessageKind.EVALUATE,
            num_examples=n,
            metrics={"c_index": c},
        )

    replies = [ev("liar", 10**15, 0.99996), ev("a", 50, 0.6), ev("b", 60, 0.7), ev("c", 70, 0.65)]
    assert FedAvg().aggregate_evaluate(1, replies)["c_index"] == pytest.approx(0.99996)
    median = Robust(FedAvg(), "median").aggregate_evaluate(1, replies)["c_index"]
    assert median == pytest.approx((0.65 + 0.7) / 2)
    trimmed = Robust(FedAvg(), "trimmed_mean", f=1).aggregate_evaluate(1, replies)["c_index"]
    assert trimmed == pytest.approx((0.65 + 0.7) / 2)
    capped = Robust(FedAvg(max_weight=60), "mean").aggregate_evaluate(1, replies)["c_index"]
    assert capped == pytest.approx((60 * 0.99996 + 50 * 0.6 + 60 * 0.7 + 60 * 0.65) / 230)


def test_training_metrics_are_combined_robustly_too() -> None:
    replies = [reply(n, upd(0, 0), loss=v) for n, v in (("a", 1.0), ("b", 2.0), ("c", 1e9))]
    result = aggregate(Robust(FedAvg(), "median"), replies)
    assert result.metrics["loss"] == 2.0
    assert result.metrics["robust.accepted"] == 3.0


# fltrust needs trusted data: tests/strategies/test_robust_trusted.py checks it refuses
@pytest.mark.parametrize("aggregator", [a for a in ROBUST_AGGREGATORS if a != "fltrust"])
def test_secure_mode_is_truthful(aggregator: str) -> None:
    kwargs: dict[str, object] = {"norm_bound": 1.0}
    if aggregator == "centered_clipping":
        kwargs["cc_tau"] = 1.0
    strategy = Robust(FedAvg(), aggregator, **kwargs)  # type: ignore[arg-type]
    secure = aggregator in ("mean", "norm_bound")
    assert strategy.supports_secure_aggregation is secure
    call = dict(total_weight=3, num_replies=3, num_nodes=3)
    mean = {"w": np.array([0.6, 0.8])}
    if not secure:
        with pytest.raises(ConfigurationError, match=f"robust aggregator '{aggregator}' needs"):
            strategy.aggregate_secure(1, X, strategy.init_state(X), mean, **call)  # type: ignore[arg-type]
        return
    result = strategy.aggregate_secure(1, X, {}, mean, **call)  # type: ignore[arg-type]
    np.testing.assert_allclose(result.parameters["w"], [0.6, 0.8])
    assert result.decisions[0].node_id == "secure-aggregate"
    assert result.decisions[0].action == "accepted"
    # A released mean above the bound proves a site did not clip: the round keeps x,
    # with a rejected decision on the secure aggregate (tests/strategies/test_robust_fixes.py).
    kept = strategy.aggregate_secure(1, X, {}, {"w": np.array([0.9, 1.2])}, **call)  # type: ignore[arg-type]
    assert kept.parameters is X
    assert kept.decisions[0].action == "rejected"
    assert "norm 1.5 > the bound 1" in kept.decisions[0].reason
    assert "some site did not clip" in kept.decisions[0].reason


def test_refuses_what_it_cannot_wrap_and_bad_settings() -> None:
    with pytest.raises(ConfigurationError, match="Scaffold aggregates in its own way"):
        Robust(Scaffold(), "median")
    dp = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=0.0)
    with pytest.raises(ConfigurationError, match="DPFedAvg aggregates in its own way"):
        Robust(dp, "median")
    with pytest.raises(ConfigurationError, match="Robust aggregates in its own way"):
        Robust(Robust(FedAvg(), "median"), "krum")
    with pytest.raises(ConfigurationError, match="aggregator must be one of"):
        Robust(FedAvg(), "bulyan")
    with pytest.raises(ConfigurationError, match="needs cc_tau"):
        Robust(FedAvg(), "centered_clipping")
    with pytest.raises(ConfigurationError, match="'norm_bound' needs norm_bound"):
        Robust(FedAvg(), "norm_bound")
    with pytest.raises(ConfigurationError, match="'fltrust' needs trusted data"):
        Robust(FedAvg(), "fltrust")
    with pytest.raises(ConfigurationError, match="trim must be"):
        Robust(FedAvg(), "trimmed_mean", trim=0.5)
    with pytest.raises(ConfigurationError, match="validation must provide judge"):
        Robust(FedAvg(), "median", validation=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="norm_bound must be"):
        Robust(FedAvg(), "median", norm_bound=-1.0)
    # DPFedAvg still refuses what it refused (the shared check keeps its wording)
    with pytest.raises(ConfigurationError, match="cannot be privatised here"):
        DPFedAvg(Robust(FedAvg(), "median"), clip_norm=1.0, noise_multiplier=0.0)


def test_trimmed_mean_refuses_too_few_updates() -> None:
    replies = [reply("a", upd(1, 1)), reply("b", upd(2, 2))]
    with pytest.raises(RoundFailed, match="needs more than 2 updates; the round plans 2"):
        aggregate(Robust(FedAvg(), "trimmed_mean", f=1), replies)
    with pytest.raises(RoundFailed, match="needs more than 2 updates, 2 arrived"):
        aggregate(Robust(FedAvg(), "trimmed_mean", f=1), replies, planned=3)


def test_buffer_memory_is_bounded_before_any_site_trains() -> None:
    big = ParameterSet({"w": np.zeros(1000, dtype=np.float32)})
    strategy = Robust(FedAvg(), "median", max_updates_bytes=5 * 1000 * 8 - 1)
    with pytest.raises(RoundFailed, match=r"5 updates × 1000 parameters × 8 bytes"):
        strategy.begin_train_aggregation(1, big, {}, 5)
    strategy.begin_train_aggregation(1, big, {}, 4)  # fits
    # Streaming rules hold one accumulator whatever n is.
    Robust(FedAvg(), "norm_bound", norm_bound=1.0, max_updates_bytes=1).begin_train_aggregation(
        1, big, {}, 10**6
    )
    # More replies than planned grow the buffer only within the bound.
    tight = Robust(FedAvg(), "median", max_updates_bytes=3 * 2 * 8)
    agg = tight.begin_train_aggregation(1, X, {}, 1)
    agg.add(reply("a", upd(1, 1)))
    agg.add(reply("b", upd(2, 2)))
    with pytest.raises(RoundFailed, match="exceeds max_updates_bytes"):
        agg.add(reply("c", upd(3, 3)))


def test_no_reply_and_bad_replies() -> None:
    strategy = Robust(FedAvg(), "median")
    with pytest.raises(RoundFailed, match="no training reply"):
        strategy.begin_train_aggregation(1, X, {}, 3).finish()
    agg = strategy.begin_train_aggregation(1, X, {}, 3)
    wrong = ParameterSet({"w": np.zeros(3, dtype=np.float64)})
    with pytest.raises(ParameterMismatch, match="shape"):
        agg.add(reply("a", wrong))
    with pytest.raises(ParameterMismatch, match="no training examples"):
        agg.add(reply("a", upd(1, 1), 0))
    assert agg.count == 0


@pytest.mark.parametrize("aggregator", [a for a in ROBUST_AGGREGATORS if a != "fltrust"])
@pytest.mark.parametrize("inner", [FedAvg(), FedProx(proximal_mu=0.1), FedAdam()])
def test_check_strategy_passes(aggregator: str, inner: Strategy) -> None:
    kwargs: dict[str, object] = {}
    if aggregator == "centered_clipping":
        kwargs["cc_tau"] = 0.5
    if aggregator == "norm_bound":
        kwargs["norm_bound"] = 0.3
    strategy = Robust(inner, aggregator, **kwargs)  # type: ignore[arg-type]
    check_strategy(strategy)
    check_strategy(strategy, num_nodes=7)
    described = strategy.describe()
    assert described["robust.aggregator"] == aggregator
    assert str(described["strategy"]).startswith("robust-")


def test_model_dtypes_survive_and_the_aggregate_is_float32_like_the_model() -> None:
    x = ParameterSet({"w": np.zeros(3, dtype=np.float32), "steps": np.array([4], dtype=np.int64)})
    replies = [
        reply(n, ParameterSet({"w": np.full(3, v, dtype=np.float32), "steps": np.array([s])}))
        for n, v, s in (("a", 1.0, 5), ("b", 2.0, 6), ("c", 90.0, 100))
    ]
    result = aggregate(Robust(FedAvg(), "median"), replies, x=x)
    assert result.parameters.spec == x.spec
    np.testing.assert_array_equal(result.parameters["w"], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(result.parameters["steps"], [6])
