"""The study agreement's incentive policy applied to a run's contribution ledger.

:func:`incentive_outcome` turns the signed ``[incentives]`` table
(:class:`~biofed.governance.IncentivePolicy`) and the run's
:class:`~biofed.contribution.ContributionLedger` into each site's figures: its value over the
run, its share of the positive value, its reward share, its access to the final model and
whether it is flagged as a free-rider, each with the reasons. The computation is a pure
function of the policy, the ledger and the run's length (and the model's release day, for
delayed access), so a site that has the published ledger and outcome recomputes its own
figures with :func:`verify_outcome` and learns whether they follow.

The rules, in order:

1. Every round of the ledger must have been measured by the policy's ``measure``.
2. ``value``: the site's values summed over the rounds (0 for a site of the run the ledger
   never measured, e.g. every update rejected); ``share``: its positive value over
   the sum of the positive values (0 for a site whose value is ≤ 0, all 0 when none is
   positive).
3. ``free_rider``: the share is at most ``free_rider_share``, or the measure marked the
   site's update as a null player (a (near-)zero update) in some round.
4. ``reward_share``: 0 for a flagged site; the others share 1 proportionally to their
   positive value (``proportional``; all 0 when none is positive) or equally (``equal``).
5. ``access``: ``below_min``'s for a flagged site or one whose share is below ``min_share``;
   ``full`` otherwise. ``delayed`` carries ``delay_days`` (and ``until``, the release day
   plus the delay, when the release day is known); ``earlier_round`` the round whose model
   the site gets (the final round minus ``earlier_rounds``; 0, the initial model, at least).

Security notes
--------------
Threat: a coordinator that publishes figures which do not follow from the agreed policy
(a share lowered, a site flagged that contributed). The outcome names the digest of the
ledger it was computed from; :func:`verify_outcome` re-reads the published ledger and
outcome as hostile input (strict keys, finite numbers, no NaN), recomputes, and lists every
figure of the site's that differs. What it cannot show is that the ledger's values are true
measurements: with exact Shapley, :func:`~biofed.contribution.shapley_from_table` checks
them against the published coalition values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biofed.contribution._result import ContributionLedger, strict_json
from biofed.core import ConfigurationError, check_id
from biofed.governance import INCENTIVE_ACCESS, INCENTIVE_MEASURES, IncentivePolicy

#: The format marker of an outcome's JSON.
OUTCOME_FORMAT = "biofed-incentives/1"

_MAX_OUTCOME_CHARS = 8 << 20
_MAX_REASONS = 16
_MAX_REASON_CHARS = 500
_SITE_KEYS = (
    "value",
    "share",
    "reward_share",
    "access",
    "until",
    "delay_days",
    "round",
    "free_rider",
    "reasons",
)
_TOP_KEYS = ("format", "measure", "reward", "rounds", "released", "ledger_digest", "sites")


def _fail(message: str) -> ConfigurationError:
    return ConfigurationError(f"incentives: {message}")


def _number(value: object, what: str, *, low: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(f"{what} must be a number, got {value!r:.40}")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer beyond float range (10**400)
        number = math.inf
    if not math.isfinite(number):
        raise _fail(f"{what} must be finite, got {number}")
    if low is not None and not low <= number <= 1.0:
        raise _fail(f"{what} must be in [0, 1], got {number}")
    return number


def _optional_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(f"{what} must be an integer ≥ 0 or null, got {value!r:.40}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteOutcome:
    """One site's figures under the incentive policy.

    Attributes
    ----------
    value:
        The site's contribution summed over the run's rounds (units of the value function).
    share:
        Its share of the run's positive value, in [0, 1].
    reward_share:
        Its share of the reward, in [0, 1] (0 when flagged).
    access:
        ``"full"``, ``"delayed"``, ``"earlier_round"`` or ``"none"``.
    until:
        ``delayed`` with a known release day: the first day of access.
    delay_days:
        ``delayed``: days after the final model's release.
    round:
        ``earlier_round``: the round whose model the site gets (0: the initial model).
    free_rider:
        Whether the site is flagged as a free-rider.
    reasons:
        Why (one line each), e.g. the share below ``min_share``, the rounds the measure
        marked its update a null player.
    """

    value: float
    share: float
    reward_share: float
    access: str
    until: dt.date | None = None
    delay_days: int | None = None
    round: int | None = None
    free_rider: bool = False
    reasons: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _number(self.value, "value"))
        object.__setattr__(self, "share", _number(self.share, "share", low=0.0))
        object.__setattr__(self, "reward_share", _number(self.reward_share, "reward_share", low=0))
        if self.access not in INCENTIVE_ACCESS:
            raise _fail(f"access must be one of {', '.join(INCENTIVE_ACCESS)}, got {self.access!r}")
        if self.until is not None and (
            not isinstance(self.until, dt.date) or isinstance(self.until, dt.datetime)
        ):
            raise _fail(f"until must be a date, got {self.until!r:.40}")
        _optional_int(self.delay_days, "delay_days")
        _optional_int(self.round, "round")
        if (self.access == "delayed") != (self.delay_days is not None) or (
            self.until is not None and self.access != "delayed"
        ):
            raise _fail("delay_days (and until) go with access delayed, and only with it")
        if (self.access == "earlier_round") != (self.round is not None):
            raise _fail("round goes with access earlier_round, and only with it")
        if not isinstance(self.free_rider, bool):
            raise _fail("free_rider must be true or false")
        reasons = self.reasons
        if (
            not isinstance(reasons, (tuple, list))
            or len(reasons) > _MAX_REASONS
            or not all(isinstance(r, str) and len(r) <= _MAX_REASON_CHARS for r in reasons)
        ):
            raise _fail(f"reasons must be at most {_MAX_REASONS} lines of text")
        object.__setattr__(self, "reasons", tuple(reasons))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (``until`` as an ISO date)."""
        return {
            "value": self.value,
            "share": self.share,
            "reward_share": self.reward_share,
            "access": self.access,
            "until": None if self.until is None else self.until.isoformat(),
            "delay_days": self.delay_days,
            "round": self.round,
            "free_rider": self.free_rider,
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_dict(cls, data: object, site: str) -> SiteOutcome:
        """Read :meth:`to_dict`'s output back (checked like any input)."""
        if not isinstance(data, Mapping) or set(data) != set(_SITE_KEYS):
            raise _fail(f"the figures of {site!r} must be an object with keys {list(_SITE_KEYS)}")
        return cls(
            value=data["value"],
            share=data["share"],
            reward_share=data["reward_share"],
            access=data["access"],
            until=_date(data["until"], f"until of {site!r}"),
            delay_days=data["delay_days"],
            round=data["round"],
            free_rider=data["free_rider"],
            reasons=data["reasons"],
        )


def _date(value: object, what: str) -> dt.date | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 10:
        raise _fail(f"{what} must be a YYYY-MM-DD date or null, got {value!r:.40}")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _fail(f"{what} must be a YYYY-MM-DD date, got {value!r}") from None


def ledger_digest(ledger: ContributionLedger) -> str:
    """Hex SHA-256 of the ledger's JSON (:meth:`ContributionLedger.to_json`): which ledger an
    outcome was computed from."""
    return hashlib.sha256(ledger.to_json().encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class IncentiveOutcome:
    """The incentive policy's outcome for every site of a run (see the module's rules).

    Attributes
    ----------
    measure, reward:
        The policy's measure and reward rule.
    rounds:
        The run's number of rounds (its final round).
    released:
        The day the final model was released (None: not known; delayed access then carries
        ``delay_days`` only).
    ledger_digest:
        :func:`ledger_digest` of the ledger the outcome was computed from.
    sites:
        Each site's :class:`SiteOutcome`, by name (sorted).
    """

    measure: str
    reward: str
    rounds: int
    released: dt.date | None = None
    ledger_digest: str
    sites: Mapping[str, SiteOutcome] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.measure not in INCENTIVE_MEASURES:
            raise _fail(f"unknown measure {self.measure!r:.40}")
        if self.reward not in ("proportional", "equal"):
            raise _fail(f"unknown reward {self.reward!r:.40}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise _fail(f"rounds must be an integer ≥ 1, got {self.rounds!r:.40}")
        if self.released is not None and (
            not isinstance(self.released, dt.date) or isinstance(self.released, dt.datetime)
        ):
            raise _fail(f"released must be a date, got {self.released!r:.40}")
        digest = self.ledger_digest
        if (
            not isinstance(digest, str)
            or len(digest) != 64
            or any(c not in "0123456789abcdef" for c in digest)
        ):
            raise _fail("ledger_digest must be 64 lowercase hex digits")
        if not isinstance(self.sites, Mapping) or not all(
            isinstance(v, SiteOutcome) for v in self.sites.values()
        ):
            raise _fail("sites must map site names to SiteOutcome")
        sites = {
            check_id(s, what="incentives: a site name"): self.sites[s] for s in sorted(self.sites)
        }
        object.__setattr__(self, "sites", MappingProxyType(sites))

    def to_json(self) -> str:
        """The outcome as JSON (sorted keys; for the audit log and the result's metadata)."""
        return json.dumps(
            {
                "format": OUTCOME_FORMAT,
                "measure": self.measure,
                "reward": self.reward,
                "rounds": self.rounds,
                "released": None if self.released is None else self.released.isoformat(),
                "ledger_digest": self.ledger_digest,
                "sites": {s: o.to_dict() for s, o in self.sites.items()},
            },
            sort_keys=True,
            allow_nan=False,
        )

    @classmethod
    def from_json(cls, text: str) -> IncentiveOutcome:
        """Read :meth:`to_json`'s output back, as hostile input: strict keys, finite
        numbers (NaN and Infinity refused), bounded size.

        Raises
        ------
        ConfigurationError
            One line naming what is wrong.
        """
        if not isinstance(text, str):
            raise _fail("the outcome must be JSON text")
        if len(text) > _MAX_OUTCOME_CHARS:
            raise _fail(f"the outcome is over {_MAX_OUTCOME_CHARS} characters")
        try:
            data = strict_json(text)
        except ValueError as exc:
            raise _fail(f"the outcome is not JSON: {exc}") from None
        if not isinstance(data, Mapping) or set(data) != set(_TOP_KEYS):
            raise _fail(f"the outcome must be an object with keys {list(_TOP_KEYS)}")
        if data["format"] != OUTCOME_FORMAT:
            raise _fail(f"format must be {OUTCOME_FORMAT!r}")
        sites = data["sites"]
        if not isinstance(sites, Mapping):
            raise _fail("sites must be an object of site → figures")
        return cls(
            measure=data["measure"],
            reward=data["reward"],
            rounds=data["rounds"],
            released=_date(data["released"], "released"),
            ledger_digest=data["ledger_digest"],
            sites={str(s): SiteOutcome.from_dict(f, str(s)[:40]) for s, f in sites.items()},
        )


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def incentive_outcome(
    policy: IncentivePolicy,
    ledger: ContributionLedger,
    *,
    rounds: int,
    released: dt.date | None = None,
    sites: Iterable[str] = (),
) -> IncentiveOutcome:
    """Apply ``policy`` to the run's ``ledger`` (deterministic; see the module's rules).

    Parameters
    ----------
    policy:
        The study agreement's ``[incentives]``.
    ledger:
        The run's contributions, every round measured by ``policy.measure``.
    rounds:
        The run's number of rounds (≥ the last round in the ledger): ``earlier_round``
        access counts back from it.
    released:
        The day the final model is released (``delayed`` access then has ``until``).
    sites:
        The run's sites: those the ledger never measured (every update rejected or
        missing) get value 0, are flagged, and get the access ``below_min`` names.

    Raises
    ------
    ConfigurationError
        A round measured by another method, ``rounds`` below a round of the ledger, bad
        arguments.
    """
    if not isinstance(policy, IncentivePolicy):
        raise _fail("policy must be an IncentivePolicy (the agreement's [incentives])")
    if not isinstance(ledger, ContributionLedger):
        raise _fail("ledger must be a ContributionLedger")
    last = max((r.server_round for r in ledger.rounds), default=0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < max(last, 1):
        raise _fail(f"rounds must be an integer ≥ {max(last, 1)} (the ledger's last round)")
    for r in ledger.rounds:
        if r.method != policy.measure:
            raise _fail(
                f"round {r.server_round} was measured by {r.method}; the agreement names "
                f"{policy.measure}"
            )
    if isinstance(sites, str) or not isinstance(sites, Iterable):
        raise _fail("sites must be a collection of site names")
    unmeasured = {check_id(s, what="incentives: a site name") for s in sites} - set(ledger.sites)
    totals = {**ledger.totals(), **dict.fromkeys(unmeasured, 0.0)}
    shares = {**ledger.shares(), **dict.fromkeys(unmeasured, 0.0)}
    names = sorted(totals)
    marked = {s: sorted(r.server_round for r in ledger.rounds if s in r.free_riders) for s in names}
    flagged = {s: shares[s] <= policy.free_rider_share or bool(marked[s]) for s in names}
    eligible = [s for s in names if not flagged[s]]
    rewards = dict.fromkeys(names, 0.0)
    if policy.reward == "equal":
        rewards.update({s: 1.0 / len(eligible) for s in eligible})
    else:
        whole = math.fsum(max(totals[s], 0.0) for s in eligible)
        if whole > 0:
            rewards.update({s: max(totals[s], 0.0) / whole for s in eligible})
    out: dict[str, SiteOutcome] = {}
    for s in names:
        reasons: list[str] = []
        if s in unmeasured:
            reasons.append("never measured: no update of the site's entered a measured round")
        if totals[s] < 0:
            reasons.append(f"value {_fmt(totals[s])} < 0: the site's updates cost the model")
        if marked[s]:
            shown = ", ".join(map(str, marked[s][:10])) + (" …" if len(marked[s]) > 10 else "")
            reasons.append(f"the measure marked its update a free-rider in round(s) {shown}")
        if shares[s] <= policy.free_rider_share:
            reasons.append(
                f"share {_fmt(shares[s])} ≤ free_rider_share {_fmt(policy.free_rider_share)}"
            )
        if flagged[s]:
            reasons.append("flagged as a free-rider: no reward")
        below = shares[s] < policy.min_share
        if below:
            reasons.append(f"share {_fmt(shares[s])} < min_share {_fmt(policy.min_share)}")
        access = policy.below_min if (below or flagged[s]) else "full"
        delay_days = until = earlier = None
        if access == "delayed":
            delay_days = policy.delay_days
            until = None if released is None else released + dt.timedelta(days=delay_days)
            reasons.append(f"access to the final model {delay_days} day(s) after its release")
        elif access == "earlier_round":
            earlier = max(rounds - policy.earlier_rounds, 0)
            reasons.append(
                f"access to the model of round {earlier} (final round {rounds})"
                if earlier
                else "access to the initial model only"
            )
        elif access == "none":
            reasons.append("no access to the final model")
        out[s] = SiteOutcome(
            value=totals[s],
            share=shares[s],
            reward_share=rewards[s],
            access=access,
            until=until,
            delay_days=delay_days,
            round=earlier,
            free_rider=flagged[s],
            reasons=tuple(reasons),
        )
    return IncentiveOutcome(
        measure=policy.measure,
        reward=policy.reward,
        rounds=rounds,
        released=released,
        ledger_digest=ledger_digest(ledger),
        sites=out,
    )


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def verify_outcome(
    policy: IncentivePolicy,
    ledger_json: str,
    outcome_json: str,
    site: str,
    *,
    rounds: int | None = None,
    released: dt.date | None = None,
) -> list[str]:
    """What differs between the published figures of ``site`` and what follows from the
    published ledger and the agreement's policy (empty: they follow).

    ``rounds`` and ``released``, when the site knows them, are checked against the
    outcome's; otherwise the outcome's are used. Both texts are read as hostile input: an
    unreadable one is reported, not raised.
    """
    try:
        ledger = ContributionLedger.from_json(ledger_json)
    except ConfigurationError as exc:
        return [f"the published ledger is unreadable: {exc}"]
    try:
        published = IncentiveOutcome.from_json(outcome_json)
    except ConfigurationError as exc:
        return [f"the published outcome is unreadable: {exc}"]
    problems: list[str] = []
    if published.measure != policy.measure or published.reward != policy.reward:
        problems.append(
            f"the outcome applies measure {published.measure} / reward {published.reward}; "
            f"the agreement says {policy.measure} / {policy.reward}"
        )
    if rounds is not None and published.rounds != rounds:
        problems.append(f"the outcome counts {published.rounds} rounds, the run had {rounds}")
    if released is not None and published.released != released:
        problems.append(
            f"the outcome says the model was released {published.released}, not {released}"
        )
    if published.ledger_digest != ledger_digest(ledger):
        problems.append("the outcome was not computed from the published ledger (digest differs)")
    try:
        expected = incentive_outcome(
            policy,
            ledger,
            rounds=published.rounds,
            released=published.released,
            sites=published.sites,
        )
    except ConfigurationError as exc:
        return [*problems, f"the ledger cannot give an outcome under the policy: {exc}"]
    left_out = sorted(set(ledger.sites) - set(published.sites))
    if left_out:
        problems.append(f"the outcome leaves out sites of the ledger: {', '.join(left_out)}")
    mine, theirs = expected.sites.get(site), published.sites.get(site)
    if mine is None and theirs is None:
        return [*problems, f"{site!r} is neither in the ledger nor in the outcome"]
    if mine is None:
        return [*problems, f"{site!r} is in the outcome but not in the ledger"]
    if theirs is None:
        return [*problems, f"{site!r} is in the ledger but not in the outcome"]
    for key in ("value", "share", "reward_share"):
        a, b = getattr(theirs, key), getattr(mine, key)
        if not _same(a, b):
            problems.append(f"{key}: published {a!r}, the ledger and policy give {b!r}")
    for key in ("access", "until", "delay_days", "round", "free_rider", "reasons"):
        a, b = getattr(theirs, key), getattr(mine, key)
        if a != b:
            problems.append(f"{key}: published {a!r:.200}, the ledger and policy give {b!r:.200}")
    return problems
