"""UpdateValidation's decisions on real data: Fed-TCGA-BRCA's Cox model, trusted data held
out from the sites (half of every site's test split), honest updates trained by the real
task; liars are the honest updates sign-flipped and boosted. No mocks: the trusted score is
the coordinator's TrustedData (the task's C-index)."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest

from biofed.coordinator import JobSpec, TrustedData
from biofed.core import ConfigurationError, ParameterSet
from biofed.data import Dataset, FederatedDataset, SiteData
from biofed.datasets import load_tcga_brca
from biofed.strategies import TrustedValidation, UpdateValidation
from biofed.tasks import TrainContext, make_task

TRAIN = {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam", "local_steps": 100}


@cache
def held_out() -> tuple[FederatedDataset, Dataset]:
    """The six TCGA-BRCA sites keeping the even rows of their test split, and the trusted
    set: the odd rows of every site's test split (109 patients, 15 events)."""
    fed = load_tcga_brca()
    sites, trusted = {}, []
    for name, data in fed.sites.items():
        assert data.test is not None
        rows = np.arange(len(data.test))
        sites[name] = SiteData(train=data.train, test=data.test.subset(rows[rows % 2 == 0]))
        trusted.append(data.test.subset(rows[rows % 2 == 1]))
    return FederatedDataset(name=fed.name, sites=sites), Dataset.concat(trusted, name="trusted")


def cox_job(seed: int = 0, **tables: object) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 5, "seed": seed, "min_nodes": 6},
            "task": {"name": "cox_ph", "num_features": 39},
            "train": dict(TRAIN),
            **tables,
        }
    )


def flipped(x: ParameterSet, model: ParameterSet, boost: float) -> ParameterSet:
    """``x − boost·(model − x)``: the update sign-flipped and boosted."""
    return ParameterSet({k: (x[k] - boost * (model[k] - x[k])).astype(x[k].dtype) for k in x})


@cache
def round_one(seed: int = 0) -> tuple[ParameterSet, list[tuple[str, ParameterSet]], list[float]]:
    """The initial model, each site's honest model after round 1, and their example counts."""
    fed, _ = held_out()
    task = make_task("cox_ph", num_features=39)
    x = cox_job(seed).initial_parameters()
    candidates = []
    for i, (name, data) in enumerate(fed.sites.items()):
        ctx = TrainContext(config=TRAIN, rng=np.random.default_rng([seed, 1, i]))
        candidates.append((name, task.train(x, data.train, ctx).parameters))
    weights = [float(len(d.train)) for d in fed.sites.values()]
    return x, candidates, weights


@cache
def trusted(seed: int = 0) -> TrustedData:
    return TrustedData(cox_job(seed), held_out()[1], name="tcga-reference")


def test_honest_updates_of_round_one_are_all_accepted() -> None:
    x, candidates, weights = round_one()
    decisions = UpdateValidation(trusted()).judge(x, candidates, weights)
    assert [d.action for _, d in decisions] == ["accepted"] * 6
    assert [f for f, _ in decisions] == [1.0] * 6
    for (node, _), (_, d) in zip(candidates, decisions, strict=True):
        assert d.node_id == node
        assert d.weight == 1.0
        assert d.score is not None
        assert d.score > -0.05
        assert "c_index on the trusted data" in d.reason


def test_a_sign_flipped_boosted_update_is_rejected_and_the_honest_kept() -> None:
    x, candidates, weights = round_one()
    liar = ("center-0", flipped(x, candidates[0][1], 4.0))
    decisions = UpdateValidation(trusted()).judge(x, [liar, *candidates[1:]], weights)
    factor, decision = decisions[0]
    assert (factor, decision.action, decision.weight) == (0.0, "rejected", 0.0)
    assert decision.score is not None
    assert decision.score < -0.3
    assert "it costs" in decision.reason
    assert [d.action for _, d in decisions[1:]] == ["accepted"] * 5


def test_the_cost_is_the_drop_of_the_trusted_mean_it_causes() -> None:
    x, candidates, weights = round_one()
    liar = flipped(x, candidates[0][1], 4.0)
    models = [liar] + [m for _, m in candidates[1:]]
    data = trusted()

    def mean(chosen: list[int]) -> ParameterSet:
        total = sum(weights[i] for i in chosen)
        return ParameterSet(
            {
                k: sum(weights[i] / total * models[i][k].astype(np.float64) for i in chosen).astype(
                    np.float32
                )
                for k in x
            }
        )

    expected = data.score(mean([1, 2, 3, 4, 5])) - data.score(mean([0, 1, 2, 3, 4, 5]))
    decisions = UpdateValidation(data).judge(x, [("liar", liar), *candidates[1:]], weights)
    assert decisions[0][1].score == pytest.approx(-expected, abs=1e-12)


def test_downweight_falls_linearly_between_one_and_two_max_drops() -> None:
    x, candidates, weights = round_one()
    liar = ("liar", flipped(x, candidates[0][1], 4.0))
    judged = [liar, *candidates[1:]]
    cost = -UpdateValidation(trusted()).judge(x, judged, weights)[0][1].score  # type: ignore[operator]
    validation = UpdateValidation(trusted(), max_drop=cost / 1.5, action="downweight")
    factor, decision = validation.judge(x, judged, weights)[0]
    assert factor == pytest.approx(0.5)  # 1 − (c − c/1.5)/(c/1.5)
    assert (decision.action, decision.weight) == ("downweighted", pytest.approx(0.5))
    factor, decision = UpdateValidation(trusted(), max_drop=cost / 2.5, action="downweight").judge(
        x, judged, weights
    )[0]
    assert (factor, decision.action) == (0.0, "rejected")


def test_two_liars_are_both_found() -> None:
    x, candidates, weights = round_one()
    liars = [(n, flipped(x, m, 4.0)) for n, m in candidates[:2]]
    decisions = UpdateValidation(trusted()).judge(x, [*liars, *candidates[2:]], weights)
    assert [d.action for _, d in decisions] == ["rejected"] * 2 + ["accepted"] * 4


def test_a_lone_update_is_judged_against_the_current_model() -> None:
    x, candidates, _ = round_one()
    data = trusted()
    liar = flipped(x, candidates[0][1], 1.0)
    ((factor, decision),) = UpdateValidation(data).judge(x, [("liar", liar)])
    assert decision.score == pytest.approx(data.score(liar) - data.score(x))
    assert factor == 0.0
    assert data.score(liar) < 0.3 < data.score(x) + 0.3
    ((factor, decision),) = UpdateValidation(data).judge(x, candidates[:1])
    assert factor == 1.0
    assert decision.action == "accepted"


def test_non_finite_updates_are_rejected() -> None:
    x, candidates, weights = round_one()
    nan = ParameterSet({k: np.full_like(v, np.nan) for k, v in x.items()})
    huge = ParameterSet({k: np.full_like(v, 3e38) for k, v in x.items()})  # finite, absurd
    decisions = UpdateValidation(trusted()).judge(
        x, [("nan", nan), ("huge", huge), *candidates[1:]], [weights[0], *weights]
    )
    assert decisions[0][1].action == "rejected"
    assert "not finite" in decisions[0][1].reason
    assert decisions[0][0] == 0.0
    assert decisions[1][0] == 0.0
    assert [d.action for _, d in decisions[2:]] == ["accepted"] * 5


def test_the_secure_aggregate_is_kept_or_discarded_whole() -> None:
    x, candidates, weights = round_one()
    total = sum(weights)
    honest = ParameterSet(
        {
            k: sum(
                w / total * m[k].astype(np.float64)
                for w, (_, m) in zip(weights, candidates, strict=True)
            ).astype(np.float32)
            for k in x
        }
    )
    validation = UpdateValidation(trusted(), action="downweight")
    keep, decision = validation.judge_aggregate(x, honest)
    assert keep
    assert decision.node_id == "secure-aggregate"
    assert decision.action == "accepted"
    keep, decision = validation.judge_aggregate(x, flipped(x, honest, 1.0))
    assert not keep
    assert decision.action == "rejected"
    assert decision.weight == 0.0
    nan = ParameterSet({k: np.full_like(v, np.nan) for k, v in x.items()})
    keep, decision = validation.judge_aggregate(x, nan)
    assert not keep
    assert "not finite" in decision.reason


class _Broken:
    metric = "c_index"

    def score(self, parameters: ParameterSet) -> float:
        return math.inf

    def train(self, parameters: ParameterSet, server_round: int) -> ParameterSet:
        return parameters


def test_a_score_that_is_never_finite_accepts_nothing_it_cannot_measure() -> None:
    x, candidates, _weights = round_one()
    assert isinstance(_Broken(), TrustedValidation)
    _, decision = UpdateValidation(_Broken()).judge_aggregate(x, candidates[0][1])
    assert decision.action == "rejected"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_drop": -0.1}, "max_drop must be"),
        ({"max_drop": math.nan}, "max_drop must be finite"),
        ({"action": "ignore"}, "action must be one of reject, downweight"),
        (
            {"action": "downweight", "max_drop": 0.0},
            'max_drop must be > 0 with action "downweight"',
        ),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        UpdateValidation(trusted(), **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_what_is_not_trusted_data_and_bad_weights_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="trusted must provide"):
        UpdateValidation(object())  # type: ignore[arg-type]
    x, candidates, _ = round_one()
    with pytest.raises(ConfigurationError, match="one finite number >= 0 per candidate"):
        UpdateValidation(trusted()).judge(x, candidates, [1.0])
    with pytest.raises(ConfigurationError, match="one finite number >= 0 per candidate"):
        UpdateValidation(trusted()).judge(x, candidates[:1], [math.nan])
