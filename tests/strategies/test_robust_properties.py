"""Robust aggregation's guarantees as properties: whatever the malicious minority sends
(arbitrary, adversarially chosen values), the aggregate stays where the papers say."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from biofed.core import MessageKind, ParameterSet, Reply
from biofed.strategies import AggregateResult, FedAvg, Robust, Strategy
from biofed.strategies._robust_kernels import centered_clipping

D = 3
X = ParameterSet({"w": np.zeros(D, dtype=np.float64)})
HONEST = st.floats(-1.0, 1.0, allow_nan=False)
ANYTHING = st.floats(-1e12, 1e12, allow_nan=False)


def matrix(elements: st.SearchStrategy[float], rows: int) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float64, (rows, D), elements=elements)


@st.composite
def rounds(draw: st.DrawFn, *, max_bad: str) -> tuple[np.ndarray, np.ndarray]:
    """Honest updates in [-1, 1]^D and fewer malicious ones than ``max_bad`` tolerates."""
    honest = draw(st.integers(2 if max_bad == "half" else 3, 8))
    # "half": strictly fewer than half of all updates; krum: n > 2f + 2 with f = bad
    bad_limit = honest - 1 if max_bad == "half" else max(0, honest - 3)
    bad = draw(st.integers(0, bad_limit))
    return draw(matrix(HONEST, honest)), draw(matrix(ANYTHING, bad))


def run(strategy: Strategy, honest: np.ndarray, bad: np.ndarray, seed: int = 0) -> AggregateResult:
    updates = [("h", u) for u in honest] + [("m", u) for u in bad]
    order = np.random.default_rng(seed).permutation(len(updates))  # arrival order is arbitrary
    agg = strategy.begin_train_aggregation(1, X, strategy.init_state(X), len(updates))
    for k in order:
        kind, u = updates[k]
        agg.add(
            Reply(
                run_id="p",
                round=1,
                node_id=f"{kind}{k:02d}",
                kind=MessageKind.TRAIN,
                parameters=ParameterSet({"w": u}),
                num_examples=10**15 if kind == "m" else 10,
            )
        )
    return agg.finish()


def within_honest_range(result: AggregateResult, honest: np.ndarray) -> bool:
    w = result.parameters["w"]
    tol = 1e-12
    return bool(np.all(w >= honest.min(axis=0) - tol) and np.all(w <= honest.max(axis=0) + tol))


@settings(max_examples=60, deadline=None)
@given(rounds(max_bad="half"), st.integers(0, 99))
def test_median_stays_in_the_honest_range_under_a_minority(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    honest, bad = data
    assert within_honest_range(run(Robust(FedAvg(), "median"), honest, bad, seed), honest)


@settings(max_examples=60, deadline=None)
@given(rounds(max_bad="half"), st.integers(0, 3), st.integers(0, 99))
def test_trimmed_mean_stays_in_the_honest_range_when_f_covers_the_liars(
    data: tuple[np.ndarray, np.ndarray], extra: int, seed: int
) -> None:
    honest, bad = data
    f = len(bad) + extra
    assume(len(honest) + len(bad) > 2 * f)
    result = run(Robust(FedAvg(), "trimmed_mean", f=f), honest, bad, seed)
    assert within_honest_range(result, honest)


@settings(max_examples=60, deadline=None)
@given(rounds(max_bad="krum"), st.data())
def test_krum_and_multi_krum_pick_honest_updates_when_the_liars_stand_apart(
    data: tuple[np.ndarray, np.ndarray], draw: st.DataObject
) -> None:
    # Honest updates lie in [-1, 1]^D (squared diameter ≤ 4D). A liar whose every
    # coordinate is ≥ L = 2 + 2√n in magnitude is ≥ √D(L−1) from every honest update. Its
    # n − f − 2 nearest include at least n − 2f − 1 ≥ 2 honest ones, so its score exceeds
    # (n−2f−1)·D(L−1)² > (n−f−2)·4D ≥ any honest update's score: Krum must pick honestly,
    # wherever (and however clustered) the liars are.
    honest, bad = data
    n, f = len(honest) + len(bad), len(bad)
    low = 2 + 2 * math.sqrt(n)
    magnitude = st.floats(low, 1e9, allow_nan=False)
    signs = draw.draw(hnp.arrays(np.int8, bad.shape, elements=st.sampled_from([-1, 1])))
    sizes = draw.draw(hnp.arrays(np.float64, bad.shape, elements=magnitude))
    bad = signs * sizes
    for strategy in (Robust(FedAvg(), "krum", f=f), Robust(FedAvg(), "multi_krum", f=f)):
        result = run(strategy, honest, bad)
        chosen = {d.node_id for d in result.decisions if d.action == "accepted"}
        assert chosen
        assert all(node.startswith("h") for node in chosen)
        assert within_honest_range(result, honest)


@settings(max_examples=40, deadline=None)
@given(rounds(max_bad="half"), st.integers(0, 99))
def test_geometric_median_stays_near_the_honest_updates(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    # For a malicious weight share θ < 1/2 the geometric median v satisfies, for any z,
    # ‖v − z‖ ≤ 2(1−θ)/(1−2θ)·max_honest ‖uᵢ − z‖ (compare the objective at v and at z
    # with the triangle inequality). Equal weights here: θ = bad / n.
    honest, bad = data
    n = len(honest) + len(bad)
    theta = len(bad) / n
    result = run(Robust(FedAvg(weighted=False), "geometric_median", gm_iters=1000), honest, bad)
    z = honest.mean(axis=0)
    radius = float(np.max(np.linalg.norm(honest - z, axis=1)))
    bound = 2 * (1 - theta) / (1 - 2 * theta) * radius
    assert float(np.linalg.norm(result.parameters["w"] - z)) <= bound * (1 + 1e-6) + 1e-6


@settings(max_examples=40, deadline=None)
@given(rounds(max_bad="half"), st.integers(0, 99))
def test_one_dimensional_geometric_median_is_within_the_honest_range(
    data: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    honest, bad = data
    honest, bad = honest.copy(), bad.copy()
    honest[:, 1:] = 0.0
    bad[:, 1:] = 0.0
    result = run(Robust(FedAvg(weighted=False), "geometric_median", gm_iters=1000), honest, bad)
    w = result.parameters["w"][0]
    assert honest[:, 0].min() - 1e-6 <= w <= honest[:, 0].max() + 1e-6


@settings(max_examples=40, deadline=None)
@given(rounds(max_bad="half"), st.floats(0.01, 10.0), st.integers(1, 3))
def test_centered_clipping_moves_at_most_tau_per_iteration(
    data: tuple[np.ndarray, np.ndarray], tau: float, iters: int
) -> None:
    honest, bad = data
    strategy = Robust(FedAvg(), "centered_clipping", cc_tau=tau, cc_iters=iters)
    result = run(strategy, honest, bad)
    assert float(np.linalg.norm(result.parameters["w"])) <= iters * tau * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(rounds(max_bad="half"), st.floats(0.01, 10.0), st.sampled_from(["norm_bound", "median"]))
def test_norm_bound_bounds_the_aggregate_and_every_update(
    data: tuple[np.ndarray, np.ndarray], bound: float, rule: str
) -> None:
    honest, bad = data
    result = run(Robust(FedAvg(), rule, norm_bound=bound), honest, bad)  # type: ignore[arg-type]
    assert float(np.linalg.norm(result.parameters["w"])) <= bound * (1 + 1e-9)
    for d in result.decisions:
        assert d.action in ("accepted", "clipped")


@settings(max_examples=30, deadline=None)
@given(rounds(max_bad="half"), st.floats(0.01, 10.0), st.integers(0, 99))
def test_streamed_centered_clipping_equals_the_buffered_kernel(
    data: tuple[np.ndarray, np.ndarray], tau: float, seed: int
) -> None:
    # With one iteration centred clipping folds each update as it arrives; the result must
    # be the batch formula's on all updates at once.
    honest, bad = data
    streamed = Robust(FedAvg(weighted=False), "centered_clipping", cc_tau=tau)
    assert not streamed.buffers
    got = run(streamed, honest, bad, seed).parameters["w"]
    rows = np.vstack([honest, bad])
    want, _ = centered_clipping(rows, np.ones(len(rows)), np.zeros(D), tau=tau, iterations=1)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * tau)
