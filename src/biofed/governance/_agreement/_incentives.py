"""The study agreement's ``[incentives]`` table: how contributions turn into rewards and access.

Every party signs it with the rest of the agreement (it is part of
:meth:`StudyAgreement.canonical_bytes`), so the measure, the reward rule and the access a
low contributor gets cannot be changed after the sites agreed to them. The outcome for each
site is computed from this policy and the run's contribution ledger by
``biofed.contribution.incentive_outcome``; each site can recompute its own figures
(``biofed.contribution.verify_outcome``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from biofed.core import ConfigurationError
from biofed.core.checks import check_float, check_int

#: The contribution measures a policy may name (``biofed.contribution.METHODS``; a test pins
#: them equal: governance cannot import contribution, which sits above it).
INCENTIVE_MEASURES = ("shapley", "gtg_shapley", "tmc_shapley", "leave_one_out")

#: How rewards are shared: ``proportional`` to accumulated positive value, or ``equal``.
INCENTIVE_REWARDS = ("proportional", "equal")

#: The access a site below ``min_share`` (or flagged as a free-rider) gets to the final model.
INCENTIVE_ACCESS = ("full", "delayed", "earlier_round", "none")

#: The keys of an ``[incentives]`` table.
INCENTIVE_KEYS = (
    "measure",
    "reward",
    "min_share",
    "below_min",
    "delay_days",
    "earlier_rounds",
    "free_rider_share",
    "secure_mechanism",
)

#: Mechanisms that would let contributions be measured under secure aggregation (coalitions
#: of at least m sites with DP noise on the sums, the leakage in the sites' ledgers…). None
#: is implemented: a ``secure_mechanism`` is refused, whatever it names.
SECURE_MECHANISMS: tuple[str, ...] = ()

_MAX_DELAY_DAYS = 3650
_MAX_EARLIER_ROUNDS = 10_000


def _choice(value: object, key: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigurationError(
            f"incentives.{key} must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def _no_secure_mechanism(value: object) -> None:
    known = ", ".join(SECURE_MECHANISMS) or "none"
    raise ConfigurationError(
        f"incentives.secure_mechanism {str(value)[:40]!r} is not implemented (mechanisms "
        f"biofed has: {known}); leave it out: contributions are then refused under secure "
        "aggregation"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IncentivePolicy:
    """What a study's contribution measurement decides: rewards, access, free-riders.

    Attributes
    ----------
    measure:
        The contribution measure (one of :data:`INCENTIVE_MEASURES`); every round of the
        run's ledger must have been measured by it.
    reward:
        ``"proportional"``: reward shares ∝ each site's accumulated positive value;
        ``"equal"``: equal shares. Flagged free-riders get no reward in either.
    min_share:
        In [0, 1]: a site whose share of the run's positive value is below it gets the
        access named by ``below_min`` (a flagged free-rider too).
    below_min:
        ``"full"`` (flag only), ``"delayed"`` (the final model ``delay_days`` after its
        release), ``"earlier_round"`` (the model ``earlier_rounds`` rounds before the final
        one) or ``"none"``.
    delay_days, earlier_rounds:
        Required (≥ 1) with ``delayed`` and ``earlier_round`` respectively, 0 otherwise.
    free_rider_share:
        In [0, 1]: a site whose share is at most this, or whose update the measure marked
        as a free-rider (a null player) in some round, is flagged.
    secure_mechanism:
        None: contributions are refused under secure aggregation (two coalition sums that
        differ by one site reveal its update). No mechanism is implemented
        (:data:`SECURE_MECHANISMS` is empty), so any value is refused.

    Security notes
    --------------
    Threat: a coordinator (or a party) that changes the rules after the sites agreed, e.g.
    raising ``min_share`` to deny one site the model. The table is in the signed bytes of the
    agreement; an edited table fails every signature. Threat: contributions measured under
    secure aggregation leak single updates by subtraction (issue 17); refused unless a stated
    mechanism is agreed, and none exists yet.
    """

    measure: str
    reward: str = "proportional"
    min_share: float = 0.0
    below_min: str = "full"
    delay_days: int = 0
    earlier_rounds: int = 0
    free_rider_share: float = 0.0
    secure_mechanism: str | None = None

    def __post_init__(self) -> None:
        _choice(self.measure, "measure", INCENTIVE_MEASURES)
        _choice(self.reward, "reward", INCENTIVE_REWARDS)
        _choice(self.below_min, "below_min", INCENTIVE_ACCESS)
        for key in ("min_share", "free_rider_share"):
            value = check_float(getattr(self, key), f"incentives.{key}", minimum=0, maximum=1)
            object.__setattr__(self, key, value)
        for key, needs, most in (
            ("delay_days", "delayed", _MAX_DELAY_DAYS),
            ("earlier_rounds", "earlier_round", _MAX_EARLIER_ROUNDS),
        ):
            value = check_int(getattr(self, key), f"incentives.{key}", minimum=0, maximum=most)
            if self.below_min == needs and value < 1:
                raise ConfigurationError(
                    f'incentives.{key} must be ≥ 1 with below_min = "{needs}", got {value}'
                )
            if self.below_min != needs and value:
                raise ConfigurationError(
                    f'incentives.{key} is for below_min = "{needs}" only; below_min is '
                    f'"{self.below_min}"'
                )
            object.__setattr__(self, key, value)
        if self.secure_mechanism is not None:
            _no_secure_mechanism(self.secure_mechanism)

    @property
    def allows_secure_aggregation(self) -> bool:
        """Whether contributions may be measured under secure aggregation (never, today)."""
        return self.secure_mechanism is not None and self.secure_mechanism in SECURE_MECHANISMS

    def check_secure_aggregation(self, secure: bool) -> None:
        """Refuse a secure-aggregation run's contributions unless a mechanism is agreed.

        Raises
        ------
        ConfigurationError
            ``secure`` and no agreed mechanism (always, as none is implemented).
        """
        if secure and not self.allows_secure_aggregation:
            known = ", ".join(SECURE_MECHANISMS) or "none"
            raise ConfigurationError(
                "contributions are refused under secure aggregation: two coalition sums that "
                "differ by one site reveal its update, and the agreement's [incentives] states "
                f"no secure_mechanism (mechanisms biofed has: {known})"
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> IncentivePolicy:
        """Read an ``[incentives]`` table (unknown keys refused; ``measure`` required).

        Raises
        ------
        ConfigurationError
            One line naming the key at fault.
        """
        if not isinstance(data, Mapping):
            raise ConfigurationError("[incentives] must be a table of key = value")
        for key in data:
            if key not in INCENTIVE_KEYS:
                raise ConfigurationError(
                    f"incentives: unknown key {str(key)[:40]!r}; allowed: "
                    + ", ".join(INCENTIVE_KEYS)
                )
        if "measure" not in data:
            raise ConfigurationError(
                "incentives.measure is required: one of " + ", ".join(INCENTIVE_MEASURES)
            )
        if "secure_mechanism" in data:
            _no_secure_mechanism(data["secure_mechanism"])
        return cls(**data)  # type: ignore[arg-type]  # every value is checked by __post_init__

    def to_mapping(self) -> dict[str, object]:
        """The ``[incentives]`` table: canonical (``delay_days`` and ``earlier_rounds`` only
        with the access that uses them; ``secure_mechanism`` only when set)."""
        out: dict[str, object] = {
            "measure": self.measure,
            "reward": self.reward,
            "min_share": self.min_share,
            "below_min": self.below_min,
            "free_rider_share": self.free_rider_share,
        }
        if self.below_min == "delayed":
            out["delay_days"] = self.delay_days
        if self.below_min == "earlier_round":
            out["earlier_rounds"] = self.earlier_rounds
        if self.secure_mechanism is not None:
            out["secure_mechanism"] = self.secure_mechanism
        return out
