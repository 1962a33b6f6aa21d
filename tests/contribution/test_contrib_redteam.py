"""Red-team tests of biofed.contribution (issue 17): a site gaming its credit, hostile JSON
into the ledger / outcome / coalition-table readers, a ledger that lies to its reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biofed.contribution import (
    ContributionLedger,
    IncentiveOutcome,
    RoundGame,
    shapley,
    shapley_from_table,
)
from biofed.core import ConfigurationError, ParameterSet, PayloadError, RoundFailed

_DEEP = "[" * 100_000 + "]" * 100_000


def _value(p: ParameterSet) -> float:
    # concave score: the closer to (1, 1, 1), the better
    return float(-np.sum((p["w"] - 1.0) ** 2))


def _x() -> ParameterSet:
    return ParameterSet({"w": np.zeros(3)})


def _record(**over: object) -> dict[str, object]:
    rec: dict[str, object] = {
        "method": "shapley",
        "server_round": 1,
        "values": {"a": 0.5, "b": 0.25},
        "total": 0.75,
        "baseline": 0.0,
        "evaluations": 4,
        "seconds": 0.01,
        "permutations": 0,
        "converged": True,
        "skipped": False,
        "duplicates": [],
        "free_riders": [],
    }
    rec.update(over)
    return rec


# --- a site gaming its credit -------------------------------------------------------------


def test_copy_of_another_sites_update_shares_not_doubles() -> None:
    honest = np.array([1.0, 0.5, 0.8])
    other = np.array([0.2, 1.0, 0.1])
    alone = RoundGame(
        _x(),
        {"a": (ParameterSet({"w": honest}), 1.0), "o": (ParameterSet({"w": other}), 1.0)},
        _value,
    )
    base = shapley(alone).values["a"]
    copied = RoundGame(
        _x(),
        {
            "a": (ParameterSet({"w": honest}), 1.0),
            "copycat": (ParameterSet({"w": honest.copy()}), 1.0),
            "o": (ParameterSet({"w": other}), 1.0),
        },
        _value,
    )
    res = shapley(copied)
    assert ("a", "copycat") in res.duplicates
    # the pair gets about what the original gets alone (the copy reweights the mean), not twice
    assert res.values["a"] + res.values["copycat"] < 1.25 * base


def test_scaled_copy_is_grouped_with_the_original() -> None:
    honest = np.array([1.0, 0.5, 0.8])
    game = RoundGame(
        _x(),
        {
            "a": (ParameterSet({"w": honest}), 1.0),
            "scaled": (ParameterSet({"w": 0.3 * honest}), 1.0),
            "o": (ParameterSet({"w": np.array([0.2, 1.0, 0.1])}), 1.0),
        },
        _value,
    )
    assert ("a", "scaled") in game.duplicates


@pytest.mark.xfail(
    strict=True,
    reason="a duplicate group's value is split by declared weight (an existing test pins the "
    "split by weight); a copier that claims a huge weight takes the original's credit unless "
    "the job sets [strategy] max_weight. Needs a lead decision (equal split or capped split).",
)
def test_copy_with_a_huge_claimed_weight_does_not_steal_the_credit() -> None:
    honest = np.array([1.0, 0.5, 0.8])
    game = RoundGame(
        _x(),
        {
            "a": (ParameterSet({"w": honest}), 100.0),
            "thief": (ParameterSet({"w": honest.copy()}), 1e9),
            "o": (ParameterSet({"w": np.array([0.2, 1.0, 0.1])}), 100.0),
        },
        _value,
    )
    res = shapley(game)
    assert res.values["thief"] <= res.values["a"] + 1e-12


def test_noise_of_honest_size_is_not_credited_like_an_honest_site() -> None:
    rng = np.random.default_rng(7)
    honest = {f"h{i}": np.array([1.0, 0.9, 1.1]) + 0.05 * rng.standard_normal(3) for i in range(3)}
    noise = rng.standard_normal(3)
    noise *= np.linalg.norm(honest["h0"]) / np.linalg.norm(noise)
    updates = {s: (ParameterSet({"w": v}), 1.0) for s, v in honest.items()}
    updates["noisy"] = (ParameterSet({"w": noise}), 1.0)
    res = shapley(RoundGame(_x(), updates, _value))
    assert res.ranking()[-1] == "noisy"
    assert res.values["noisy"] < min(res.values[s] for s in honest) / 2


def test_update_that_makes_the_value_nan_or_inf_fails_the_measurement_cleanly() -> None:
    def fragile(p: ParameterSet) -> float:
        return float(np.log(1.0 - p["w"][0]))  # w[0] ≥ 1 → nan / -inf

    updates = {
        "a": (ParameterSet({"w": np.array([0.1, 0.0, 0.0])}), 1.0),
        "bad": (ParameterSet({"w": np.array([5.0, 0.0, 0.0])}), 1.0),
    }
    with np.errstate(all="ignore"), pytest.raises(RoundFailed, match="finite"):
        shapley(RoundGame(_x(), updates, fragile))
    with pytest.raises(PayloadError):
        RoundGame(_x(), {"a": (ParameterSet({"w": np.array([np.inf, 0.0, 0.0])}), 1.0)}, _value)


@pytest.mark.parametrize("weight", [float("inf"), float("nan"), -1.0, 0.0, True])
def test_absurd_claimed_weight_is_refused(weight: object) -> None:
    with pytest.raises(ConfigurationError, match="weight"):
        RoundGame(_x(), {"a": (ParameterSet({"w": np.ones(3)}), weight)}, _value)  # type: ignore[dict-item]


# --- hostile JSON into the readers ---------------------------------------------------------


def test_deeply_nested_json_is_refused_in_one_line_by_every_reader() -> None:
    with pytest.raises(ConfigurationError):
        ContributionLedger.from_json('{"rounds": ' + _DEEP + "}")
    with pytest.raises(ConfigurationError):
        IncentiveOutcome.from_json('{"format": ' + _DEEP + "}")
    with pytest.raises(ConfigurationError):
        shapley_from_table('{"values": ' + _DEEP + "}")


@pytest.mark.parametrize(
    "bad",
    [
        {"values": {"a": 10**400}},  # int too large for a float
        {"values": {"a": float("nan")}},
        {"total": float("inf")},
        {"values": {"a\nforged log line": 1.0}},
        {"values": {"": 1.0}},
    ],
)
def test_hostile_ledger_values_are_refused(bad: dict[str, object]) -> None:
    text = json.dumps({"rounds": [_record(**bad)]})
    with pytest.raises(ConfigurationError):
        ContributionLedger.from_json(text)


def test_huge_ledger_is_refused_before_parsing() -> None:
    text = json.dumps({"rounds": [_record(values={"a" * (100 << 20): 1.0})]})
    with pytest.raises(ConfigurationError, match="characters"):
        ContributionLedger.from_json(text)


def test_ledger_whose_totals_lie_is_refused() -> None:
    """A published ledger whose 'totals' disagree with its rounds would show its reader one
    figure while every outcome computed from it verifies against another."""
    honest = ContributionLedger.from_json(json.dumps({"rounds": [_record()]}))
    data = json.loads(honest.to_json())
    data["totals"]["b"] = 0.75  # the reader sees b worth as much as the round
    with pytest.raises(ConfigurationError, match="totals"):
        ContributionLedger.from_json(json.dumps(data))
    data = json.loads(honest.to_json())
    data["extra"] = "anything"
    with pytest.raises(ConfigurationError):
        ContributionLedger.from_json(json.dumps(data))
    assert ContributionLedger.from_json(honest.to_json()) == honest


# --- a researcher's [contribution] table ---------------------------------------------------


def _job(contribution: dict[str, object]) -> object:
    from biofed.coordinator import JobSpec

    return JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "min_nodes": 6, "min_replies": 4},
            "task": {"name": "cox_ph", "num_features": 39},
            "contribution": contribution,
        }
    )


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({"trusted_dataset": "ref", "max_evaluations": 10**12}, "max_evaluations"),
        ({"trusted_dataset": "ref", "max_evaluations": 1}, "max_evaluations"),
        ({"trusted_dataset": "ref", "max_evaluations": 1e9}, "max_evaluations"),
        ({"trusted_dataset": "../../etc/passwd"}, "trusted_dataset"),
        ({"trusted_dataset": "/srv/trusted.csv"}, "trusted_dataset"),
        ({"trusted_dataset": "ref", "method": "banzhaf"}, "method"),
        ({"trusted_dataset": "ref", "seed": -1}, "seed"),
        ({"trusted_dataset": "ref", "free_rider_norm": 0.0}, "free_rider_norm"),
    ],
)
def test_researchers_contribution_table_is_checked(table: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigurationError, match=field):
        _job(table)


def test_a_method_the_agreement_does_not_allow_is_refused_at_submit() -> None:
    from biofed.coordinator._job_contribution import check_incentives
    from biofed.governance import IncentivePolicy

    policy = IncentivePolicy(measure="shapley")
    spec = _job({"trusted_dataset": "ref", "method": "leave_one_out"})
    with pytest.raises(ConfigurationError, match="leave_one_out"):
        check_incentives(spec, policy)  # type: ignore[arg-type]
    check_incentives(_job({"trusted_dataset": "ref"}), policy)  # type: ignore[arg-type]


# --- a tampered ledger against the outcome -----------------------------------------------


def test_exact_shapley_round_whose_values_do_not_sum_to_its_total_is_refused() -> None:
    """Exact Shapley values are efficient (they sum to v(N)): a ledger that raises one site's
    value without touching the round's total is tampered, and an outcome computed from it
    must not verify."""
    from biofed.contribution import incentive_outcome, verify_outcome
    from biofed.governance import IncentivePolicy

    tampered = json.dumps({"rounds": [_record(values={"a": 0.5, "b": 0.75})]})  # total 0.75
    with pytest.raises(ConfigurationError, match="sum"):
        ContributionLedger.from_json(tampered)
    policy = IncentivePolicy(measure="shapley")
    honest = ContributionLedger.from_json(json.dumps({"rounds": [_record()]}))
    out = incentive_outcome(policy, honest, rounds=1)
    assert verify_outcome(policy, honest.to_json(), out.to_json(), "b") == []
    problems = verify_outcome(policy, tampered, out.to_json(), "b")
    assert problems
    assert "unreadable" in problems[0]


def test_a_contributing_site_marked_a_free_rider_in_the_ledger_is_refused() -> None:
    forged = json.dumps({"rounds": [_record(free_riders=["b"])]})  # b's value is 0.25
    with pytest.raises(ConfigurationError, match="free-rider"):
        ContributionLedger.from_json(forged)


def test_duplicate_keys_are_refused_by_every_reader() -> None:
    """Two readers could resolve a doubled key differently (a viewer shows the first figure,
    the verifier uses the last): published text must have one figure per key."""
    from biofed.contribution import incentive_outcome, ledger_from_run_record
    from biofed.governance import IncentivePolicy

    text = json.dumps({"rounds": [_record()]})
    doubled = text.replace('"a": 0.5', '"a": 0.0, "a": 0.5')
    assert doubled != text
    with pytest.raises(ConfigurationError, match="twice"):
        ContributionLedger.from_json(doubled)
    with pytest.raises(ConfigurationError, match="twice"):
        ledger_from_run_record('{"ledger": ' + doubled + "}")
    ledger = ContributionLedger.from_json(text)
    out = incentive_outcome(IncentivePolicy(measure="shapley"), ledger, rounds=1).to_json()
    with pytest.raises(ConfigurationError, match="twice"):
        IncentiveOutcome.from_json(out.replace('"rounds": 1', '"rounds": 7, "rounds": 1'))
    with pytest.raises(ConfigurationError, match="twice"):
        shapley_from_table('{"values": [0.0], "values": [0.0]}')


def test_run_record_and_events_readers_refuse_deep_nesting() -> None:
    from biofed.contribution import CONTRIBUTION_EVENT, ledger_from_events, ledger_from_run_record

    with pytest.raises(ConfigurationError):
        ledger_from_run_record('{"ledger": ' + _DEEP + "}")
    with pytest.raises(ConfigurationError):
        ledger_from_events([(1, CONTRIBUTION_EVENT, _DEEP)])


# --- reading another run's contributions ---------------------------------------------------


def test_a_site_cannot_read_another_runs_contributions() -> None:
    """``biofed run contributions RUN`` reads the run's events (``watch_run``): a site, or
    another researcher, is refused exactly as for the run's status."""
    from biofed.coordinator import Coordinator, InMemoryStateStore, JobSpec
    from biofed.core import PolicyViolation
    from biofed.transport.grpc import Peer

    coordinator = Coordinator(InMemoryStateStore())
    spec = JobSpec.from_mapping(
        {
            "run": {"name": "j", "dataset": "brca", "rounds": 1},
            "task": {"name": "cox_ph", "num_features": 3},
        }
    )  # access is the run's, whatever its tables
    alice = Peer(name="alice", role="researcher")
    run_id = coordinator.submit_run(alice, spec.to_json()).run_id
    for peer in (Peer(name="a", role="site"), Peer(name="carol", role="researcher")):
        with pytest.raises(PolicyViolation) as status:
            coordinator.get_run(peer, run_id)
        with pytest.raises(PolicyViolation) as events:
            next(iter(coordinator.watch_run(peer, run_id, 0, False, lambda: True)))
        assert str(events.value) == str(status.value)
    assert coordinator.get_run(alice, run_id).run_id == run_id


def test_integers_beyond_float_range_are_refused_by_the_outcome_and_table_readers() -> None:
    from biofed.contribution import incentive_outcome, verify_outcome
    from biofed.governance import IncentivePolicy

    policy = IncentivePolicy(measure="shapley")
    ledger = ContributionLedger.from_json(json.dumps({"rounds": [_record()]}))
    data = json.loads(incentive_outcome(policy, ledger, rounds=1).to_json())
    data["sites"]["a"]["value"] = 10**400
    with pytest.raises(ConfigurationError, match="finite"):
        IncentiveOutcome.from_json(json.dumps(data))
    problems = verify_outcome(policy, ledger.to_json(), json.dumps(data), "a")
    assert problems
    assert "unreadable" in problems[0]
    table = {
        "format": "biofed-coalitions/1",
        "server_round": 1,
        "players": [["a"], ["b"]],
        "split": {"a": 1.0, "b": 1.0},
        "free_riders": [],
        "values": [0.0, 10**400, 1.0, 1.0],
    }
    with pytest.raises(ConfigurationError, match="finite"):
        shapley_from_table(json.dumps(table))


def test_site_names_with_newlines_are_refused_in_an_outcome() -> None:
    from biofed.contribution import incentive_outcome
    from biofed.governance import IncentivePolicy

    ledger = ContributionLedger.from_json(json.dumps({"rounds": [_record()]}))
    data = json.loads(
        incentive_outcome(IncentivePolicy(measure="shapley"), ledger, rounds=1).to_json()
    )
    data["sites"]["a\nforged"] = data["sites"]["a"]
    with pytest.raises(ConfigurationError, match="site name"):
        IncentiveOutcome.from_json(json.dumps(data))
    with pytest.raises(ConfigurationError, match="characters"):
        IncentiveOutcome.from_json('{"format": "' + "x" * (100 << 20) + '"}')


@pytest.mark.xfail(
    strict=True,
    reason="a free-rider that replays the previous round's global step (Lin et al. 2019's "
    "'delta weights' free-rider; Fraboni et al. 2021) trains nothing yet is credited like an "
    "honest site: RoundGame sees one round only. A fix needs Measured to keep the previous "
    "aggregate step and treat an update near it as a null player (design for the lead).",
)
def test_a_free_rider_replaying_the_last_global_step_is_not_credited() -> None:
    rng = np.random.default_rng(1)
    target = np.ones(20)

    def value(p: ParameterSet) -> float:
        return float(-np.sum((p["w"] - target) ** 2))

    honest = {f"h{i}": 0.8 * target + 0.8 * rng.standard_normal(20) for i in range(5)}
    last_step = 0.9 * np.mean(list(honest.values()), axis=0) + 0.1 * rng.standard_normal(20)
    updates = {s: (ParameterSet({"w": v}), 1.0) for s, v in honest.items()}
    updates["rider"] = (ParameterSet({"w": last_step}), 1.0)
    res = shapley(RoundGame(ParameterSet({"w": np.zeros(20)}), updates, value))
    assert res.values["rider"] < min(res.values[s] for s in honest)
