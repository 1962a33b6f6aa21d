"""Exact Shapley and leave-one-out on games with known answers, and the Shapley axioms as
hypothesis properties (issue 17).

Any characteristic function can be played through the real API: site i's update is the
unit vector eᵢ with weight 1, so the coalition model of S is 1_S/|S| and a value function
can read S back from the model's positive coordinates and look ``table[S]`` up."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.contribution import (
    MAX_EXACT_SITES,
    RoundGame,
    leave_one_out,
    measure,
    shapley,
)
from biofed.core import ConfigurationError, ParameterSet

SITES = ("a", "b", "c", "d", "e", "f", "g", "h")


def table_game(
    table: Sequence[float], *, baseline: float = 0.0, max_evaluations: int = 5000
) -> tuple[RoundGame, list[int]]:
    """A RoundGame whose v(S) is ``table[mask(S)]`` (``table[0]`` must be 0); also returns
    the list of masks the value function was called on."""
    n = int(math.log2(len(table)))
    assert 1 << n == len(table)
    assert table[0] == 0
    x = ParameterSet({"w": np.zeros(n)})
    updates = {SITES[i]: (ParameterSet({"w": np.eye(n)[i]}), 1.0) for i in range(n)}
    calls: list[int] = []

    def value(params: ParameterSet) -> float:
        mask = sum(1 << i for i, w in enumerate(params["w"]) if w > 0)
        calls.append(mask)
        return baseline + table[mask]

    return RoundGame(x, updates, value, max_evaluations=max_evaluations), calls


def test_an_additive_game_gives_each_site_its_own_value() -> None:
    own = [0.05, 0.2, -0.1, 0.0]
    table = [sum(own[i] for i in range(4) if m >> i & 1) for m in range(16)]
    game, calls = table_game(table, baseline=0.6)
    result = shapley(game)
    assert result.values == pytest.approx(dict(zip(SITES, own, strict=False)))
    assert result.total == pytest.approx(sum(own))
    assert result.baseline == pytest.approx(0.6)
    assert result.evaluations == 16 == len(calls)  # value(x) and the 15 coalitions, once each
    assert sorted(calls) == list(range(16))
    loo = leave_one_out(table_game(table)[0])
    assert loo.values == pytest.approx(dict(zip(SITES, own, strict=False)))
    assert loo.evaluations == 4 + 2


def test_a_three_site_game_with_interactions_matches_the_hand_computed_values() -> None:
    # v(a)=.1 v(b)=.2 v(c)=.3 v(ab)=.6 v(ac)=.4 v(bc)=.5 v(abc)=.9, by hand:
    # φa = ⅓·.1 + ⅙·(.6−.2) + ⅙·(.4−.3) + ⅓·(.9−.5) = 1/4
    # φb = ⅓·.2 + ⅙·(.6−.1) + ⅙·(.5−.3) + ⅓·(.9−.4) = 7/20
    # φc = ⅓·.3 + ⅙·(.4−.1) + ⅙·(.5−.2) + ⅓·(.9−.6) = 3/10
    table = [0, 0.1, 0.2, 0.6, 0.3, 0.4, 0.5, 0.9]
    result = shapley(table_game(table, baseline=0.5)[0])
    expected = {"a": Fraction(1, 4), "b": Fraction(7, 20), "c": Fraction(3, 10)}
    assert result.values == pytest.approx({k: float(v) for k, v in expected.items()})
    assert result.ranking() == ("b", "c", "a")
    # leave-one-out: v(N) − v(N∖i) = .9−.5, .9−.4, .9−.6
    loo = leave_one_out(table_game(table)[0])
    assert loo.values == pytest.approx({"a": 0.4, "b": 0.5, "c": 0.3})


@st.composite
def games(draw: st.DrawFn, min_sites: int = 1, max_sites: int = 5) -> list[float]:
    n = draw(st.integers(min_sites, max_sites))
    values = st.floats(-1, 1, allow_nan=False, allow_infinity=False)
    return [0.0] + [draw(values) for _ in range((1 << n) - 1)]


def phi(table: Sequence[float]) -> np.ndarray:
    result = shapley(table_game(table)[0])
    return np.array(list(result.values.values()))


@settings(max_examples=40, deadline=None)
@given(games())
def test_efficiency_the_values_sum_to_the_grand_coalition(table: list[float]) -> None:
    assert phi(table).sum() == pytest.approx(table[-1], abs=1e-9)


def _swap(mask: int, i: int, j: int) -> int:
    bi, bj = mask >> i & 1, mask >> j & 1
    mask &= ~((1 << i) | (1 << j))
    return mask | (bi << j) | (bj << i)


@settings(max_examples=40, deadline=None)
@given(games(min_sites=2), st.data())
def test_symmetry_interchangeable_sites_get_the_same_value(
    table: list[float], data: st.DataObject
) -> None:
    n = int(math.log2(len(table)))
    i, j = data.draw(st.sampled_from([(i, j) for i in range(n) for j in range(i + 1, n)]))
    sym = [max(table[m], table[_swap(m, i, j)]) for m in range(len(table))]  # v(S) = v(σS)
    values = phi(sym)
    assert values[i] == pytest.approx(values[j], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(games(min_sites=2), st.data())
def test_a_null_player_gets_zero(table: list[float], data: st.DataObject) -> None:
    n = int(math.log2(len(table)))
    null = data.draw(st.integers(0, n - 1))
    bit = 1 << null
    game = [table[m & ~bit] for m in range(len(table))]  # v(S ∪ {null}) = v(S)
    values = phi(game)
    assert values[null] == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(games(), st.data())
def test_additivity_the_values_of_a_sum_of_games_add(
    table: list[float], data: st.DataObject
) -> None:
    other = [0.0] + [
        data.draw(st.floats(-1, 1, allow_nan=False, allow_infinity=False))
        for _ in range(len(table) - 1)
    ]
    both = [a + b for a, b in zip(table, other, strict=True)]
    assert phi(both) == pytest.approx(phi(table) + phi(other), abs=1e-9)


def test_exact_shapley_is_refused_above_ten_sites_and_beyond_the_evaluation_bound() -> None:
    n = MAX_EXACT_SITES + 1
    x = ParameterSet({"w": np.zeros(n)})
    updates = {f"s{i}": (ParameterSet({"w": np.eye(n)[i]}), 1.0) for i in range(n)}
    game = RoundGame(x, updates, lambda p: 0.0)
    with pytest.raises(ConfigurationError, match="at most 10 sites"):
        shapley(game)
    assert game.evaluations == 0
    small, calls = table_game([0.0] * 16, max_evaluations=15)
    with pytest.raises(ConfigurationError, match="needs 16 more evaluations"):
        shapley(small)
    assert calls == []  # refused before any work
    with pytest.raises(ConfigurationError, match="leave-one-out over 4 players needs 6"):
        leave_one_out(table_game([0.0] * 16, max_evaluations=5)[0])


def test_one_site_gets_the_whole_gain() -> None:
    x = ParameterSet({"w": np.zeros(2, dtype=np.float32)})
    d = ParameterSet({"w": np.array([1.0, -2.0], dtype=np.float32)})
    value: Callable[[ParameterSet], float] = lambda p: float(p["w"][0] - p["w"][1])  # noqa: E731
    for method in ("shapley", "leave_one_out", "tmc_shapley", "gtg_shapley"):
        result = measure(method, x, {"only": (d, 3)}, value, rng=np.random.default_rng(0))
        assert dict(result.values) == pytest.approx({"only": 3.0}), method
