"""A job's differential-privacy settings (``[privacy]`` in ``job.toml``) and the
``privacy.*`` keys they travel as in every training instruction.

One value type read by both ends: the coordinator parses the researcher's table and sends
it with each instruction; each node reads it back and decides, for its own dataset, the
noise and the ε(δ) a round costs (see :mod:`biofed.node._privacy`). The node never takes
an ε figure from the coordinator: it only takes the *settings*, and computes the spend with
its own accountant from its own record count.

Two modes:

``sample``
    Sample-level DP at each site: local training is DP-SGD (Abadi et al. 2016, "Deep
    Learning with Differential Privacy"): Poisson sampling at rate q = batch_size / N of the
    site's N records, per-example clipping to ``max_grad_norm``, Gaussian noise of std
    z·``max_grad_norm``. The site's ε is over its own records, whatever the other sites do.
    With ``target_epsilon`` each site calibrates its own z for its N over the job's planned
    rounds × local steps; with ``noise_multiplier`` every site uses that z and reports the ε
    it yields.
``client``
    Client-level DP-FedAvg (McMahan et al. 2018): the strategy is wrapped in
    :class:`~biofed.strategies.DPFedAvg`; each site's update is clipped to
    ``max_grad_norm`` and Gaussian noise of std z·``max_grad_norm`` is in the sum, placed
    by the coordinator (``noise = "central"``) or by the sites (``"distributed"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from biofed.core import ConfigurationError, Scalar
from biofed.core.sections import PRIVACY_PREFIX as PRIVACY_PREFIX
from biofed.core.sections import PrivacySection
from biofed.privacy._accountant import ACCOUNTANTS
from biofed.privacy._calibrate import calibrate_noise
from biofed.privacy._checks import check_delta, check_float, check_steps

PRIVACY_MODES = ("sample", "client")
#: Reply metrics a node adds: the job's cumulative ε and δ at that site after the round,
#: computed by the site's own accountant.
EPSILON_METRIC = "dp.epsilon"
DELTA_METRIC = "dp.delta"
#: Reply metric a node adds beside ε: what kind of figure it is, coded as a float (the wire
#: carries numbers only) — see :data:`GUARANTEES` and :func:`guarantee_code`.
GUARANTEE_METRIC = "dp.guarantee"
#: What an ε figure is: ``"exact"`` — the accountant's ε bounds the privacy loss of the
#: mechanism as run (sample mode: a loss that is a sum of per-record terms; client mode:
#: clipping and noise as planned); ``"bounded"`` — sample mode with coupled records whose
#: per-record sensitivity bound is proven and the noise calibrated to it (still a
#: guarantee); ``"heuristic"`` — no bound: the figure is the accountant's output for (z, q,
#: steps) and bounds nothing (only where a study agreement or node.toml explicitly accepts
#: it).
GUARANTEES = ("exact", "bounded", "heuristic")


def guarantee_code(label: str) -> float:
    """The wire code of a guarantee label (its index in :data:`GUARANTEES`)."""
    return float(GUARANTEES.index(label))


def guarantee_label(code: object) -> str:
    """The label of a wire code; ``"unlabelled"`` for a missing or unknown one (a node
    older than the labels, whose figure must not be read as a guarantee)."""
    if isinstance(code, int | float) and not isinstance(code, bool):
        for i, label in enumerate(GUARANTEES):
            if code == i:
                return label
    return "unlabelled"


NOISE_PLACEMENTS = ("central", "distributed")
_TABLE_KEYS = {
    "mode",
    "delta",
    "target_epsilon",
    "noise_multiplier",
    "max_grad_norm",
    "accountant",
    "noise",
    "seeded",
}


@functools.lru_cache(maxsize=256)
def _calibrated(target: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """:func:`calibrate_noise`, memoised: a job's settings are re-read on every round and
    every status request, and the answer depends only on these five values."""
    return calibrate_noise(target, delta, q, steps, accountant)


def _opt_positive(name: str, value: object) -> float | None:
    return None if value is None else check_float(value, name, above=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSettings:
    """A job's differential-privacy settings.

    Attributes
    ----------
    mode:
        ``"sample"`` (DP-SGD at each site, ε over the site's records) or ``"client"``
        (DP-FedAvg, ε over each site's participation).
    delta:
        The δ of the (ε, δ) guarantee, 0 < δ < 1.
    target_epsilon, noise_multiplier:
        Exactly one: the ε(δ) each site may reach after all planned rounds (each site
        calibrates its z), or a fixed z.
    max_grad_norm:
        C: the per-example gradient bound (sample mode) or per-site update bound (client).
    accountant:
        ``"rdp"`` or ``"pld"``: how sites (and calibration) compose the rounds.
    noise:
        Client mode only: ``"central"`` or ``"distributed"``.
    seeded:
        Draw Poisson samples and noise from the run's seeded generator instead of the
        CSPRNG. Reproducible simulations only: an adversary who knows the run seed can
        predict the noise, so a seeded run has **no** privacy, and nodes refuse it when their
        governance is on.
    rounds:
        The job's planned rounds (from ``[run] rounds``): the horizon of calibration.
    min_replies:
        The fewest replies the coordinator aggregates (``[run] min_replies``): with
        distributed noise, the least noise the sum can carry.
    """

    mode: str
    delta: float
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    noise: str = "central"
    seeded: bool = False
    rounds: int = 1
    min_replies: int = 1

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise ConfigurationError(
                f"[privacy] mode must be one of {PRIVACY_MODES}, got {self.mode!r}"
            )
        object.__setattr__(self, "delta", check_delta(self.delta))
        target = _opt_positive("[privacy] target_epsilon", self.target_epsilon)
        z = _opt_positive("[privacy] noise_multiplier", self.noise_multiplier)
        if (target is None) == (z is None):
            raise ConfigurationError(
                "[privacy] needs exactly one of target_epsilon (each site calibrates its "
                "noise) or noise_multiplier (a fixed noise multiplier)"
            )
        object.__setattr__(self, "target_epsilon", target)
        object.__setattr__(self, "noise_multiplier", z)
        object.__setattr__(
            self,
            "max_grad_norm",
            check_float(self.max_grad_norm, "[privacy] max_grad_norm", above=0),
        )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigurationError(
                f"[privacy] accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}"
            )
        if self.noise not in NOISE_PLACEMENTS:
            raise ConfigurationError(
                f"[privacy] noise must be one of {NOISE_PLACEMENTS}, got {self.noise!r}"
            )
        if self.mode == "sample" and self.noise != "central":
            raise ConfigurationError(
                "[privacy] noise applies to client mode only: in sample mode each site's "
                "DP-SGD adds its own noise"
            )
        if not isinstance(self.seeded, bool):
            raise ConfigurationError(f"[privacy] seeded must be true or false, not {self.seeded!r}")
        object.__setattr__(self, "rounds", check_steps(self.rounds, "rounds"))
        object.__setattr__(self, "min_replies", check_steps(self.min_replies, "min_replies"))

    # -- job file ------------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table: Mapping[str, Any], *, rounds: int, min_replies: int) -> DPSettings:
        """The ``[privacy]`` table of a job, with the run's planned rounds and min_replies."""
        bad = set(table) - _TABLE_KEYS
        if bad:
            raise ConfigurationError(
                f"unknown [privacy] key(s) {sorted(bad)}; allowed: {sorted(_TABLE_KEYS)}"
            )
        if "mode" not in table or "delta" not in table:
            raise ConfigurationError(
                '[privacy] needs mode ("sample" or "client") and delta (e.g. 1e-5)'
            )
        return cls(
            mode=str(table["mode"]),
            delta=table["delta"],
            target_epsilon=table.get("target_epsilon"),
            noise_multiplier=table.get("noise_multiplier"),
            max_grad_norm=table.get("max_grad_norm", 1.0),
            accountant=str(table.get("accountant", "rdp")),
            noise=str(table.get("noise", "central")),
            seeded=table.get("seeded", False),
            rounds=rounds,
            min_replies=min_replies,
        )

    def to_table(self) -> dict[str, Scalar]:
        """The ``[privacy]`` table (without the run-level ``rounds`` / ``min_replies``)."""
        table: dict[str, Scalar] = {
            "mode": self.mode,
            "delta": self.delta,
            "max_grad_norm": self.max_grad_norm,
            "accountant": self.accountant,
        }
        if self.target_epsilon is not None:
            table["target_epsilon"] = self.target_epsilon
        if self.noise_multiplier is not None:
            table["noise_multiplier"] = self.noise_multiplier
        if self.mode == "client":
            table["noise"] = self.noise
        if self.seeded:
            table["seeded"] = True
        return table

    # -- instruction section -------------------------------------------------------------------
    def to_section(self) -> PrivacySection:
        """The job section's privacy part (:attr:`biofed.core.sections.JobSection.privacy`)."""
        return PrivacySection(
            table={**self.to_table(), "rounds": self.rounds, "min_replies": self.min_replies}
        )

    @classmethod
    def from_section(cls, section: PrivacySection | None) -> DPSettings | None:
        """The settings an instruction's job section carries, or None when its job has no DP.

        Raises
        ------
        ConfigurationError
            If they are incomplete or invalid (one line naming the key).
        """
        if section is None:
            return None
        table = dict(section.table)
        rounds, min_replies = table.pop("rounds", None), table.pop("min_replies", None)
        if rounds is None or min_replies is None:
            raise ConfigurationError(
                "the instruction's privacy settings lack privacy.rounds or privacy.min_replies"
            )
        return cls.from_table(table, rounds=rounds, min_replies=min_replies)  # type: ignore[arg-type]

    def to_config(self) -> dict[str, Scalar]:
        """The settings in the flat form of older code (``privacy.*`` keys)."""
        return {f"{PRIVACY_PREFIX}{k}": v for k, v in self.to_section().table.items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Scalar]) -> DPSettings | None:
        """The settings a flat config carries (``privacy.*`` keys), or None."""
        table = {
            k[len(PRIVACY_PREFIX) :]: v for k, v in config.items() if k.startswith(PRIVACY_PREFIX)
        }
        return cls.from_section(PrivacySection(table=table) if table else None)

    # -- noise ---------------------------------------------------------------------------------
    def sample_noise_multiplier(self, sampling_rate: float, steps_per_round: int) -> float:
        """Sample mode: the z a site with Poisson rate q uses so that ``rounds`` rounds of
        ``steps_per_round`` DP-SGD steps reach at most ``target_epsilon`` (or the fixed z)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None  # checked in __post_init__
        steps = check_steps(steps_per_round, "local_steps") * self.rounds
        return _calibrated(self.target_epsilon, self.delta, sampling_rate, steps, self.accountant)

    def client_noise_multiplier(self) -> float:
        """Client mode: the z of the noise in the sum so that ``rounds`` rounds, each site
        taking part in every one (q = 1, the site's own worst case), reach at most
        ``target_epsilon`` (or the fixed z)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        assert self.target_epsilon is not None
        return _calibrated(self.target_epsilon, self.delta, 1.0, self.rounds, self.accountant)

    def planned_epsilon(self) -> float | None:
        """ε(δ) after all planned rounds when the job names a target; None with a fixed z
        (then ε depends on each site's record count and is known only at the site)."""
        return self.target_epsilon

    def trust_assumption(self) -> str:
        """What the job's ε rests on besides the mathematics, in one sentence.

        Sample mode: each site adds its own noise (DP-SGD in its sandbox), so a site's ε holds
        against everyone else, the coordinator included. Client mode with central noise: the
        coordinator adds the noise to the sum, so ε holds only if it does (the sites' clipped
        updates reach it in the clear unless secure aggregation hides them). Distributed
        noise: each site adds a share and ε counts only ``min_replies`` shares, so it holds
        if at least ``min_replies`` sites in the round honestly add theirs.
        """
        if self.mode == "sample":
            return "none beyond the site: each site adds its own noise"
        if self.noise == "distributed":
            return f"rests on at least {self.min_replies} honest sites adding their noise share"
        return "trusts the coordinator to add the noise"

    def describe(self) -> dict[str, Scalar]:
        """A human- and machine-readable statement of the guarantee asked for."""
        unit = "each site's records" if self.mode == "sample" else "each site's participation"
        out: dict[str, Scalar] = {
            **self.to_table(),
            "rounds": self.rounds,
            "protects": unit,
        }
        if self.mode == "client":
            out["noise_multiplier_used"] = self.client_noise_multiplier()
        out["trust"] = self.trust_assumption()
        return out


def noise_in_sum(share_std: float, replies: int, clip_norm: float) -> float:
    """The noise multiplier of a sum of ``replies`` distributed shares of std ``share_std``
    (independent Gaussians: std ``share_std·√replies``), in units of ``clip_norm``."""
    return share_std * math.sqrt(replies) / clip_norm
