"""The incentive policy applied to hand-made ledgers (issue 17, item 3): proportional and equal
shares, each access kind below ``min_share``, free-riders flagged, negative values unpaid; the
outcome's JSON read as hostile input; a site verifying its own figures; exact Shapley values
recomputed from a published coalition table."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from biofed.contribution import (
    METHODS,
    ContributionLedger,
    Contributions,
    IncentiveOutcome,
    RoundGame,
    coalition_table,
    incentive_outcome,
    leave_one_out,
    shapley,
    shapley_from_table,
    verify_outcome,
)
from biofed.core import ConfigurationError, ParameterSet
from biofed.governance import INCENTIVE_MEASURES, IncentivePolicy

RELEASED = dt.date(2026, 12, 6)


def _round(server_round: int, values: dict[str, float], **extra: Any) -> Contributions:
    return Contributions(
        method=extra.pop("method", "shapley"),
        values=values,
        total=math.fsum(values.values()),
        baseline=0.5,
        evaluations=32,
        seconds=0.01,
        server_round=server_round,
        **extra,
    )


def ledger() -> ContributionLedger:
    """a, b, c contribute (c a little), d hurts the model, e sends Δ = 0 (the measure's null
    player), f joined in round 2 only. Totals: a 0.08, b 0.04, c 0.01, d −0.03, e 0, f 0."""
    out = ContributionLedger()
    out = out.add(
        _round(1, {"a": 0.06, "b": 0.03, "c": 0.01, "d": -0.02, "e": 0.0}, free_riders=("e",))
    )
    return out.add(
        _round(
            2,
            {"a": 0.02, "b": 0.01, "c": 0.0, "d": -0.01, "e": 0.0, "f": 0.0},
            free_riders=("e",),
        )
    )


def policy(**changes: Any) -> IncentivePolicy:
    return IncentivePolicy(measure="shapley", **changes)


def test_the_measures_are_the_contribution_methods() -> None:
    assert set(INCENTIVE_MEASURES) == set(METHODS)


def test_proportional_shares_flag_free_riders_and_pay_no_negative_value() -> None:
    out = incentive_outcome(policy(), ledger(), rounds=5)
    assert list(out.sites) == ["a", "b", "c", "d", "e", "f"]
    expected = {
        "a": (0.08, 8 / 13, 8 / 13),
        "b": (0.04, 4 / 13, 4 / 13),
        "c": (0.01, 1 / 13, 1 / 13),
        "d": (-0.03, 0.0, 0.0),
        "e": (0.0, 0.0, 0.0),
        "f": (0.0, 0.0, 0.0),
    }
    for site, figures in expected.items():
        got = out.sites[site]
        assert (got.value, got.share, got.reward_share) == pytest.approx(figures), site
    assert [s for s, o in out.sites.items() if o.free_rider] == ["d", "e", "f"]
    assert sum(o.reward_share for o in out.sites.values()) == pytest.approx(1.0)
    assert all(o.access == "full" for o in out.sites.values())  # below_min = "full": flag only
    assert "value -0.03 < 0: the site's updates cost the model" in out.sites["d"].reasons
    assert "the measure marked its update a free-rider in round(s) 1, 2" in out.sites["e"].reasons
    assert "flagged as a free-rider: no reward" in out.sites["f"].reasons
    assert out.sites["a"].reasons == ()


def test_a_free_rider_share_threshold_flags_the_small_and_renormalises() -> None:
    out = incentive_outcome(policy(free_rider_share=0.1), ledger(), rounds=2)
    assert out.sites["c"].free_rider
    assert out.sites["c"].reward_share == 0.0
    assert out.sites["a"].reward_share == pytest.approx(8 / 12)
    assert out.sites["b"].reward_share == pytest.approx(4 / 12)
    assert "share 0.07692 ≤ free_rider_share 0.1" in out.sites["c"].reasons


def test_equal_reward_shares_among_the_unflagged() -> None:
    out = incentive_outcome(policy(reward="equal"), ledger(), rounds=2)
    assert {s: o.reward_share for s, o in out.sites.items()} == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3, "d": 0, "e": 0, "f": 0}
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"below_min": "full"}, {"access": "full"}),
        (
            {"below_min": "delayed", "delay_days": 30},
            {"access": "delayed", "delay_days": 30, "until": RELEASED + dt.timedelta(days=30)},
        ),
        (
            {"below_min": "earlier_round", "earlier_rounds": 2},
            {"access": "earlier_round", "round": 3},
        ),
        (
            {"below_min": "earlier_round", "earlier_rounds": 9},
            {"access": "earlier_round", "round": 0},
        ),
        ({"below_min": "none"}, {"access": "none"}),
    ],
)
def test_below_min_share_each_access_kind(
    changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    out = incentive_outcome(policy(min_share=0.1, **changes), ledger(), rounds=5, released=RELEASED)
    for site in ("a", "b"):  # above the minimum
        assert out.sites[site].access == "full"
        assert out.sites[site].until is None
    for site in ("c", "d", "e", "f"):  # c below the minimum, the others flagged
        figures = out.sites[site]
        for key, value in expected.items():
            assert getattr(figures, key) == value, (site, key)
    assert "share 0.07692 < min_share 0.1" in out.sites["c"].reasons
    assert not out.sites["c"].free_rider
    assert out.sites["c"].reward_share == pytest.approx(1 / 13)  # below the minimum, still paid


def test_min_share_zero_still_applies_below_min_to_free_riders() -> None:
    out = incentive_outcome(policy(below_min="none"), ledger(), rounds=2)
    assert {s for s, o in out.sites.items() if o.access == "none"} == {"d", "e", "f"}
    delayed = incentive_outcome(policy(below_min="delayed", delay_days=7), ledger(), rounds=2)
    assert delayed.sites["e"].delay_days == 7
    assert delayed.sites["e"].until is None  # the release day is not known


def test_a_site_the_ledger_never_measured_is_flagged_not_forgotten() -> None:
    agreed = policy(below_min="none")
    out = incentive_outcome(agreed, ledger(), rounds=2, sites=["a", "g"])
    assert list(out.sites) == ["a", "b", "c", "d", "e", "f", "g"]
    g = out.sites["g"]
    assert (g.value, g.share, g.reward_share, g.free_rider, g.access) == (0, 0, 0, True, "none")
    assert g.reasons[0] == "never measured: no update of the site's entered a measured round"
    assert out.sites["a"] == incentive_outcome(agreed, ledger(), rounds=2).sites["a"]
    book = ledger().to_json()
    assert verify_outcome(agreed, book, out.to_json(), "g") == []
    data = json.loads(out.to_json())
    del data["sites"]["b"]
    assert verify_outcome(agreed, book, json.dumps(data), "a") == [
        "the outcome leaves out sites of the ledger: b"
    ]
    with pytest.raises(ConfigurationError, match="site name"):
        incentive_outcome(agreed, ledger(), rounds=2, sites=["../x"])
    with pytest.raises(ConfigurationError, match="sites must be a collection"):
        incentive_outcome(agreed, ledger(), rounds=2, sites="abc")


def test_no_positive_value_pays_no_one() -> None:
    bad = ContributionLedger().add(_round(1, {"a": -0.01, "b": 0.0}))
    out = incentive_outcome(policy(), bad, rounds=1)
    assert all(o.free_rider and o.reward_share == 0.0 for o in out.sites.values())
    assert incentive_outcome(policy(), ContributionLedger(), rounds=1).sites == {}


def test_the_outcome_is_deterministic_and_refuses_what_does_not_fit() -> None:
    first = incentive_outcome(policy(min_share=0.1, below_min="none"), ledger(), rounds=3)
    shuffled = ContributionLedger()
    for r in ledger().rounds:
        shuffled = shuffled.add(_round(r.server_round, dict(reversed(r.values.items())),
                                       free_riders=r.free_riders))  # fmt: skip
    again = incentive_outcome(policy(min_share=0.1, below_min="none"), shuffled, rounds=3)
    assert first.to_json() == again.to_json()
    with pytest.raises(ConfigurationError, match="round 1 was measured by leave_one_out"):
        incentive_outcome(
            policy(), ContributionLedger().add(_round(1, {"a": 1.0}, method="leave_one_out")),
            rounds=1,
        )  # fmt: skip
    with pytest.raises(ConfigurationError, match="rounds must be an integer ≥ 2"):
        incentive_outcome(policy(), ledger(), rounds=1)
    with pytest.raises(ConfigurationError, match="policy must be an IncentivePolicy"):
        incentive_outcome({"measure": "shapley"}, ledger(), rounds=2)  # type: ignore[arg-type]


# -- the outcome's JSON, read as hostile input ---------------------------------------------------


def _outcome() -> IncentiveOutcome:
    return incentive_outcome(
        policy(min_share=0.1, below_min="delayed", delay_days=30),
        ledger(),
        rounds=5,
        released=RELEASED,
    )


def test_json_round_trip() -> None:
    out = _outcome()
    text = out.to_json()
    assert IncentiveOutcome.from_json(text) == out
    assert json.loads(text)["sites"]["c"]["until"] == "2027-01-05"
    earlier = incentive_outcome(
        policy(below_min="earlier_round", earlier_rounds=1), ledger(), rounds=5
    )
    assert IncentiveOutcome.from_json(earlier.to_json()) == earlier


def _edit(path: tuple[str, ...], value: Any) -> str:
    data = json.loads(_outcome().to_json())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ("[]", "must be an object with keys"),
        (_outcome().to_json().replace('"value": 0.08', '"value": NaN'), "NaN is not a number"),
        (_outcome().to_json().replace('"value": 0.08', '"value": Infinity'), "Infinity"),
        (_edit(("format",), "biofed-incentives/0"), "format must be"),
        (_edit(("extra",), 1), "must be an object with keys"),
        (_edit(("rounds",), 0), "rounds must be an integer ≥ 1"),
        (_edit(("rounds",), True), "rounds must be an integer"),
        (_edit(("released",), "tomorrow"), "released must be a YYYY-MM-DD date"),
        (_edit(("ledger_digest",), "00"), "ledger_digest must be 64"),
        (_edit(("measure",), "vibes"), "unknown measure"),
        (_edit(("sites",), []), "sites must be an object"),
        (_edit(("sites", "../etc"), _outcome().sites["a"].to_dict()), "site name"),
        (_edit(("sites", "a", "share"), 1.5), r"share must be in \[0, 1\]"),
        (_edit(("sites", "a", "reward_share"), "all"), "reward_share must be a number"),
        (_edit(("sites", "a", "value"), True), "value must be a number"),
        (_edit(("sites", "a", "access"), "vip"), "access must be one of"),
        (_edit(("sites", "a", "until"), "2027-01-05"), "go with access delayed"),
        (_edit(("sites", "c", "delay_days"), None), "go with access delayed"),
        (_edit(("sites", "c", "delay_days"), -1), "delay_days must be an integer ≥ 0"),
        (_edit(("sites", "a", "round"), 3), "round goes with access earlier_round"),
        (_edit(("sites", "a", "free_rider"), 0), "free_rider must be true or false"),
        (_edit(("sites", "a", "reasons"), ["x"] * 17), "reasons must be at most 16"),
        (_edit(("sites", "a", "reasons"), [1]), "reasons must be"),
        (_edit(("sites", "a", "bonus"), 1), "must be an object with keys"),
        (" " * (8 << 20) + "{}", "over"),
    ],
)
def test_hostile_outcome_json_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        IncentiveOutcome.from_json(text)
    assert "\n" not in str(info.value)


# -- a site verifies its own figures -------------------------------------------------------------


def test_each_site_verifies_the_true_figures_and_catches_a_changed_one() -> None:
    agreed = policy(min_share=0.1, below_min="delayed", delay_days=30)
    book = ledger().to_json()
    out = _outcome()
    text = out.to_json()
    for site in out.sites:
        assert verify_outcome(agreed, book, text, site, rounds=5, released=RELEASED) == []
    lowered = _edit(("sites", "b", "share"), 0.2)
    problems = verify_outcome(agreed, book, lowered, "b")
    assert len(problems) == 1
    assert problems[0].startswith("share: published 0.2, the ledger and policy give 0.3076")
    assert verify_outcome(agreed, book, lowered, "a") == []  # a's own figures are untouched
    denied = _edit(("sites", "a", "access"), "none")
    assert any(
        p.startswith("access: published 'none'") for p in verify_outcome(agreed, book, denied, "a")
    )
    paid = _edit(("sites", "e", "reward_share"), 0.5)
    assert verify_outcome(agreed, book, paid, "e")[0].startswith("reward_share")
    unflagged = _edit(("sites", "e", "free_rider"), False)
    assert any(p.startswith("free_rider") for p in verify_outcome(agreed, book, unflagged, "e"))


def test_verification_catches_another_ledger_policy_or_run() -> None:
    agreed = policy(min_share=0.1, below_min="delayed", delay_days=30)
    text = _outcome().to_json()
    other = ledger().add(_round(3, {"a": 0.5})).to_json()
    assert "digest differs" in " ".join(verify_outcome(agreed, other, text, "a"))
    stricter = policy(min_share=0.5, below_min="delayed", delay_days=30)
    assert any("access" in p for p in verify_outcome(stricter, ledger().to_json(), text, "b"))
    equal = policy(reward="equal", min_share=0.1, below_min="delayed", delay_days=30)
    assert (
        "the agreement says shapley / equal"
        in verify_outcome(equal, ledger().to_json(), text, "a")[0]
    )
    book = ledger().to_json()
    assert verify_outcome(agreed, book, text, "a", rounds=6) == [
        "the outcome counts 5 rounds, the run had 6"
    ]
    assert "released" in verify_outcome(agreed, book, text, "c", released=dt.date(2026, 1, 1))[0]
    assert verify_outcome(agreed, book, text, "z") == [
        "'z' is neither in the ledger nor in the outcome"
    ]
    assert "unreadable" in verify_outcome(agreed, "{", text, "a")[0]
    assert "unreadable" in verify_outcome(agreed, book, '{"sites": NaN}', "a")[0]


# -- exact Shapley recomputed from a published coalition table -----------------------------------


def _game() -> tuple[RoundGame, dict[str, float]]:
    """Four sites on a quadratic loss: a and a-copy send the same update (one player), z
    sends Δ = 0 (a null player)."""
    x = ParameterSet({"w": np.zeros(3)})
    target = np.array([1.0, 2.0, -1.0])
    steps = {"a": [1.0, 0.5, 0.0], "a-copy": [1.0, 0.5, 0.0], "b": [0.2, 1.5, -0.5],
             "c": [0.5, -0.5, -1.5], "z": [0.0, 0.0, 0.0]}  # fmt: skip
    weights = {"a": 10.0, "a-copy": 30.0, "b": 20.0, "c": 5.0, "z": 50.0}
    updates = {s: (ParameterSet({"w": np.array(d)}), weights[s]) for s, d in steps.items()}
    game = RoundGame(x, updates, lambda p: -float(np.sum((p["w"] - target) ** 2)))
    return game, dict(shapley(game).values)


def test_shapley_from_a_published_table_equals_the_measure() -> None:
    game, values = _game()
    table = coalition_table(game, server_round=4)
    assert table["players"] == [["a", "a-copy"], ["b"], ["c"]]
    assert table["free_riders"] == ["z"]
    assert table["split"] == pytest.approx({"a": 0.25, "a-copy": 0.75, "b": 1.0, "c": 1.0})
    assert len(table["values"]) == 8
    assert shapley_from_table(table) == values
    assert shapley_from_table(json.dumps(table)) == values
    # a changed coalition value changes the credits: the check can fail
    forged = {**table, "values": [*table["values"][:-1], table["values"][-1] + 0.5]}
    assert shapley_from_table(forged)["b"] != pytest.approx(values["b"])


def test_a_table_needs_every_coalition_computed() -> None:
    game, _ = _game()
    fresh = RoundGame(*_fresh_args())
    with pytest.raises(ConfigurationError, match="run exact shapley on the game first"):
        coalition_table(fresh)
    assert coalition_table(game)["server_round"] == 0


def _fresh_args() -> tuple[ParameterSet, dict[str, tuple[ParameterSet, float]], Any]:
    x = ParameterSet({"w": np.zeros(2)})
    ups = {
        "a": (ParameterSet({"w": np.ones(2)}), 1.0),
        "b": (ParameterSet({"w": -np.ones(2)}), 1.0),
    }
    return x, ups, lambda p: float(p["w"].sum())


def _table_with(**changes: Any) -> dict[str, Any]:
    game, _ = _game()
    return {**coalition_table(game), **changes}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("{", "not JSON"),
        ('{"values": [NaN]}', "NaN is not a number"),
        ("[]", "must be a JSON object"),
        (_table_with(extra=1), "has keys"),
        (_table_with(format="x"), "format must be"),
        (_table_with(server_round=-1), "server_round"),
        (_table_with(values=[0.0] * 7), r"values must list 2\^3 = 8"),
        (_table_with(values=[0.1] + [0.0] * 7), "values\\[0\\]"),
        (_table_with(values=[0.0, "x"] + [0.0] * 6), r"values\[1\] must be a number"),
        (_table_with(players=[["a", "a-copy"], ["b"], ["b"]]), "named twice"),
        (_table_with(players=[["a", "a-copy"], ["b"], []]), "at least one site"),
        (_table_with(players=[["a"]] * 11), "at most 10"),
        (_table_with(players=[["a", "a-copy"], ["b"], ["../c"]]), "site name"),
        (_table_with(free_riders=["b"]), "named twice"),
        (_table_with(split={"a": 0.5, "a-copy": 0.75, "b": 1.0, "c": 1.0}), "summing to 1"),
        (_table_with(split={"a": 0.25, "a-copy": 0.75, "b": 1.0}), "split must give"),
        (_table_with(split={"a": 1.25, "a-copy": -0.25, "b": 1.0, "c": 1.0}), r"in \(0, 1\]"),
    ],
)
def test_hostile_tables_are_refused(table: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        shapley_from_table(table)


# -- a run's round record (``Measured``'s ``contribution`` event, c-run's shape) ------------------


def _record(game: RoundGame, measured: Contributions) -> dict[str, Any]:
    """The round record as the run writes it: every evaluated non-empty coalition by its
    sorted sites (see biofed.contribution.Measured)."""
    coalitions = [
        {
            "sites": sorted(s for k, g in enumerate(game.groups) if mask >> k & 1 for s in g),
            "value": game.v(mask),
        }
        for mask in range(1, 1 << game.n)
        if game.has(mask)
    ]
    return {"contributions": measured.to_dict(), "coalitions": coalitions, "excluded": []}


def test_shapley_from_a_run_round_record() -> None:
    game, _ = _game()
    measured = shapley(game, server_round=2)
    record = _record(game, measured)
    again = shapley_from_table(json.dumps(record))
    assert again == pytest.approx(dict(measured.values), abs=1e-12)
    assert again["z"] == 0.0
    # the group's total is recomputed: a forged value for the pair shows
    forged = json.loads(json.dumps(record))
    forged["contributions"]["values"]["a"] += 0.3
    assert shapley_from_table(forged)["a"] + shapley_from_table(forged)["a-copy"] == (
        pytest.approx(measured.values["a"] + measured.values["a-copy"])
    )
    forged["coalitions"][0]["value"] += 0.1
    assert shapley_from_table(forged) != pytest.approx(dict(measured.values))


def test_a_round_record_without_every_coalition_is_refused() -> None:
    x, ups, value = _fresh_args()
    ups = {**ups, "c": (ParameterSet({"w": np.array([0.5, -2.0])}), 1.0)}
    game = RoundGame(x, ups, value)
    measured = leave_one_out(game)
    with pytest.raises(ConfigurationError, match="lacks 3 of the 7 coalitions"):
        shapley_from_table(_record(game, measured))
    game, _ = _game()
    record = _record(game, shapley(game))
    for entry, message in [
        ({"sites": ["a"], "value": 0.1}, "not a new set of whole players"),
        ({"sites": ["b"], "value": 0.1}, "not a new set of whole players"),
        ({"sites": ["z"], "value": 0.1}, "names a site that is no player"),
        ({"sites": [["b"]], "value": 0.1}, "names a site that is no player"),
        ({"sites": ["b"]}, "must be {sites, value}"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            shapley_from_table({**record, "coalitions": [*record["coalitions"], entry]})
    with pytest.raises(ConfigurationError, match="round record has keys"):
        shapley_from_table({**record, "extra": 1})


@settings(max_examples=60, deadline=None)
@given(
    site=st.sampled_from(["a", "b", "c", "d", "e", "f"]),
    key=st.sampled_from(["value", "share", "reward_share"]),
    change=st.floats(min_value=1e-6, max_value=0.5) | st.floats(min_value=-0.5, max_value=-1e-6),
)
def test_any_changed_figure_of_a_site_is_caught(site: str, key: str, change: float) -> None:
    agreed = policy(min_share=0.1, below_min="delayed", delay_days=30)
    data = json.loads(_outcome().to_json())
    data["sites"][site][key] += change
    problems = verify_outcome(agreed, ledger().to_json(), json.dumps(data), site)
    assert problems
    assert problems[0].startswith((f"{key}: published", "the published outcome is unreadable"))
