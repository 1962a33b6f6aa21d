"""Review fixes to Robust (issue 15): the trimmed mean's trim rounds up, example counts
weigh only when ``max_weight`` bounds them (training, metrics, evaluation, SecAgg+
weighting), and the secure bounded-range check is an audited ``rejected`` decision with
room for the quantisation error. Each test failed before its fix."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.attacks import (
    INFLATED_EXAMPLES,
    Attack,
    Chain,
    LyingEvaluation,
    WeightInflation,
    choose_malicious,
    run_attack,
)
from biofed.coordinator import JobSpec
from biofed.core import MessageKind, ParameterSet, Reply, RoundFailed
from biofed.datasets import load_tcga_brca
from biofed.secagg import SecAggConfig
from biofed.strategies import AggregateResult, FedAvg, Robust, Strategy

X = ParameterSet({"w": np.zeros(2, dtype=np.float64)})


def upd(*values: float) -> ParameterSet:
    return ParameterSet({"w": np.asarray(values, dtype=np.float64)})


def reply(
    node: str,
    params: ParameterSet | None,
    n: int,
    kind: MessageKind = MessageKind.TRAIN,
    **m: float,
) -> Reply:
    return Reply(
        run_id="r",
        round=1,
        node_id=node,
        kind=kind,
        parameters=params,
        num_examples=n,
        metrics=m,
    )


def aggregate(
    strategy: Strategy, replies: list[Reply], planned: int | None = None
) -> AggregateResult:
    agg = strategy.begin_train_aggregation(
        1, X, strategy.init_state(X), len(replies) if planned is None else planned
    )
    for r in replies:
        agg.add(r)
    return agg.finish()


# -- 1. trimmed mean: ⌈trim·n⌉ per side ----------------------------------------------------


def test_trim_count_rounds_up_and_is_exact_on_round_products() -> None:
    from biofed.strategies._robust_kernels import trim_count

    assert [trim_count(0.1, n) for n in (1, 6, 10, 11, 30)] == [1, 1, 1, 2, 3]
    assert trim_count(0.2, 5) == 1
    assert trim_count(0.25, 8) == 2
    assert trim_count(0.0, 6) == 0


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=0.001, max_value=0.499), st.integers(min_value=1, max_value=200))
def test_trim_count_is_the_ceiling(trim: float, n: int) -> None:
    from biofed.strategies._robust_kernels import trim_count

    k = trim_count(trim, n)
    assert k >= 1
    assert k - 1 < trim * n + 1e-9  # no more than one past trim·n
    assert k >= trim * n - 1e-9


def test_default_trim_drops_one_per_side_with_six_sites() -> None:
    """⌊0.1·6⌋ = 0 gave the plain mean (the liar's 600 moved it by 100); ⌈0.1·6⌉ = 1."""
    values = [600.0, 1.0, 2.0, 3.0, 4.0, -7.0]
    replies = [reply(f"s{i}", upd(v, v), 10) for i, v in enumerate(values)]
    result = aggregate(Robust(FedAvg(), "trimmed_mean"), replies)
    np.testing.assert_allclose(result.parameters["w"], [2.5, 2.5])  # mean(1, 2, 3, 4)
    reasons = {d.node_id: d.reason for d in result.decisions}
    assert "1 per side dropped" in reasons["s0"]


def test_default_trim_refuses_a_plan_of_two_before_any_site_trains() -> None:
    strategy = Robust(FedAvg(), "trimmed_mean")
    with pytest.raises(RoundFailed, match=r"⌈trim·n⌉ = 1 updates per side.*plans 2"):
        strategy.begin_train_aggregation(1, X, strategy.init_state(X), 2)
    assert (
        Robust(FedAvg(), "trimmed_mean", trim=0.0).begin_train_aggregation(1, X, {}, 2).count == 0
    )  # trim 0 drops nothing and plans anything


def test_trimmed_evaluation_metric_drops_one_per_side_with_six_sites() -> None:
    replies = [
        reply(n, None, 10, MessageKind.EVALUATE, c_index=c)
        for n, c in (("liar", 1.0), ("a", 0.6), ("b", 0.7), ("c", 0.65), ("d", 0.62), ("e", 0.1))
    ]
    got = Robust(FedAvg(), "trimmed_mean").aggregate_evaluate(1, replies)["c_index"]
    assert got == pytest.approx((0.6 + 0.7 + 0.65 + 0.62) / 4)


# -- 2. example counts weigh only under max_weight -------------------------------------------

LIAR = 10**15
ROUNDS = 5


def inflated() -> list[Reply]:
    return [
        reply("liar", upd(900, 0), LIAR, loss=100.0),
        reply("h1", upd(0, 0), 100, loss=1.0),
        reply("h2", upd(0, 0), 200, loss=1.0),
    ]


@pytest.mark.parametrize("rule", ["mean", "norm_bound"])
def test_without_max_weight_every_site_counts_once_in_training(rule: str) -> None:
    strategy = Robust(FedAvg(), rule, norm_bound=1e4)  # type: ignore[arg-type]
    assert strategy.weighted is False
    result = aggregate(strategy, inflated())
    np.testing.assert_allclose(result.parameters["w"], [300.0, 0.0])  # 900 / 3, not ~900
    assert {d.node_id: d.weight for d in result.decisions} == pytest.approx(
        {"liar": 1 / 3, "h1": 1 / 3, "h2": 1 / 3}
    )
    assert result.metrics["loss"] == pytest.approx(34.0)  # (100 + 1 + 1) / 3
    assert strategy.describe()["robust.weights"] == "equal"


@pytest.mark.parametrize("rule", ["mean", "norm_bound"])
def test_with_max_weight_capped_counts_weigh(rule: str) -> None:
    strategy = Robust(FedAvg(max_weight=200), rule, norm_bound=1e4)  # type: ignore[arg-type]
    assert strategy.weighted is True
    result = aggregate(strategy, inflated())
    np.testing.assert_allclose(result.parameters["w"], [900 * 200 / 500, 0.0])
    assert result.metrics["loss"] == pytest.approx((200 * 100 + 100 + 200) / 500)
    assert strategy.describe()["robust.weights"] == "examples"
    # an unweighted inner strategy stays unweighted, whatever the cap
    assert Robust(FedAvg(weighted=False, max_weight=200), rule, norm_bound=1.0).weighted is False  # type: ignore[arg-type]


def test_without_max_weight_geometric_median_and_clipping_count_sites_once() -> None:
    for strategy in (
        Robust(FedAvg(), "geometric_median"),
        Robust(FedAvg(), "centered_clipping", cc_tau=1.0),
        Robust(FedAvg(), "median"),
    ):
        assert strategy.weighted is False
        assert strategy.example_weights is False


@pytest.mark.parametrize("rule", ["mean", "norm_bound"])
def test_evaluation_claims_count_once_without_max_weight(rule: str) -> None:
    replies = [
        reply(n, None, c, MessageKind.EVALUATE, c_index=v)
        for n, c, v in (("liar", LIAR, 1.0), ("a", 50, 0.6), ("b", 60, 0.7), ("c", 70, 0.65))
    ]
    plain = Robust(FedAvg(), rule, norm_bound=1.0).aggregate_evaluate(1, replies)  # type: ignore[arg-type]
    assert plain["c_index"] == pytest.approx((1.0 + 0.6 + 0.7 + 0.65) / 4)
    capped = Robust(FedAvg(max_weight=60), rule, norm_bound=1.0).aggregate_evaluate(1, replies)  # type: ignore[arg-type]
    assert capped["c_index"] == pytest.approx((60 * 1.0 + 50 * 0.6 + 60 * 0.7 + 60 * 0.65) / 230)


def test_norm_bound_without_max_weight_survives_the_issues_liar_on_tcga() -> None:
    """The issue's liar (declares and claims 10¹⁵ examples, sends its parameters + 50 and
    reports C-index 0.99996 on 10¹⁵ records) against ``[robust] aggregator = "norm_bound"``,
    M = 0.2, no ``max_weight``. With the claimed counts as weights it owned the clipped
    mean and the reported C-index; counted once, it moves each round by at most M/6 and
    its evaluation claim is one of six."""
    fed = load_tcga_brca()
    tables = {
        "run": {"name": "nb", "dataset": "tcga-brca", "rounds": ROUNDS, "seed": 1,
                "min_nodes": 6, "min_replies": 2},
        "task": {"name": "cox_ph", "num_features": 39},
        "strategy": {"name": "fedavg"},
        "train": {"local_steps": 20, "batch_size": 8, "learning_rate": 0.01,
                  "optimizer": "adam"},
        "evaluate": {"split": "test"},
        "robust": {"aggregator": "norm_bound", "norm_bound": 0.2},
    }  # fmt: skip
    job = JobSpec.from_mapping(tables)
    liar = Attack(
        name="issue-liar",
        tamper=Chain(
            (
                WeightInflation(INFLATED_EXAMPLES, shift=50.0),
                LyingEvaluation(num_examples=INFLATED_EXAMPLES),
            )
        ),
        declared=INFLATED_EXAMPLES,
    )
    mal = choose_malicious(sorted(fed.sites), 1, seed=0)[0]
    clean = run_attack(fed, job, attacks={})
    attacked = run_attack(fed, job, attacks={mal: liar})
    print(
        f"norm_bound 0.2, no max_weight, {ROUNDS} rounds: C-index no attack "
        f"{clean.clean_metric:.3f} (reported {clean.reported_metric:.3f}); {mal} lying "
        f"{attacked.clean_metric:.3f} (reported {attacked.reported_metric:.3f})"
    )
    assert attacked.clean_metric > clean.clean_metric - 0.05
    assert attacked.reported_metric < 0.9


# -- 3. the secure bounded-range check is a decision -----------------------------------------

CALL = {"total_weight": 3, "num_replies": 3, "num_nodes": 3}


def test_secure_check_failure_keeps_the_model_with_an_audited_rejection() -> None:
    strategy = Robust(FedAvg(), "norm_bound", norm_bound=1.0)
    state = strategy.init_state(X)
    result = strategy.aggregate_secure(1, X, state, {"w": np.array([0.9, 1.2])}, **CALL)
    assert result.parameters is X
    assert result.state == state
    assert result.metrics["robust.kept_model"] == 1.0
    assert result.metrics["robust.update_norm"] == pytest.approx(1.5)
    [decision] = result.decisions
    assert (decision.node_id, decision.action, decision.weight) == (
        "secure-aggregate",
        "rejected",
        0.0,
    )
    assert "mean update norm 1.5 > the bound 1" in decision.reason
    assert "keeps the current model" in decision.reason


class _Judge:
    calls = 0

    def judge(self, x, candidates, weights=None):  # type: ignore[no-untyped-def]
        raise AssertionError("not asked in secure mode")

    def judge_aggregate(self, x, aggregate):  # type: ignore[no-untyped-def]
        self.calls += 1
        raise AssertionError("a rejected aggregate is not validated")


def test_a_rejected_secure_mean_is_not_validated() -> None:
    judge = _Judge()
    strategy = Robust(FedAvg(), "norm_bound", norm_bound=1.0, validation=judge)
    result = strategy.aggregate_secure(1, X, {}, {"w": np.array([3.0, 4.0])}, **CALL)
    assert result.decisions[0].action == "rejected"
    assert judge.calls == 0


def test_secure_check_allows_for_the_quantisation_error() -> None:
    """d = 10⁴ values each off by up to e = 10⁻⁴: an honest mean of norm M can be released
    with norm up to M + √d·e = 1 + 0.01. Without ``secure_value_error`` the relative 10⁻³
    slack rejects it; with it the round keeps the mean, and a mean beyond the allowance is
    still rejected."""
    d, e = 10_000, 1e-4
    x = ParameterSet({"w": np.zeros(d)})
    honest = np.full(d, 1 / math.sqrt(d))  # norm 1 = M
    released = {"w": honest + e}  # the worst quantisation error: norm ≈ 1.01
    call = dict(CALL)
    bare = Robust(FedAvg(), "norm_bound", norm_bound=1.0)
    assert bare.aggregate_secure(1, x, {}, released, **call).decisions[0].action == "rejected"
    aware = Robust(FedAvg(), "norm_bound", norm_bound=1.0, secure_value_error=e)
    kept = aware.aggregate_secure(1, x, {}, released, **call)
    assert kept.decisions[0].action == "accepted"
    np.testing.assert_allclose(kept.parameters["w"], released["w"])
    beyond = {"w": honest * 1.02}
    assert aware.aggregate_secure(1, x, {}, beyond, **call).decisions[0].action == "rejected"


def test_a_secure_job_passes_secagg_error_bound_to_robust() -> None:
    tables = {
        "run": {"name": "s", "dataset": "tcga-brca", "min_nodes": 4, "min_replies": 2},
        "task": {"name": "cox_ph", "num_features": 39},
        "robust": {"aggregator": "norm_bound", "norm_bound": 0.5},
        "secure_aggregation": {"clip_range": 8.0, "quantisation_step": 1e-4},
    }
    strategy = JobSpec.from_mapping(tables).build_strategy()
    assert isinstance(strategy, Robust)
    plan = SecAggConfig(dimension=40, clip_range=8.0, quantisation_step=1e-4).plan(4)
    assert strategy.secure_value_error == plan.error_bound
    del tables["secure_aggregation"]
    plain = JobSpec.from_mapping(tables).build_strategy()
    assert isinstance(plain, Robust)
    assert plain.secure_value_error == 0.0
