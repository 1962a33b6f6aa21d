"""What a measurement returns, and the run's ledger of them (JSON round trip)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from biofed.core import ConfigurationError, check_id

#: The longest ledger JSON :meth:`ContributionLedger.from_json` reads (hostile input bound).
_MAX_LEDGER_CHARS = 32 << 20

#: The measures, by name (``biofed.contribution.measure``'s ``method``).
METHODS: tuple[str, ...] = ("leave_one_out", "shapley", "tmc_shapley", "gtg_shapley")


def strict_json(text: str | bytes) -> Any:
    """``json.loads`` for hostile published text: a key twice in one object (which two
    readers could resolve differently: one shows the first figure, the verifier uses the
    last), NaN/Infinity and nesting too deep for the parser all raise ValueError, which
    every reader of this package reports as one line."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"the key {key!r:.60} appears twice in one object")
            out[key] = value
        return out

    def constant(name: str) -> float:
        raise ValueError(f"{name} is not a number")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"contribution: {what} must be a number, got {value!r}")
    try:
        f = float(value)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise ConfigurationError(f"contribution: {what} must be finite, got {value!r}")
    return f


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"contribution: {what} must be an integer ≥ 0, got {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Contributions:
    """One round's contribution of each site, by one method.

    Attributes
    ----------
    method:
        One of :data:`METHODS`.
    values:
        Each site's value, in the units of the value function (e.g. C-index points). For the
        Shapley methods they sum to ``total`` (exactly for ``shapley``, in expectation for
        the samplers); leave-one-out values need not.
    total:
        ``v(N)``: the round's gain, value of the round's aggregate minus value of ``x``
        (the aggregate without the free-riders' weight, see :class:`RoundGame`).
    baseline:
        ``value(x)``, the score of the model the round started from.
    evaluations:
        Calls of the value function spent (``value(x)`` included).
    seconds:
        Wall time of the measurement (the calls of the value function included).
    permutations:
        Permutations sampled (Monte-Carlo methods; 0 otherwise).
    converged:
        False when a sampler stopped at its evaluation or permutation bound before its
        convergence test held.
    skipped:
        True when GTG-Shapley skipped the round because ``|v(N)|`` was below its round
        tolerance (every value is then 0).
    server_round:
        The round measured (0 when not given).
    duplicates:
        Groups of sites whose updates were near-duplicates, played as one player and
        sharing its value by weight (see :class:`RoundGame`).
    free_riders:
        Sites whose update was (nearly) zero, played as null players (value 0).
    """

    method: str
    values: Mapping[str, float]
    total: float
    baseline: float
    evaluations: int
    seconds: float
    permutations: int = 0
    converged: bool = True
    skipped: bool = False
    server_round: int = 0
    duplicates: tuple[tuple[str, ...], ...] = ()
    free_riders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigurationError(
                f"contribution: unknown method {self.method!r}; choose one of {list(METHODS)}"
            )
        values = {str(k): _finite(v, f"the value of {k!r}") for k, v in self.values.items()}
        object.__setattr__(self, "values", MappingProxyType(values))
        object.__setattr__(self, "total", _finite(self.total, "total"))
        object.__setattr__(self, "baseline", _finite(self.baseline, "baseline"))
        object.__setattr__(self, "seconds", _finite(self.seconds, "seconds"))
        _count(self.evaluations, "evaluations")
        _count(self.permutations, "permutations")
        _count(self.server_round, "server_round")
        groups = self.duplicates
        if not isinstance(groups, (tuple, list)) or not all(
            isinstance(g, (tuple, list)) and all(s in values for s in g) for g in groups
        ):
            raise ConfigurationError("contribution: duplicates must be lists of the measured sites")
        object.__setattr__(self, "duplicates", tuple(tuple(g) for g in groups))
        riders = self.free_riders
        if not isinstance(riders, (tuple, list)) or not all(s in values for s in riders):
            raise ConfigurationError("contribution: free_riders must list measured sites")
        object.__setattr__(self, "free_riders", tuple(riders))

    def ranking(self) -> tuple[str, ...]:
        """Sites from the largest value to the smallest (ties by name)."""
        return tuple(sorted(self.values, key=lambda s: (-self.values[s], s)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "method": self.method,
            "server_round": self.server_round,
            "values": dict(self.values),
            "total": self.total,
            "baseline": self.baseline,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "permutations": self.permutations,
            "converged": self.converged,
            "skipped": self.skipped,
            "duplicates": [list(g) for g in self.duplicates],
            "free_riders": list(self.free_riders),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contributions:
        """Read :meth:`to_dict`'s output back (checked like any input)."""
        if not isinstance(data, Mapping):
            raise ConfigurationError("contribution: a round's record must be an object")
        expected = {
            "method",
            "server_round",
            "values",
            "total",
            "baseline",
            "evaluations",
            "seconds",
            "permutations",
            "converged",
            "skipped",
            "duplicates",
            "free_riders",
        }
        if set(data) != expected:
            raise ConfigurationError(
                f"contribution: a round's record has keys {sorted(data)}, "
                f"expected {sorted(expected)}"
            )
        values = data["values"]
        if not isinstance(values, Mapping):
            raise ConfigurationError("contribution: 'values' must be an object of site → number")
        for site in values:
            check_id(site, what="contribution: a site name")
        for flag in ("converged", "skipped"):
            if not isinstance(data[flag], bool):
                raise ConfigurationError(f"contribution: {flag!r} must be true or false")
        return cls(
            method=data["method"],
            values=values,
            total=data["total"],
            baseline=data["baseline"],
            evaluations=data["evaluations"],
            seconds=data["seconds"],
            permutations=data["permutations"],
            converged=data["converged"],
            skipped=data["skipped"],
            server_round=data["server_round"],
            duplicates=data["duplicates"],
            free_riders=data["free_riders"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ContributionLedger:
    """A run's contributions, round by round, and their totals.

    Immutable: :meth:`add` returns a new ledger. A site absent from a round (not selected,
    dropped out, rejected) contributes 0 to that round.
    """

    rounds: tuple[Contributions, ...] = field(default_factory=tuple)

    def add(self, result: Contributions, *, server_round: int | None = None) -> ContributionLedger:
        """The ledger with one more round (``server_round`` overrides the result's own)."""
        if server_round is not None:
            result = replace(result, server_round=server_round)
        if any(r.server_round == result.server_round for r in self.rounds):
            raise ConfigurationError(
                f"contribution: round {result.server_round} is already in the ledger"
            )
        return ContributionLedger(rounds=(*self.rounds, result))

    @property
    def sites(self) -> tuple[str, ...]:
        """Every site that was measured in some round, sorted."""
        return tuple(sorted({s for r in self.rounds for s in r.values}))

    def totals(self) -> dict[str, float]:
        """Each site's value summed over the rounds."""
        out = dict.fromkeys(self.sites, 0.0)
        for r in self.rounds:
            for site, v in r.values.items():
                out[site] += v
        return out

    def shares(self) -> dict[str, float]:
        """Each site's share of the summed positive values (negative totals get 0; all 0
        when no site has a positive total): the input of a proportional reward."""
        totals = {s: max(v, 0.0) for s, v in self.totals().items()}
        whole = sum(totals.values())
        return {s: (v / whole if whole > 0 else 0.0) for s, v in totals.items()}

    @property
    def evaluations(self) -> int:
        """Value-function calls over the run."""
        return sum(r.evaluations for r in self.rounds)

    @property
    def seconds(self) -> float:
        """Measurement wall time over the run."""
        return sum(r.seconds for r in self.rounds)

    def to_json(self) -> str:
        """The ledger as JSON (rounds in order, and the totals for a reader's convenience)."""
        return json.dumps(
            {
                "rounds": [r.to_dict() for r in self.rounds],
                "totals": self.totals(),
                "evaluations": self.evaluations,
                "seconds": self.seconds,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> ContributionLedger:
        """Read :meth:`to_json`'s output back, as hostile input: bounded size and nesting,
        site names that are biofed ids, finite numbers; the totals are recomputed, and a
        ledger whose own ``totals`` (or ``evaluations``) disagree with its rounds is refused,
        so the figures a reader sees are the ones an outcome is verified against."""
        if isinstance(text, str) and len(text) > _MAX_LEDGER_CHARS:
            raise ConfigurationError(
                f"contribution: the ledger is over {_MAX_LEDGER_CHARS} characters"
            )
        try:
            data = strict_json(text)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"contribution: the ledger is not JSON: {exc}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("rounds"), list):
            raise ConfigurationError("contribution: the ledger must be an object with 'rounds'")
        extra = set(data) - {"rounds", "totals", "evaluations", "seconds"}
        if extra:
            raise ConfigurationError(f"contribution: the ledger has unknown keys {sorted(extra)}")
        ledger = cls()
        for entry in data["rounds"]:
            ledger = ledger.add(_consistent(Contributions.from_dict(entry)))
        if "totals" in data:
            stated, totals = data["totals"], ledger.totals()
            if (
                not isinstance(stated, Mapping)
                or set(stated) != set(totals)
                or not all(
                    math.isclose(_finite(stated[s], "a total"), v, rel_tol=1e-9, abs_tol=1e-12)
                    for s, v in totals.items()
                )
            ):
                raise ConfigurationError(
                    "contribution: the ledger's totals are not the sums of its rounds"
                )
        if "evaluations" in data and data["evaluations"] != ledger.evaluations:
            raise ConfigurationError(
                "contribution: the ledger's evaluations are not the sum of its rounds'"
            )
        return ledger


def _consistent(result: Contributions) -> Contributions:
    """``result`` if its figures agree with each other, else ConfigurationError.

    A tampered ledger record (one site's value raised or lowered, a contributing site
    marked a null player) must not read back: exact Shapley values sum to ``v(N)``
    (efficiency) and a null player's value is 0 in every method.
    """
    if any(result.values[s] != 0.0 for s in result.free_riders):
        raise ConfigurationError("contribution: a free-rider's value must be 0")
    if result.method == "shapley" and not math.isclose(
        math.fsum(result.values.values()), result.total, rel_tol=1e-9, abs_tol=1e-9
    ):
        raise ConfigurationError(
            f"contribution: round {result.server_round}'s exact Shapley values do not sum "
            "to its total"
        )
    return result
