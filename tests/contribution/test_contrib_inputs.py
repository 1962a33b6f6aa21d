"""Hostile input, bounds, determinism and the ledger's JSON round trip (issue 17)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from itertools import count

import numpy as np
import pytest
from test_contrib_shapley import table_game

from biofed.contribution import (
    METHODS,
    ContributionLedger,
    Contributions,
    RoundGame,
    gtg_shapley,
    measure,
    shapley,
    tmc_shapley,
)
from biofed.core import (
    ConfigurationError,
    ParameterMismatch,
    ParameterSet,
    PayloadError,
    RoundFailed,
)

X = ParameterSet({"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(1, dtype=np.float32)})


def update(scale: float) -> ParameterSet:
    return ParameterSet(
        {"w": np.full((2, 3), scale, dtype=np.float32), "b": np.array([scale], dtype=np.float32)}
    )


def score(params: ParameterSet) -> float:
    return float(params["w"].sum() - abs(params["b"][0] - 0.5))


UPDATES = {"a": (update(0.1), 10), "b": (update(0.3), 30), "c": (update(-0.2), 5)}


def turns_bad(bad: object, *, after: int) -> Callable[[ParameterSet], float]:
    """``score`` for the first ``after`` calls, then ``bad``."""
    calls = count()

    def value(params: ParameterSet) -> float:
        return bad if next(calls) >= after else score(params)  # type: ignore[return-value]

    return value


@pytest.mark.parametrize("method", METHODS)
def test_a_value_function_returning_nan_or_inf_fails_the_measurement_clearly(method: str) -> None:
    for bad in (math.nan, math.inf, -math.inf, "0.7", None):
        value = turns_bad(bad, after=3)
        with pytest.raises(RoundFailed, match="value function returned") as err:
            measure(method, X, UPDATES, value, rng=np.random.default_rng(0))
        assert "\n" not in str(err.value)


def test_a_value_function_that_raises_fails_the_round_naming_the_coalition() -> None:
    def value(params: ParameterSet) -> float:
        if params["b"][0] < 0:
            raise ValueError("no comparable pair")
        return score(params)

    with pytest.raises(RoundFailed, match=r"failed on the coalition \['c'\]: no comparable pair"):
        measure("shapley", X, UPDATES, value)


def test_mismatched_layouts_are_a_parameter_mismatch() -> None:
    wrong_shape = ParameterSet({"w": np.zeros((3, 2)), "b": np.zeros(1)})
    missing = ParameterSet({"w": np.zeros((2, 3))})
    renamed = ParameterSet({"w": np.zeros((2, 3)), "bias": np.zeros(1)})
    for bad in (wrong_shape, missing, renamed):
        with pytest.raises(ParameterMismatch, match="the update of 'evil'"):
            RoundGame(X, {**UPDATES, "evil": (bad, 1)}, score)
    nan = ParameterSet({"w": np.full((2, 3), np.nan), "b": np.zeros(1)})
    with pytest.raises(PayloadError, match="'w' of the update of 'evil' contains NaN"):
        RoundGame(X, {"evil": (nan, 1)}, score)
    with pytest.raises(ConfigurationError, match="must be a ParameterSet"):
        RoundGame(X, {"evil": ({"w": np.zeros((2, 3))}, 1)}, score)  # type: ignore[dict-item]


@pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf, True, "3"])
def test_a_weight_must_be_a_finite_positive_number(weight: object) -> None:
    with pytest.raises(ConfigurationError, match="the weight of 'a'"):
        RoundGame(X, {"a": (update(0.1), weight)}, score)  # type: ignore[dict-item]


def test_bad_arguments_are_refused_before_any_evaluation() -> None:
    with pytest.raises(ConfigurationError, match="at least one site"):
        RoundGame(X, {}, score)
    with pytest.raises(ConfigurationError, match="max_evaluations must be ≥ 2"):
        RoundGame(X, UPDATES, score, max_evaluations=1)
    with pytest.raises(RoundFailed, match="3 updates of 7 values take 168 bytes"):
        RoundGame(X, UPDATES, score, max_updates_bytes=100)
    with pytest.raises(ConfigurationError, match="unknown method 'banzhaf'"):
        measure("banzhaf", X, UPDATES, score)
    with pytest.raises(ConfigurationError, match="no option 'tolerence'"):
        measure("tmc_shapley", X, UPDATES, score, tolerence=0.1)
    with pytest.raises(ConfigurationError, match="takes no options"):
        measure("shapley", X, UPDATES, score, truncation=0.1)
    with pytest.raises(ConfigurationError, match=r"truncation must be in \[0, 1\)"):
        measure("gtg_shapley", X, UPDATES, score, truncation=1.5)
    with pytest.raises(ConfigurationError, match="round_tolerance must be finite"):
        measure("gtg_shapley", X, UPDATES, score, round_tolerance=-1.0)


def big_game(n: int, max_evaluations: int = 5000) -> RoundGame:
    """n sites with random one-hot-ish updates and a value with interactions."""
    rng = np.random.default_rng(7)
    gains = rng.normal(0.1, 0.05, size=n)
    x = ParameterSet({"w": np.zeros(n)})
    updates = {f"s{i:02d}": (ParameterSet({"w": np.eye(n)[i]}), 1.0 + i % 3) for i in range(n)}

    def value(params: ParameterSet) -> float:
        present = params["w"] > 0
        return float(gains @ present - 0.02 * present.sum() ** 0.5)

    return RoundGame(x, updates, value, max_evaluations=max_evaluations)


@pytest.mark.parametrize("sampler", [tmc_shapley, gtg_shapley])
def test_the_samplers_are_deterministic_for_a_seed_and_respect_their_bounds(
    sampler: object,
) -> None:
    run = sampler  # type: ignore[assignment]
    a = run(big_game(12), rng=np.random.default_rng(3))
    b = run(big_game(12), rng=np.random.default_rng(3))
    assert a.values == b.values
    assert a.evaluations == b.evaluations
    c = run(big_game(12), rng=np.random.default_rng(4))
    assert c.values != a.values
    bounded = run(big_game(30, max_evaluations=100), rng=np.random.default_rng(3))
    assert bounded.evaluations <= 100
    assert not bounded.converged
    short = run(big_game(12), rng=np.random.default_rng(3), max_permutations=3)
    assert short.permutations == 3
    assert not short.converged
    # each permutation sums to v(N), up to the truncation (1 % of v(N))
    assert sum(a.values.values()) == pytest.approx(a.total, rel=0.011)


def test_gtg_skips_a_round_without_gain_at_two_evaluations() -> None:
    flat = RoundGame(X, UPDATES, lambda p: 0.5)
    result = gtg_shapley(flat, rng=np.random.default_rng(0))
    assert result.skipped
    assert result.evaluations == 2
    assert set(result.values.values()) == {0.0}
    tiny = RoundGame(X, UPDATES, lambda p: 0.5 + 1e-3 * float(p["b"][0]))
    assert gtg_shapley(tiny, rng=np.random.default_rng(0), round_tolerance=1e-3).skipped


def test_exact_shapley_of_a_shared_game_counts_only_its_own_evaluations() -> None:
    game = big_game(6)
    tmc = tmc_shapley(game, rng=np.random.default_rng(0))
    exact = shapley(game)
    assert tmc.evaluations + exact.evaluations == game.evaluations == 64


def test_the_ledger_accumulates_rounds_and_round_trips_through_json() -> None:
    table = [0, 0.1, 0.2, 0.6, 0.3, 0.4, 0.5, 0.9]
    ledger = ContributionLedger()
    for r in (1, 2):
        ledger = ledger.add(shapley(table_game(table)[0]), server_round=r)
    ledger = ledger.add(
        Contributions(
            method="leave_one_out",
            values={"a": -0.5, "d": 0.25},
            total=0.0,
            baseline=0.7,
            evaluations=4,
            seconds=0.01,
            server_round=3,
        )
    )
    assert ledger.totals() == pytest.approx({"a": 0.0, "b": 0.7, "c": 0.6, "d": 0.25})
    assert ledger.shares() == pytest.approx(
        {"a": 0.0, "b": 0.7 / 1.55, "c": 0.6 / 1.55, "d": 0.25 / 1.55}
    )
    assert ledger.evaluations == 8 + 8 + 4
    back = ContributionLedger.from_json(ledger.to_json())
    assert back == ledger
    with pytest.raises(ConfigurationError, match="round 2 is already in the ledger"):
        ledger.add(ledger.rounds[0], server_round=2)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["rounds"][0]["values"].update(a=float("nan")),
        lambda d: d["rounds"][0].update(method="made_up"),
        lambda d: d["rounds"][0].update(evaluations=-1),
        lambda d: d["rounds"][0].update(extra=1),
        lambda d: d["rounds"][0].update(converged="yes"),
        lambda d: d.update(rounds="none"),
    ],
)
def test_a_tampered_ledger_is_refused_with_one_line(tamper: object) -> None:
    ledger = ContributionLedger().add(shapley(table_game([0, 0.1, 0.2, 0.4])[0]), server_round=1)
    data = json.loads(ledger.to_json())
    tamper(data)  # type: ignore[operator]
    with pytest.raises(ConfigurationError) as err:
        ContributionLedger.from_json(json.dumps(data))
    assert "\n" not in str(err.value)


def test_near_duplicate_updates_are_one_player_and_zero_updates_are_null_players() -> None:
    base = np.array([1.0, 0.0, 0.0])
    turned = np.array([1.0, 0.3, 0.0])  # cos 0.958 with base
    further = np.array([1.0, 0.6, 0.2])  # cos 0.96 with turned, 0.85 with base
    other = np.array([0.0, 0.0, 1.0])
    x = ParameterSet({"w": np.zeros(3)})
    updates = {
        name: (ParameterSet({"w": v}), w)
        for name, v, w in [
            ("a", base, 1.0),
            ("b", turned, 3.0),
            ("c", further, 1.0),
            ("d", other, 1.0),
            ("idle", np.zeros(3), 50.0),
            ("idle-too", np.zeros(3), 50.0),
        ]
    }

    def value(p: ParameterSet) -> float:
        return float(p["w"].sum())

    game = RoundGame(x, updates, value)
    assert game.groups == (("a", "b", "c"), ("d",))  # linked a-b-c, transitively
    assert game.free_riders == ("idle", "idle-too")
    result = shapley(game)
    assert result.values["idle"] == result.values["idle-too"] == 0.0
    abc = result.values["a"] + result.values["b"] + result.values["c"]
    assert result.values["b"] == pytest.approx(3 * result.values["a"])  # shared by weight
    assert abc + result.values["d"] == pytest.approx(result.total)
    alone = RoundGame(x, updates, value, duplicate_cosine=None, free_rider_norm=None)
    assert alone.groups == tuple((s,) for s in updates)
    assert alone.free_riders == ()
    nothing = {"idle": (ParameterSet({"w": np.zeros(3)}), 1.0)}
    for method in METHODS:
        empty = measure(method, x, nothing, value, rng=np.random.default_rng(0))
        assert dict(empty.values) == {"idle": 0.0}
        assert empty.free_riders == ("idle",)
    with pytest.raises(ConfigurationError, match="duplicate_cosine must be in"):
        RoundGame(x, updates, value, duplicate_cosine=0.0)
    with pytest.raises(ConfigurationError, match="free_rider_norm must be in"):
        RoundGame(x, updates, value, free_rider_norm=1.0)


@pytest.mark.parametrize("sampler", [tmc_shapley, gtg_shapley])
def test_an_additive_game_is_estimated_exactly_at_the_minimum_of_permutations(
    sampler: object,
) -> None:
    own = [0.3, -0.1, 0.05, 0.2]
    table = [sum(own[i] for i in range(4) if m >> i & 1) for m in range(16)]
    result = sampler(  # type: ignore[operator]
        table_game(table)[0], rng=np.random.default_rng(0), truncation=0.0
    )
    assert result.converged
    # every marginal is constant: no error to wait for past the minimum of 30 (GTG checks
    # after whole rotations of the 4 leading sites: 32)
    assert result.permutations == (30 if sampler is tmc_shapley else 32)
    assert list(result.values.values()) == pytest.approx(own)
