"""Disclosure-control rules: the thresholds a site applies to every answer it gives.

A site's rules come from its ``node.toml`` and from the study agreement; the stricter of
the two wins, key by key (:meth:`DisclosureRules.stricter`). The coordinator states the
rules it applies to the combined answer in every request; a site refuses a request whose
rules are looser than its own (:meth:`DisclosureRules.covers`), so a coordinator cannot
lower a threshold a site set.

Security notes
--------------
Threat: a researcher learning one patient's value from an aggregate. The thresholds follow
the statistical-disclosure-control practice of the peers: a minimum cell count (DataSHIELD
``nfilter.tab`` = 3, NVIDIA FLARE ``min_count`` = 10, vantage6 5–11; Hundepool et al.,
*Statistical Disclosure Control*, Wiley 2012, ch. 4–5), a dominance rule for sums (the
(n, k) rule with n = 1: no single record above ``dominance`` of a cell's absolute total),
Kaplan–Meier steps only where ``min_at_risk`` patients are at risk, a minimum difference
between the cohorts of two answered queries (the differencing attack, Denning & Schlörer
1983), and, for regression, a minimum number of sites and records per parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from biofed.core import ConfigurationError

#: Keys of the ``[analytics]`` table of node.toml and of a study agreement.
RULE_KEYS = (
    "min_cell",
    "dominance",
    "min_at_risk",
    "min_difference",
    "min_sites",
    "records_per_parameter",
)


@dataclass(frozen=True, slots=True)
class DisclosureRules:
    """Thresholds of disclosure control (all checked on construction).

    Attributes
    ----------
    min_cell:
        Smallest count a released cell, cohort or category level may hold (default 10);
        smaller non-zero cells are suppressed, with complementary suppression so that a
        suppressed cell cannot be recovered from margins.
    dominance:
        Largest share of a cell's sum of absolute values one record may make up (default
        0.5); a dominated sum is suppressed. 1.0 switches the rule off.
    min_at_risk:
        Kaplan–Meier / Nelson–Aalen steps are released only where at least this many
        patients are at risk; later ones are coarsened into one tail block (default 10).
    min_difference:
        A query whose cohort differs from an earlier answered query's cohort on the same
        dataset by 1 to ``min_difference - 1`` records is refused (default 10; 0 off).
    min_sites:
        Fewest sites a regression's combined answer may rest on (default 3).
    records_per_parameter:
        A site answers a regression only if it holds at least this many records per
        parameter (default 10).
    """

    min_cell: int = 10
    dominance: float = 0.5
    min_at_risk: int = 10
    min_difference: int = 10
    min_sites: int = 3
    records_per_parameter: int = 10

    def __post_init__(self) -> None:
        for name in ("min_cell", "min_at_risk", "min_sites", "records_per_parameter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10**6:
                raise ConfigurationError(f"analytics {name} must be an integer in [1, 1000000]")
        diff = self.min_difference
        if isinstance(diff, bool) or not isinstance(diff, int) or not 0 <= diff <= 10**6:
            raise ConfigurationError("analytics min_difference must be an integer in [0, 1000000]")
        dom = self.dominance
        if isinstance(dom, bool) or not isinstance(dom, int | float) or not 0 < dom <= 1:
            raise ConfigurationError("analytics dominance must be a number in (0, 1]")
        object.__setattr__(self, "dominance", float(dom))

    def stricter(self, other: DisclosureRules) -> DisclosureRules:
        """Key by key, the stricter of ``self`` and ``other``."""
        return DisclosureRules(
            min_cell=max(self.min_cell, other.min_cell),
            dominance=min(self.dominance, other.dominance),
            min_at_risk=max(self.min_at_risk, other.min_at_risk),
            min_difference=max(self.min_difference, other.min_difference),
            min_sites=max(self.min_sites, other.min_sites),
            records_per_parameter=max(self.records_per_parameter, other.records_per_parameter),
        )

    def covers(self, other: DisclosureRules) -> bool:
        """Whether ``self`` is at least as strict as ``other`` on every key."""
        return self.stricter(other) == self

    def to_dict(self) -> dict[str, Any]:
        """JSON form (every key)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], *, what: str = "[analytics]"
    ) -> DisclosureRules:
        """From a table with any of :data:`RULE_KEYS` (the others keep their defaults).

        Raises
        ------
        ConfigurationError
            On an unknown key or a value out of range (one line naming it).
        """
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"{what} must be a table")
        unknown = sorted(str(k)[:40] for k in table if k not in RULE_KEYS)
        if unknown:
            raise ConfigurationError(
                f"{what}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RULE_KEYS)}"
            )
        try:
            return cls(**dict(table))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{what}: {exc}") from None
