"""``LinearScore``: the fast coalition value of the built-in linear tasks (issue 17).

Equal to the task's own ``evaluate`` (the generic value) to 1e-12 — in fact bit for bit — on
every coalition of a real Fed-TCGA-BRCA round, on the C-index's edge cases (tied times, tied
risks, censoring at an event's time), and for logistic regression's ROC AUC and accuracy;
wired into ``TrustedData`` and ``Measured``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.contribution import (
    LinearScore,
    Measured,
    RoundGame,
    gtg_shapley,
    shapley,
)
from biofed.contribution import _linear as linear_module
from biofed.coordinator import JobSpec, TrustedData
from biofed.core import ConfigurationError, ParameterSet
from biofed.datasets import load_tcga_brca
from biofed.strategies import FedAvg
from biofed.tasks import (
    CoxPHTask,
    LogisticRegressionTask,
    TrainContext,
    concordance_index,
)

TRAIN = {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam", "local_steps": 10}


@pytest.fixture(scope="module")
def tcga_round() -> tuple[ParameterSet, dict[str, tuple[ParameterSet, float]], object]:
    fed = load_tcga_brca()
    task = CoxPHTask(num_features=39, init="uniform")
    x = task.init_parameters(np.random.default_rng(3))
    updates = {}
    for k, (site, data) in enumerate(fed.sites.items()):
        ctx = TrainContext(config=TRAIN, rng=np.random.default_rng([3, k]))
        result = task.train(x, data.train, ctx)
        delta = ParameterSet({p: result.parameters[p] - x[p] for p in x})
        updates[site] = (delta, float(result.num_examples))
    return x, updates, fed.pooled("test")


def test_every_coalition_of_a_tcga_round_scores_as_the_cox_task_evaluates(
    tcga_round: tuple[ParameterSet, dict[str, tuple[ParameterSet, float]], object],
) -> None:
    x, updates, test = tcga_round
    task = CoxPHTask(num_features=39)

    def generic(params: ParameterSet) -> float:
        return float(task.evaluate(params, test, TrainContext()).metrics["c_index"])  # type: ignore[arg-type]

    fast = LinearScore(
        test.features,  # type: ignore[attr-defined]
        "c_index",
        time=test.target("time"),  # type: ignore[attr-defined]
        event=test.target("event"),  # type: ignore[attr-defined]
    )
    slow_game = RoundGame(x, updates, generic, duplicate_cosine=None)
    fast_game = RoundGame(x, updates, fast, duplicate_cosine=None)
    assert fast_game.n == 6
    slow, quick = shapley(slow_game), shapley(fast_game)
    values = [(slow_game.v(m), fast_game.v(m)) for m in range(1 << 6)]
    assert len({round(a, 9) for a, _ in values}) > 20  # coalitions really differ
    for a, b in values:
        assert abs(a - b) <= 1e-12
    assert quick.values == pytest.approx(slow.values, abs=1e-12)
    assert quick.evaluations == slow.evaluations == 64
    assert fast_game.baseline == slow_game.baseline == generic(x)
    # the samplers take the same path through the same values
    g1 = gtg_shapley(RoundGame(x, updates, generic), rng=np.random.default_rng(0))
    g2 = gtg_shapley(RoundGame(x, updates, fast), rng=np.random.default_rng(0))
    assert g2.values == pytest.approx(g1.values, abs=1e-12)
    assert g2.evaluations == g1.evaluations


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 6), st.booleans(), st.integers(-3, 3)), min_size=0, max_size=25
    )
)
def test_the_c_index_matches_concordance_index_with_ties_and_censoring(
    rows: list[tuple[int, bool, int]],
) -> None:
    time = np.array([float(t) for t, _, _ in rows])
    event = np.array([float(e) for _, e, _ in rows])
    risk = np.array([float(r) for _, _, r in rows])  # integers: many tied risks
    X = risk[:, None]  # weight 1, bias 0: the prediction is the risk
    score = LinearScore(X, "c_index", time=time, event=event)
    params = ParameterSet({"weight": np.ones((1, 1), np.float32), "bias": np.zeros(1, np.float32)})
    got = score(params)
    want = concordance_index(time, -risk, event) if rows else math.nan
    assert (math.isnan(got) and math.isnan(want)) or got == want


def test_above_the_pair_bound_it_falls_back_to_concordance_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    X, time = rng.normal(size=(40, 3)), rng.integers(1, 9, 40).astype(float)
    event = (rng.random(40) < 0.5).astype(float)
    params = ParameterSet(
        {"weight": rng.normal(size=(1, 3)).astype(np.float32), "bias": np.zeros(1, np.float32)}
    )
    kept = LinearScore(X, "c_index", time=time, event=event)
    monkeypatch.setattr(linear_module, "MAX_KEPT_PAIRS", 10)
    chunked = LinearScore(X, "c_index", time=time, event=event)
    assert chunked(params) == kept(params)
    risk = X @ params["weight"][0].astype(np.float64)
    assert kept(params) == concordance_index(time, -risk, event)


def test_logistic_auc_and_accuracy_match_the_task() -> None:
    from sklearn.datasets import load_breast_cancer

    from biofed.data import Dataset

    data = load_breast_cancer()
    X = (data.data - data.data.mean(0)) / data.data.std(0)
    y = data.target.astype(float)

    names = tuple(f"f{i}" for i in range(30))
    ds = Dataset(features=X, targets={"label": y}, name="wdbc", feature_names=names)
    rng = np.random.default_rng(2)
    for metric in ("roc_auc", "accuracy"):
        task = LogisticRegressionTask(num_features=30, metric=metric)
        score = LinearScore(ds.features, metric, label=y)  # float32 features, as the task
        for _ in range(3):
            params = ParameterSet(
                {
                    "weight": rng.normal(size=(1, 30)).astype(np.float32),
                    "bias": rng.normal(size=1).astype(np.float32),
                }
            )
            assert score(params) == task.evaluate(params, ds, TrainContext()).metrics[metric]


def test_a_model_that_is_not_linear_is_refused_and_the_game_uses_the_generic_path() -> None:
    score = LinearScore(np.eye(2), "accuracy", label=[1.0, 0.0])
    other = ParameterSet({"w": np.zeros(2)})
    with pytest.raises(ConfigurationError, match="weight"):
        score(other)
    assert not score.fits(other)
    with pytest.raises(ConfigurationError, match="metric"):
        LinearScore(np.eye(2), "cox_loss", label=[1.0, 0.0])
    with pytest.raises(ConfigurationError, match="time and event"):
        LinearScore(np.eye(2), "c_index")


def test_trusted_data_of_the_cox_task_offers_it_and_measured_uses_it() -> None:
    test = load_tcga_brca().pooled("test")
    job = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 1, "min_nodes": 6, "min_replies": 6},
            "task": {"name": "cox_ph", "num_features": 39, "init": "uniform"},
            "train": TRAIN,
            "contribution": {"trusted_dataset": "reference"},
        }
    )
    trusted = TrustedData(job, test, name="reference")
    fast = trusted.linear_score
    assert isinstance(fast, LinearScore)
    assert fast.metric == "c_index"
    x = job.initial_parameters()
    rng = np.random.default_rng(5)
    for _ in range(3):
        params = ParameterSet(
            {p: (x[p] + rng.normal(size=x[p].shape)).astype(x[p].dtype) for p in x}
        )
        assert fast(params) == trusted.score(params)
    assert Measured(FedAvg(), trusted).value is fast
