"""FLTrust and the update-validation hook with real trusted data: the Wisconsin Diagnostic
Breast Cancer records (UCI, CC BY 4.0, as shipped by scikit-learn) and, for the strategy
contract's fixed 4-feature, 3-class model, Fisher's iris measurements."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_iris

from biofed.core import ConfigurationError, MessageKind, ParameterSet, Reply, RoundFailed
from biofed.data import Dataset, partition_iid, train_test_split
from biofed.strategies import (
    AggregateResult,
    FedAvg,
    Robust,
    Strategy,
    TrustedValidation,
    UpdateDecision,
    UpdateValidation,
)
from biofed.strategies._robust_kernels import fltrust
from biofed.tasks import LogisticRegressionTask, Task, TrainContext
from biofed.testing import check_strategy

TRAIN = {"local_steps": 30, "batch_size": 16, "learning_rate": 0.1, "optimizer": "sgd"}


class TaskTrusted:
    """Trusted data at the coordinator: a real task on a held-out split."""

    def __init__(self, task: Task, data: Dataset) -> None:
        self.task = task
        self.data = data

    @property
    def metric(self) -> str:
        return self.task.primary_metric

    def score(self, parameters: ParameterSet) -> float:
        result = self.task.evaluate(parameters, self.data, TrainContext())
        return float(result.metrics[self.metric])

    def train(self, parameters: ParameterSet, server_round: int) -> ParameterSet:
        ctx = TrainContext(config=TRAIN, rng=np.random.default_rng(server_round))
        return self.task.train(parameters, self.data, ctx).parameters


class ScoreJudge:
    """Update validation by score on trusted data: a candidate that scores more than
    ``max_drop`` below the current model is rejected (or, with ``factor``, downweighted)."""

    def __init__(self, trusted: TrustedValidation, max_drop: float, factor: float = 0.0) -> None:
        self.trusted = trusted
        self.max_drop = max_drop
        self.factor = factor

    def _decide(self, node: str, base: float, score: float) -> tuple[float, UpdateDecision]:
        ok = score >= base - self.max_drop
        factor = 1.0 if ok else self.factor
        action = "accepted" if ok else ("downweighted" if factor > 0 else "rejected")
        reason = f"{self.trusted.metric} {score:.3f} vs {base:.3f} − {self.max_drop}"
        return factor, UpdateDecision(
            node_id=node, action=action, weight=factor, reason=reason, score=score
        )

    def judge(
        self,
        x: ParameterSet,
        candidates: Sequence[tuple[str, ParameterSet]],
        weights: Sequence[float] | None = None,
    ) -> list[tuple[float, UpdateDecision]]:
        assert weights is not None
        assert len(weights) == len(candidates)
        base = self.trusted.score(x)
        return [self._decide(node, base, self.trusted.score(m)) for node, m in candidates]

    def judge_aggregate(
        self, x: ParameterSet, aggregate: ParameterSet
    ) -> tuple[bool, UpdateDecision]:
        factor, decision = self._decide(
            "secure-aggregate", self.trusted.score(x), self.trusted.score(aggregate)
        )
        return factor > 0, decision


@pytest.fixture(scope="module")
def wdbc() -> tuple[dict[str, Dataset], TaskTrusted, LogisticRegressionTask]:
    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(axis=0)) / features.std(axis=0)
    ds = Dataset(
        name="wdbc",
        features=features,
        feature_names=tuple(f"f{i}" for i in range(features.shape[1])),
        targets={"label": labels.astype(np.float64)},
    )
    rng = np.random.default_rng(7)
    split = train_test_split(ds, 0.2, rng, stratify_key="label")
    task = LogisticRegressionTask(num_features=30)
    return partition_iid(split.train, 6, rng), TaskTrusted(task, split.test), task


def site_replies(
    sites: dict[str, Dataset], task: Task, x: ParameterSet
) -> dict[str, tuple[Reply, np.ndarray]]:
    """Each site's real local training from ``x`` and its flat update."""
    out = {}
    for k, (site, data) in enumerate(sorted(sites.items())):
        trained = task.train(x, data, TrainContext(config=TRAIN, rng=np.random.default_rng(k)))
        update = np.concatenate([(trained.parameters[n] - x[n]).ravel() for n in x])
        out[site] = (reply(site, trained.parameters, len(data)), update.astype(np.float64))
    return out


def reply(node: str, params: ParameterSet, n: int) -> Reply:
    return Reply(
        run_id="t",
        round=1,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=params,
        num_examples=n,
    )


def model(x: ParameterSet, flat: np.ndarray) -> ParameterSet:
    out, start = {}, 0
    for name, a in x.items():
        out[name] = (a + flat[start : start + a.size].reshape(a.shape)).astype(a.dtype)
        start += a.size
    return ParameterSet(out)


def flat(params: ParameterSet, x: ParameterSet) -> np.ndarray:
    return np.concatenate([(params[n].astype(np.float64) - x[n]).ravel() for n in x])


def aggregate(strategy: Strategy, x: ParameterSet, replies: list[Reply]) -> AggregateResult:
    agg = strategy.begin_train_aggregation(1, x, strategy.init_state(x), len(replies))
    for r in replies:
        agg.add(r)
    return agg.finish()


def test_the_trusted_object_is_a_trusted_validation(wdbc) -> None:  # type: ignore[no-untyped-def]
    _, trusted, task = wdbc
    assert isinstance(trusted, TrustedValidation)
    x = task.init_parameters(np.random.default_rng(0))
    assert trusted.score(trusted.train(x, 1)) > 0.95  # AUC on held-out records


def test_fltrust_hand_computed_on_the_trusted_server_update(wdbc) -> None:  # type: ignore[no-untyped-def]
    _, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    g0 = flat(trusted.train(x, 1), x)  # what the strategy computes at the start of round 1
    r = np.random.default_rng(1).normal(size=g0.size)
    p = r - (r @ g0) / (g0 @ g0) * g0
    p *= np.linalg.norm(g0) / np.linalg.norm(p)  # ⟂ g0, same norm: cos(g0 + p, g0) = 1/√2
    replies = [
        reply("aligned", model(x, 3 * g0), 100),  # trust 1, rescaled to g0
        reply("flipped", model(x, -g0), 100),  # trust 0
        reply("oblique", model(x, g0 + p), 10**15),  # trust 1/√2, rescaled to (g0 + p)/√2
    ]
    strategy = Robust(FedAvg(), "fltrust", trusted=trusted)
    result = aggregate(strategy, x, replies)
    t = 1 / math.sqrt(2)
    expected = (g0 + t * (g0 + p) * t) / (1 + t)
    np.testing.assert_allclose(flat(result.parameters, x), expected, rtol=1e-4, atol=1e-6)
    decisions = {d.node_id: d for d in result.decisions}
    assert decisions["flipped"].action == "rejected"
    assert decisions["flipped"].weight == 0.0
    assert decisions["oblique"].action == "downweighted"
    assert decisions["oblique"].score == pytest.approx(t, rel=1e-5)
    assert decisions["aligned"].score == pytest.approx(1.0, rel=1e-5)
    assert decisions["oblique"].weight == pytest.approx(t / (1 + t), rel=1e-5)
    # the streamed fold equals the batch formula on all updates at once
    rows = np.vstack([flat(r.parameters, x) for r in replies])  # type: ignore[arg-type]
    batch, trust = fltrust(rows, g0)
    assert batch is not None
    np.testing.assert_allclose(flat(result.parameters, x), batch, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(trust, [1.0, 0.0, t], rtol=1e-5)


def test_fltrust_with_no_trusted_update_keeps_the_model_and_says_so(wdbc) -> None:  # type: ignore[no-untyped-def]
    _, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    g0 = flat(trusted.train(x, 1), x)
    replies = [reply("a", model(x, -g0), 10), reply("b", model(x, -2 * g0), 10), reply("c", x, 10)]
    result = aggregate(Robust(FedAvg(), "fltrust", trusted=trusted), x, replies)
    assert result.parameters == x
    assert result.metrics["robust.kept_model"] == 1.0
    assert all(d.action == "rejected" for d in result.decisions)
    assert all("keeps the current model" in d.reason for d in result.decisions)


def test_fltrust_refuses_secure_aggregation(wdbc) -> None:  # type: ignore[no-untyped-def]
    _, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    strategy = Robust(FedAvg(), "fltrust", trusted=trusted)
    assert not strategy.supports_secure_aggregation
    mean = {k: np.zeros_like(v) for k, v in x.items()}
    with pytest.raises(ConfigurationError, match="robust aggregator 'fltrust' needs each site"):
        strategy.aggregate_secure(1, x, {}, mean, total_weight=3, num_replies=3, num_nodes=3)


def test_validation_rejects_a_poisoned_update_and_the_rest_is_their_mean(wdbc) -> None:  # type: ignore[no-untyped-def]
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    honest = site_replies(sites, task, x)
    liar, (liar_reply, liar_update) = "site-0", honest["site-0"]
    poisoned = reply(liar, model(x, -10 * liar_update), liar_reply.num_examples)
    replies = [poisoned] + [r for s, (r, _) in honest.items() if s != liar]
    judge = ScoreJudge(trusted, max_drop=0.05)
    # max_weight above every site's size: the counts weigh (without it every site counts once)
    capped = FedAvg(max_weight=10**6)
    result = aggregate(Robust(capped, "mean", validation=judge), x, replies)
    decisions = {d.node_id: d for d in result.decisions}
    assert decisions[liar].action == "rejected"
    assert decisions[liar].score is not None
    assert decisions[liar].score < 0.5
    assert {decisions[s].action for s in honest if s != liar} == {"accepted"}
    # what survives is the example-weighted mean of the honest updates
    weights = np.array([len(sites[s]) for s in honest if s != liar], dtype=np.float64)
    updates = np.vstack([u for s, (_, u) in honest.items() if s != liar])
    np.testing.assert_allclose(
        flat(result.parameters, x), weights @ updates / weights.sum(), rtol=1e-5, atol=1e-7
    )
    assert trusted.score(result.parameters) > 0.95
    # Median after validation: the survivors' coordinate-wise median.
    median = aggregate(Robust(FedAvg(), "median", validation=judge), x, replies)
    np.testing.assert_allclose(
        flat(median.parameters, x), np.median(updates, axis=0), rtol=1e-5, atol=1e-7
    )


def test_validation_downweights_by_the_returned_factor(wdbc) -> None:  # type: ignore[no-untyped-def]
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    honest = site_replies(sites, task, x)
    liar_reply, liar_update = honest["site-0"]
    poisoned = reply("site-0", model(x, -10 * liar_update), liar_reply.num_examples)
    replies = [poisoned] + [r for s, (r, _) in honest.items() if s != "site-0"]
    judge = ScoreJudge(trusted, max_drop=0.05, factor=0.25)
    result = aggregate(Robust(FedAvg(max_weight=10**6), "mean", validation=judge), x, replies)
    assert {d.node_id: d.action for d in result.decisions}["site-0"] == "downweighted"
    w = np.array([r.num_examples for r in replies], dtype=np.float64)
    w[0] *= 0.25
    rows = np.vstack([flat(r.parameters, x) for r in replies])  # type: ignore[arg-type]
    np.testing.assert_allclose(flat(result.parameters, x), w @ rows / w.sum(), rtol=1e-5, atol=1e-7)


def test_validation_judges_the_secure_aggregate(wdbc) -> None:  # type: ignore[no-untyped-def]
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    updates = np.vstack([u for _, u in site_replies(sites, task, x).values()])
    bound = float(np.linalg.norm(updates, axis=1).max())
    strategy = Robust(
        FedAvg(), "norm_bound", norm_bound=bound, validation=ScoreJudge(trusted, 0.05)
    )
    assert strategy.supports_secure_aggregation

    def secure(mean: np.ndarray) -> AggregateResult:
        released = {k: v for k, v in model(x, mean).items()}
        delta = {k: released[k].astype(np.float64) - x[k] for k in x}
        return strategy.aggregate_secure(
            1, x, {}, delta, total_weight=6, num_replies=6, num_nodes=6
        )

    good = secure(updates.mean(axis=0))
    assert good.parameters != x
    assert [d.action for d in good.decisions] == ["accepted", "accepted"]
    # An in-range but poisoned mean (norm ≤ M) passes the bound check, not validation.
    bad = secure(-updates.mean(axis=0))
    assert bad.parameters == x
    assert bad.metrics["robust.kept_model"] == 1.0
    assert bad.decisions[-1].node_id == "secure-aggregate"
    assert bad.decisions[-1].action == "rejected"


def test_a_misbehaving_validation_fails_the_round(wdbc) -> None:  # type: ignore[no-untyped-def]
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    replies = [r for r, _ in site_replies(sites, task, x).values()]

    class TooGenerous(ScoreJudge):
        def judge(self, x, candidates, weights=None):  # type: ignore[no-untyped-def]
            return [(2.0, d) for _, d in super().judge(x, candidates, weights)]

    class Forgetful(ScoreJudge):
        def judge(self, x, candidates, weights=None):  # type: ignore[no-untyped-def]
            return super().judge(x, candidates, weights)[1:]

    for judge, message in (
        (TooGenerous(trusted, 0.05), "not in"),
        (Forgetful(trusted, 0.05), "judged 5"),
    ):
        with pytest.raises(RoundFailed, match=message):
            aggregate(Robust(FedAvg(), "median", validation=judge), x, replies)


class IrisSoftmaxTrusted:
    """Trusted data for the strategy contract's model (``layer.weight`` (3, 4),
    ``layer.bias`` (3,)): softmax regression on Fisher's iris measurements."""

    metric = "accuracy"

    def __init__(self) -> None:
        features, labels = load_iris(return_X_y=True)
        self.features = (features - features.mean(axis=0)) / features.std(axis=0)
        self.onehot = np.eye(3)[labels]

    def _probs(self, p: ParameterSet) -> np.ndarray:
        z = self.features @ p["layer.weight"].T.astype(np.float64) + p["layer.bias"]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]

    def score(self, parameters: ParameterSet) -> float:
        pred = self._probs(parameters).argmax(axis=1)
        return float(np.mean(pred == self.onehot.argmax(axis=1)))

    def train(self, parameters: ParameterSet, server_round: int) -> ParameterSet:
        w = parameters["layer.weight"].astype(np.float64)
        b = parameters["layer.bias"].astype(np.float64)
        for _ in range(10):
            current = ParameterSet({"layer.weight": w, "layer.bias": b})
            err = (self._probs(current) - self.onehot) / len(self.features)
            w = w - 0.5 * err.T @ self.features
            b = b - 0.5 * err.sum(axis=0)
        dtype = parameters["layer.weight"].dtype
        return ParameterSet({"layer.weight": w.astype(dtype), "layer.bias": b.astype(dtype)})


@pytest.mark.parametrize("aggregator", ["fltrust", "mean", "median", "krum"])
def test_check_strategy_passes_with_trusted_data(aggregator: str) -> None:
    trusted = IrisSoftmaxTrusted()
    kwargs: dict[str, object] = {"trusted": trusted} if aggregator == "fltrust" else {}
    if aggregator != "fltrust":
        kwargs["validation"] = ScoreJudge(trusted, max_drop=0.5)
    strategy = Robust(FedAvg(), aggregator, **kwargs)  # type: ignore[arg-type]
    check_strategy(strategy)
    check_strategy(strategy, num_nodes=6)


def test_candidates_are_the_clipped_models_in_arrival_order(wdbc) -> None:  # type: ignore[no-untyped-def]
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    replies = [r for r, _ in site_replies(sites, task, x).values()]
    seen: list[list[tuple[str, ParameterSet]]] = []

    class Recording(ScoreJudge):
        def judge(self, x, candidates, weights=None):  # type: ignore[no-untyped-def]
            seen.append([candidates[-1], *candidates[:2]])
            return super().judge(x, candidates, weights)

    bound = 0.01
    strategy = Robust(FedAvg(), "median", norm_bound=bound, validation=Recording(trusted, 1.0))
    aggregate(strategy, x, replies)
    last, first, second = seen[0]
    assert [first[0], second[0], last[0]] == [replies[0].node_id, replies[1].node_id, "site-5"]
    for _, candidate in (first, second, last):
        assert candidate.spec == x.spec
        assert np.linalg.norm(flat(candidate, x)) <= bound * (1 + 1e-5)


@pytest.mark.parametrize("aggregator", ["mean", "median", "krum"])
def test_robust_with_update_validation_rejects_the_poisoned_site(  # type: ignore[no-untyped-def]
    wdbc, aggregator: str
) -> None:
    sites, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    honest = site_replies(sites, task, x)
    liar_reply, liar_update = honest["site-0"]
    poisoned = reply("site-0", model(x, -10 * liar_update), liar_reply.num_examples)
    replies = [poisoned] + [r for s, (r, _) in honest.items() if s != "site-0"]
    strategy = Robust(FedAvg(), aggregator, validation=UpdateValidation(trusted))
    result = aggregate(strategy, x, replies)
    actions = {d.node_id: d.action for d in result.decisions}
    assert actions["site-0"] == "rejected"
    if aggregator != "krum":  # Krum keeps one update and rejects the rest by design
        assert {actions[s] for s in honest if s != "site-0"} == {"accepted"}
    assert trusted.score(result.parameters) > 0.95


def test_fltrust_fails_the_round_cleanly_when_the_trusted_data_cannot_train(wdbc) -> None:  # type: ignore[no-untyped-def]
    _, trusted, task = wdbc
    x = task.init_parameters(np.random.default_rng(0))
    wrong = TaskTrusted(LogisticRegressionTask(num_features=4), trusted.data)  # 30 columns
    strategy = Robust(FedAvg(), "fltrust", trusted=wrong)
    with pytest.raises(RoundFailed, match="FLTrust's server update on the trusted data failed"):
        strategy.begin_train_aggregation(1, x, {}, 6)
