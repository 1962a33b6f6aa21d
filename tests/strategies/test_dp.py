"""DPFedAvg: clipping, equal-weight mean, noise calibration, distributed shares, adaptive C."""

from __future__ import annotations

import math

import numpy as np
import pytest

from biofed.core import ConfigurationError, MessageKind, NodeInfo, ParameterSet, Reply
from biofed.privacy import AdaptiveClipping, clip_l2, l2_norm
from biofed.strategies import FedAdam, FedAvg, FedProx, Scaffold, Strategy
from biofed.strategies._base import AggregateResult, StrategyState
from biofed.strategies._dp import DP_CLIP_STATE, DPFedAvg
from biofed.testing import check_strategy


def ps(**arrays: object) -> ParameterSet:
    return ParameterSet({k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})


def reply(node: str, params: ParameterSet, n: int = 10) -> Reply:
    return Reply(
        run_id="r",
        round=1,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=params,
        num_examples=n,
        metrics={"loss": 1.0},
    )


def aggregate(
    strategy: Strategy,
    x: ParameterSet,
    replies: list[Reply],
    state: StrategyState | None = None,
    num_nodes: int | None = None,
    server_round: int = 1,
) -> AggregateResult:
    state = strategy.init_state(x) if state is None else state
    agg = strategy.begin_train_aggregation(server_round, x, state, num_nodes or len(replies))
    for r in replies:
        agg.add(r)
    assert agg.count == len(replies)
    return agg.finish()


def nodes(k: int) -> list[NodeInfo]:
    return [NodeInfo(node_id=f"n{i}", num_examples=10) for i in range(k)]


X = ps(w=[1.0, 2.0, 3.0], b=[0.0])


def test_every_folded_delta_is_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    from biofed.strategies import _dp

    folded: list[float] = []
    real_clip = clip_l2

    def spy(params: ParameterSet, bound: float) -> tuple[ParameterSet, float]:
        out, norm = real_clip(params, bound)
        folded.append(l2_norm(out))
        return out, norm

    monkeypatch.setattr(_dp, "clip_l2", spy)
    rng = np.random.default_rng(1)
    replies = [
        reply(f"s{i}", ps(w=X["w"] + rng.normal(0, s, 3), b=X["b"] + rng.normal(0, s, 1)))
        for i, s in enumerate([0.01, 0.5, 3.0, 30.0])
    ]
    result = aggregate(DPFedAvg(FedAvg(), clip_norm=0.7, noise_multiplier=0.0), X, replies)
    assert len(folded) == 4
    assert all(v <= 0.7 for v in folded)
    assert l2_norm(ps(**{k: result.parameters[k] - X[k] for k in X})) <= 0.7 + 1e-12
    norms = [l2_norm(ps(**{k: r.parameters[k] - X[k] for k in X})) for r in replies]  # type: ignore[index]
    assert result.metrics["dp.clipped_fraction"] == sum(v > 0.7 for v in norms) / 4


def test_noiseless_result_is_unweighted_mean_of_clipped_deltas() -> None:
    # Deltas: (3, 4 | 0) has norm 5 -> clipped to 1 gives (0.6, 0.8 | 0); (0, 0.5 | 0) unclipped.
    x = ps(w=[1.0, 1.0], b=[2.0])
    a = reply("a", ps(w=[4.0, 5.0], b=[2.0]), n=1000)
    b = reply("b", ps(w=[1.0, 1.5], b=[2.0]), n=1)
    # Example weights are ignored even though the inner FedAvg is weighted.
    result = aggregate(
        DPFedAvg(FedAvg(weighted=True), clip_norm=1.0, noise_multiplier=0), x, [a, b]
    )
    np.testing.assert_allclose(result.parameters["w"], [1.0 + 0.3, 1.0 + 0.65])
    np.testing.assert_allclose(result.parameters["b"], [2.0])
    assert result.num_replies == 2
    assert result.metrics["dp.noise_std"] == 0.0
    assert result.metrics["dp.replies"] == 2.0
    assert result.metrics["dp.clipped_fraction"] == 0.5
    assert "loss" not in result.metrics  # site metrics are not covered by the guarantee


def test_seeded_central_noise_has_std_sigma_c_in_the_sum() -> None:
    size, n, sigma, clip = 20_000, 4, 1.5, 0.8
    x = ParameterSet({"w": np.zeros(size)})
    rng = np.random.default_rng(3)
    replies = [reply(f"s{i}", ParameterSet({"w": rng.normal(0, 0.01, size)})) for i in range(n)]
    base = aggregate(DPFedAvg(FedAvg(), clip_norm=clip, noise_multiplier=0), x, replies)
    noisy_strategy = DPFedAvg(
        FedAvg(),
        clip_norm=clip,
        noise_multiplier=sigma,
        rng_factory=lambda r: np.random.default_rng(100 + r),
    )
    noisy = aggregate(noisy_strategy, x, replies)
    noise_in_sum = (noisy.parameters["w"] - base.parameters["w"]) * n
    # The sample std of `size` normals has relative standard error ≈ 1/√(2·size) (0.5%).
    tolerance = 5 / math.sqrt(2 * size)
    assert np.std(noise_in_sum) == pytest.approx(sigma * clip, rel=tolerance)
    assert abs(np.mean(noise_in_sum)) < 5 * sigma * clip / math.sqrt(size)
    assert noisy.metrics["dp.noise_std"] == pytest.approx(sigma * clip)
    # Same seed, same round: reproducible; the default is the CSPRNG.
    again = aggregate(noisy_strategy, x, replies)
    np.testing.assert_array_equal(again.parameters["w"], noisy.parameters["w"])
    assert DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1).describe()["dp.secure_noise"]


def test_distributed_shares_sum_to_sigma_c_and_accounting_follows_replies() -> None:
    sigma, clip, k = 1.2, 0.5, 8
    strategy = DPFedAvg(FedAvg(), clip_norm=clip, noise_multiplier=sigma, noise="distributed")
    state = strategy.init_state(X)
    plans = strategy.configure_train(1, X, state, nodes(k), np.random.default_rng(0))
    assert len(plans) == k
    shares = {p.config["dp.noise_std_share"] for p in plans}
    assert len(shares) == 1
    share = float(shares.pop())
    assert share * math.sqrt(k) == pytest.approx(sigma * clip)
    assert all(p.config["dp.clip_norm"] == clip for p in plans)

    full = [reply(f"n{i}", ps(w=X["w"] + 0.01 * i, b=X["b"])) for i in range(k)]
    all_in = aggregate(strategy, X, full, state, num_nodes=k)
    assert all_in.metrics["dp.noise_std"] == pytest.approx(sigma * clip)
    half = aggregate(strategy, X, full[: k // 2], state, num_nodes=k)
    assert half.metrics["dp.noise_std"] == pytest.approx(sigma * clip * math.sqrt(0.5))
    assert half.metrics["dp.replies"] == k // 2
    # The coordinator adds no noise of its own in distributed mode: result = mean of deltas.
    np.testing.assert_allclose(all_in.parameters["w"], X["w"] + 0.01 * (k - 1) / 2)


def test_configure_train_does_not_write_into_inner_config() -> None:
    inner = FedProx(proximal_mu=0.1, train_config={"epochs": 1})
    strategy = DPFedAvg(inner, clip_norm=1.0, noise_multiplier=0.5)
    plans = strategy.configure_train(
        1, X, strategy.init_state(X), nodes(3), np.random.default_rng()
    )
    assert plans[0].config["proximal_mu"] == 0.1
    assert plans[0].config["dp.clip_norm"] == 1.0
    assert "dp.noise_std_share" not in plans[0].config  # central noise: nothing at the sites
    assert dict(inner.train_config) == {"epochs": 1}


def test_wrapping_fedadam_goes_through_its_server_step() -> None:
    inner = FedAdam(server_learning_rate=0.1, tau=1e-3)
    strategy = DPFedAvg(inner, clip_norm=10.0, noise_multiplier=0.0)
    state = strategy.init_state(X)
    assert set(state) == set(inner.init_state(X))
    replies = [reply("a", ps(w=X["w"] + 1.0, b=X["b"] + 1.0))]
    result = aggregate(strategy, X, replies, state)
    expected = aggregate(inner, X, replies)  # one reply: the DP mean equals FedAdam's mean
    for key in X:
        np.testing.assert_allclose(result.parameters[key], expected.parameters[key])
        for name in state:
            assert not np.allclose(result.state[name][key], state[name][key])  # moments moved
    # FedAdam's step is η·m/(√v+τ) = 0.1·0.1/(√0.001+τ), not x + Δ.
    assert not np.allclose(result.parameters["w"], X["w"] + 1.0)


def test_adaptive_clipping_moves_clip_norm_toward_target_quantile() -> None:
    adaptive = AdaptiveClipping(
        initial_norm=0.1, target_quantile=0.5, learning_rate=0.5, count_noise_std=0.0
    )
    strategy = DPFedAvg(
        FedAvg(),
        clip_norm=0.1,
        noise_multiplier=0.0,
        adaptive=adaptive,
        rng_factory=lambda r: np.random.default_rng(r),
    )
    x = ParameterSet({"w": np.zeros(2)})
    # Update norms 1..10: the median (target quantile 0.5) is about 5.5.
    replies = [reply(f"s{i}", ParameterSet({"w": np.array([float(i), 0.0])})) for i in range(1, 11)]
    state = strategy.init_state(x)
    assert strategy.current_clip_norm(state) == pytest.approx(0.1)
    seen = []
    for rnd in range(1, 41):
        result = aggregate(strategy, x, replies, state, server_round=rnd)
        assert result.metrics["dp.clip_norm"] == pytest.approx(strategy.current_clip_norm(state))
        state = result.state
        seen.append(strategy.current_clip_norm(state))
    assert seen[0] > 0.1  # everything clipped at first: C grows
    assert 4.0 <= seen[-1] <= 7.0
    assert state[DP_CLIP_STATE]["rounds"][0] == 40.0
    # The next round's config carries the adapted C (state is what checkpoints resume).
    plans = strategy.configure_train(41, x, state, nodes(10), np.random.default_rng(0))
    assert plans[0].config["dp.clip_norm"] == pytest.approx(seen[-1])


def test_adaptive_clipping_spends_part_of_sigma_on_the_count() -> None:
    adaptive = AdaptiveClipping(
        initial_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=5.0
    )
    strategy = DPFedAvg(FedAvg(), clip_norm=1.0, noise_multiplier=1.0, adaptive=adaptive)
    assert strategy.update_noise_multiplier == pytest.approx(1 / math.sqrt(1 - 5.0**-2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_norm": 1.0, "noise_multiplier": -1.0}, "noise_multiplier must be ≥ 0, got -1.0"),
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm must be a finite number > 0"),
        ({"clip_norm": math.inf, "noise_multiplier": 1.0}, "clip_norm must be a finite"),
        ({"clip_norm": 1.0, "noise_multiplier": math.nan}, "noise_multiplier must be ≥ 0"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "noise": "local"}, "'central' or"),
        (
            {
                "clip_norm": 2.0,
                "noise_multiplier": 1.0,
                "adaptive": AdaptiveClipping(
                    initial_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=5
                ),
            },
            "differs from adaptive.norm",
        ),
        (
            {
                "clip_norm": 1.0,
                "noise_multiplier": 1.0,
                "noise": "distributed",
                "adaptive": AdaptiveClipping(
                    initial_norm=1.0, target_quantile=0.5, learning_rate=0.2, count_noise_std=5
                ),
            },
            "use noise='central' with adaptive",
        ),
    ],
)
def test_configuration_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        DPFedAvg(FedAvg(), **kwargs)  # type: ignore[arg-type]


def test_refuses_strategies_with_their_own_aggregation() -> None:
    with pytest.raises(ConfigurationError, match="Scaffold aggregates in its own way"):
        DPFedAvg(Scaffold(), clip_norm=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="DPFedAvg aggregates in its own way"):
        DPFedAvg(
            DPFedAvg(FedAvg(), clip_norm=1, noise_multiplier=1), clip_norm=1, noise_multiplier=1
        )


@pytest.mark.parametrize(
    "strategy",
    [
        DPFedAvg(FedAvg(), clip_norm=0.5, noise_multiplier=0.0),
        DPFedAvg(FedAvg(), clip_norm=0.5, noise_multiplier=1.0, rng_factory=np.random.default_rng),
        DPFedAvg(FedAdam(), clip_norm=0.5, noise_multiplier=0.0, noise="distributed"),
        DPFedAvg(
            FedAvg(fraction_train=0.5),
            clip_norm=0.5,
            noise_multiplier=1.0,
            adaptive=AdaptiveClipping(
                initial_norm=0.5, target_quantile=0.5, learning_rate=0.2, count_noise_std=2.0
            ),
            rng_factory=np.random.default_rng,
        ),
    ],
    ids=["noiseless", "seeded-central", "fedadam-distributed", "adaptive"],
)
def test_check_strategy(strategy: DPFedAvg) -> None:
    check_strategy(strategy)


def test_secure_aggregate_matches_the_fold_and_accounts_actual_survivors() -> None:
    """Under secure aggregation the coordinator sees only the mean of the (site-clipped,
    site-noised) updates: the result and the dp.* accounting equal the per-reply fold."""
    sigma, clip, k = 1.2, 0.5, 8
    strategy = DPFedAvg(FedAvg(), clip_norm=clip, noise_multiplier=sigma, noise="distributed")
    state = strategy.init_state(X)
    half = [reply(f"n{i}", ps(w=X["w"] + 0.01 * i, b=X["b"])) for i in range(k // 2)]
    folded = aggregate(strategy, X, half, state, num_nodes=k)
    mean = {
        name: np.mean([r.parameters[name] - X[name] for r in half if r.parameters], axis=0)
        for name in X
    }
    secure = strategy.aggregate_secure(
        1, X, state, mean, total_weight=k // 2, num_replies=k // 2, num_nodes=k
    )
    np.testing.assert_allclose(secure.parameters["w"], folded.parameters["w"])
    assert secure.metrics["dp.noise_std"] == pytest.approx(folded.metrics["dp.noise_std"])
    assert secure.metrics["dp.replies"] == k // 2
    with pytest.raises(ConfigurationError, match="equal weights"):
        strategy.aggregate_secure(1, X, state, mean, total_weight=40, num_replies=4, num_nodes=k)
