"""The study agreement as a value: parties, datasets in scope, approved code, outputs, privacy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from biofed.core import ConfigurationError, check_id
from biofed.core.checks import check_flag, check_float, check_int, check_text
from biofed.governance._agreement._checks import (
    check_date,
    check_hex64,
    check_names,
)
from biofed.governance._agreement._incentives import IncentivePolicy
from biofed.governance._agreement._toml import HEADER, dumps, loads

#: Longest single-line field (title, consortium) and longest free text, in characters.
MAX_TITLE = 200
MAX_TEXT = 20_000

FORMAT = "biofed-agreement/1"
PARTY_ROLES = ("admin", "researcher", "site")
_MAX_NAME = 64


def _name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be a string, got {value!r}")
    check_id(value, what=what)
    if len(value) > _MAX_NAME:
        raise ConfigurationError(f"{what} must be at most {_MAX_NAME} characters: {value!r}")
    return value


def _frozen_map(values: object, what: str, check: type[str] | type[float]) -> Mapping[str, object]:
    if not isinstance(values, Mapping):
        raise ConfigurationError(f"{what} must be a mapping of site name to value, got {values!r}")
    out: dict[str, object] = {}
    for key in sorted(values):
        site = _name(key, f"site name in {what}")
        value = values[key]
        if check is str:
            out[site] = check_id(value, what=f"{what}[{site!r}]")
        else:
            below = 1 if what.endswith("delta") else None
            out[site] = check_float(value, f"{what}[{site!r}]", above=0, below=below)
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Party:
    """A signatory: a participant named by its certificate.

    Attributes
    ----------
    name:
        The participant's name (its certificate's CN).
    role:
        ``"site"``, ``"researcher"`` or ``"admin"`` (``"coordinator"`` for the coordinator).
    fingerprint:
        Hex SHA-256 of the participant's certificate DER; only a signature verified with
        that very certificate counts.
    """

    name: str
    role: str
    fingerprint: str

    def __post_init__(self) -> None:
        _name(self.name, "party name")
        if self.role not in (*PARTY_ROLES, "coordinator"):
            raise ConfigurationError(
                f"role of {self.name!r} must be one of {', '.join(PARTY_ROLES)}, got {self.role!r}"
            )
        object.__setattr__(
            self, "fingerprint", check_hex64(self.fingerprint, f"fingerprint of {self.name!r}")
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputPolicy:
    """What may leave the sites: the final model, named aggregate metrics, per-site metrics."""

    final_model: bool = True
    metrics: tuple[str, ...] = ()
    per_site_metrics: bool = False

    def __post_init__(self) -> None:
        check_flag(self.final_model, "outputs.final_model")
        check_flag(self.per_site_metrics, "outputs.per_site_metrics")
        object.__setattr__(self, "metrics", check_names(self.metrics, "outputs.metrics"))


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyRequirements:
    """Privacy the job must use: secure aggregation, DP and each site's (ε, δ) ceiling.

    ``max_epsilon`` and ``max_delta`` map a site to the most its dataset in scope may spend;
    they are required for every site when ``dp_required`` and must be empty otherwise.

    ``exact_guarantees_required`` (default true): every ε a site debits and reports under
    this agreement must be a guarantee — sample-level DP only for tasks whose loss is a sum
    of per-record terms (``"exact"``) or whose per-record sensitivity bound is proven
    (``"bounded"``); a task declaring neither is refused. Set false, such a task may run and
    every figure it produces is labelled ``"heuristic"``. The key is written to the
    agreement (and so signed) only when false: agreements signed before it existed keep
    their digest and mean the strict default.
    """

    secure_aggregation_required: bool = False
    dp_required: bool = False
    max_epsilon: Mapping[str, float] = field(default_factory=dict)
    max_delta: Mapping[str, float] = field(default_factory=dict)
    exact_guarantees_required: bool = True

    def __post_init__(self) -> None:
        check_flag(self.secure_aggregation_required, "privacy.secure_aggregation_required")
        check_flag(self.dp_required, "privacy.dp_required")
        check_flag(self.exact_guarantees_required, "privacy.exact_guarantees_required")
        for what in ("max_epsilon", "max_delta"):
            values = _frozen_map(getattr(self, what), f"privacy.{what}", float)
            if values and not self.dp_required:
                raise ConfigurationError(
                    f"privacy.{what} is set but dp_required is false: require DP or drop it"
                )
            object.__setattr__(self, what, values)


#: The disclosure thresholds an agreement's ``[analytics]`` table may set (the keys of
#: ``biofed.analytics.RULE_KEYS``, which governance cannot import: same layer; a test pins
#: them equal).
ANALYTICS_RULE_KEYS = (
    "min_cell",
    "dominance",
    "min_at_risk",
    "min_difference",
    "min_sites",
    "records_per_parameter",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalyticsPolicy:
    """The federated queries the study's sites answer, and the study's disclosure rules.

    Attributes
    ----------
    allowed:
        Query kinds the sites answer (``"count"``, ``"describe"``, ``"km"``, ``"cox"``…);
        empty (the default): no query runs under the agreement.
    rules:
        Disclosure thresholds (any of :data:`ANALYTICS_RULE_KEYS`); a site answers under the
        stricter of these and its ``node.toml``'s ``[analytics]``, key by key.

    Security notes
    --------------
    Threat: a query the parties never agreed to (e.g. row-level regression diagnostics
    where only counts were agreed). Every party signs the list; a kind not on it is refused
    by each site's policy (the ``outputs`` rule) before a row is read.
    """

    allowed: tuple[str, ...] = ()
    rules: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", check_names(self.allowed, "analytics.allowed"))
        if not isinstance(self.rules, Mapping):
            raise ConfigurationError("analytics rules must be a table of threshold = value")
        rules: dict[str, float] = {}
        for key in sorted(self.rules):
            if key not in ANALYTICS_RULE_KEYS:
                raise ConfigurationError(
                    f"analytics: unknown key {str(key)[:40]!r}; allowed: allowed, "
                    + ", ".join(ANALYTICS_RULE_KEYS)
                )
            value = self.rules[key]
            what = f"analytics.{key}"
            if key == "dominance":
                rules[key] = check_float(value, what, above=0, maximum=1)
            else:
                low = 0 if key == "min_difference" else 1
                rules[key] = check_int(value, what, minimum=low, maximum=10**6)
        object.__setattr__(self, "rules", MappingProxyType(rules))

    @property
    def empty(self) -> bool:
        """Whether the table says nothing (it is then left out of the signed bytes)."""
        return not self.allowed and not self.rules

    def to_data(self) -> dict[str, object]:
        """The ``[analytics]`` table."""
        return {"allowed": list(self.allowed), **self.rules}


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyAgreement:
    """A machine-readable study agreement that every party signs and every node enforces.

    Attributes
    ----------
    agreement_id, title, purpose, legal_basis, consortium:
        What the study is, why, on which legal basis, within which consortium.
    coordinator:
        The coordinator (role ``"coordinator"``), who signs too.
    parties:
        Sites, researchers and admins who sign, sorted by name.
    datasets:
        Site name → the name of that site's dataset in scope; one entry per site party.
    approved_bundles:
        Hex SHA-256 digests of the task bundles that may run.
    approved_studies:
        Hex SHA-256 digests of the study dataset specs (``StudySpec.digest``) a job may
        compile against the sites' data; a job with another spec (or any spec, when the
        list is empty) is refused.
    outputs, privacy:
        What may leave the sites and which privacy protections are required.
    min_cohort:
        The smallest cohort a site may contribute from (default 10).
    analytics:
        The federated queries the sites answer and the study's disclosure rules
        (:class:`AnalyticsPolicy`; none by default).
    incentives:
        How the sites' contributions turn into rewards and access to the final model
        (:class:`IncentivePolicy`); None (the default): no ``[incentives]`` table.
    expires:
        The last day (UTC) on which the agreement is in force.

    Raises
    ------
    ConfigurationError
        On construction, if any field or combination of fields is invalid.
    """

    agreement_id: str
    title: str
    purpose: str
    legal_basis: str
    consortium: str
    coordinator: Party
    parties: tuple[Party, ...]
    datasets: Mapping[str, str]
    approved_bundles: tuple[str, ...]
    outputs: OutputPolicy = field(default_factory=OutputPolicy)
    privacy: PrivacyRequirements = field(default_factory=PrivacyRequirements)
    min_cohort: int = 10
    expires: dt.date
    approved_studies: tuple[str, ...] = ()
    analytics: AnalyticsPolicy = field(default_factory=AnalyticsPolicy)
    incentives: IncentivePolicy | None = None

    def __post_init__(self) -> None:
        check_id(self.agreement_id, what="agreement_id")
        check_text(self.title, "title", max_length=MAX_TITLE, single_line=True)
        check_text(self.purpose, "purpose", max_length=MAX_TEXT)
        check_text(self.legal_basis, "legal_basis", max_length=MAX_TEXT)
        check_text(self.consortium, "consortium", max_length=MAX_TITLE, single_line=True)
        if not isinstance(self.coordinator, Party) or self.coordinator.role != "coordinator":
            raise ConfigurationError("coordinator must be a Party with role 'coordinator'")
        if not isinstance(self.parties, (tuple, list)) or not all(
            isinstance(p, Party) for p in self.parties
        ):
            raise ConfigurationError("parties must be a sequence of Party")
        parties = tuple(sorted(self.parties, key=lambda p: p.name))
        seen: dict[str, str] = {self.coordinator.name.lower(): self.coordinator.name}
        for party in parties:
            if party.role == "coordinator":
                raise ConfigurationError(f"party {party.name!r}: the coordinator is listed apart")
            if party.name.lower() in seen:
                raise ConfigurationError(
                    f"party {party.name!r} is listed twice (or clashes with "
                    f"{seen[party.name.lower()]!r}; names are unique ignoring case)"
                )
            seen[party.name.lower()] = party.name
        sites = {p.name for p in parties if p.role == "site"}
        if not sites:
            raise ConfigurationError("an agreement needs at least one site party")
        datasets = _frozen_map(self.datasets, "datasets", str)
        for site in datasets:
            if site not in sites:
                raise ConfigurationError(
                    f"datasets names {site!r}, which is not a site party of the agreement"
                )
        without = sorted(sites - set(datasets))
        if without:
            raise ConfigurationError(f"datasets has no dataset for site(s) {', '.join(without)}")
        if not isinstance(self.outputs, OutputPolicy):
            raise ConfigurationError("outputs must be an OutputPolicy")
        if not isinstance(self.privacy, PrivacyRequirements):
            raise ConfigurationError("privacy must be a PrivacyRequirements")
        if not isinstance(self.analytics, AnalyticsPolicy):
            raise ConfigurationError("analytics must be an AnalyticsPolicy")
        if self.incentives is not None:
            if not isinstance(self.incentives, IncentivePolicy):
                raise ConfigurationError("incentives must be an IncentivePolicy or None")
            if self.privacy.secure_aggregation_required:
                # contributions are measured on single updates, which secure aggregation
                # hides: an agreement asking for both could never apply its policy
                self.incentives.check_secure_aggregation(True)
        if self.privacy.dp_required:
            for what in ("max_epsilon", "max_delta"):
                keys = set(getattr(self.privacy, what))
                if keys != sites:
                    raise ConfigurationError(
                        f"privacy.{what} must give a value for every site and only sites "
                        f"({', '.join(sorted(sites))}); got {', '.join(sorted(keys)) or 'none'}"
                    )
        check_int(self.min_cohort, "min_cohort", minimum=1)
        bundles = check_names(self.approved_bundles, "approved_bundles", hex_digests=True)
        studies = check_names(self.approved_studies, "approved_studies", hex_digests=True)
        object.__setattr__(self, "approved_studies", studies)
        object.__setattr__(self, "parties", parties)
        object.__setattr__(self, "datasets", datasets)
        object.__setattr__(self, "approved_bundles", bundles)
        object.__setattr__(self, "expires", check_date(self.expires, "expires"))

    @property
    def signers(self) -> tuple[Party, ...]:
        """Everyone who must sign: the coordinator, then the parties by name."""
        return (self.coordinator, *self.parties)

    def signer(self, name: str) -> Party | None:
        """The party or coordinator called ``name``, or None."""
        return next((p for p in self.signers if p.name == name), None)

    def to_data(self) -> dict[str, object]:
        """The agreement as plain data (the TOML tables; dates as ``datetime.date``)."""
        privacy = self.privacy
        return {
            "format": FORMAT,
            "agreement_id": self.agreement_id,
            "title": self.title,
            "consortium": self.consortium,
            "expires": self.expires,
            "min_cohort": self.min_cohort,
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "approved_bundles": list(self.approved_bundles),
            # Written only when set: agreements without studies keep their digest.
            **({"approved_studies": list(self.approved_studies)} if self.approved_studies else {}),
            "coordinator": {
                "name": self.coordinator.name,
                "fingerprint": self.coordinator.fingerprint,
            },
            "parties": [
                {"name": p.name, "role": p.role, "fingerprint": p.fingerprint} for p in self.parties
            ],
            "datasets": dict(self.datasets),
            "outputs": {
                "final_model": self.outputs.final_model,
                "metrics": list(self.outputs.metrics),
                "per_site_metrics": self.outputs.per_site_metrics,
            },
            "privacy": {
                "secure_aggregation_required": privacy.secure_aggregation_required,
                "dp_required": privacy.dp_required,
                "max_epsilon": dict(privacy.max_epsilon),
                "max_delta": dict(privacy.max_delta),
                # Written only when it departs from the strict default (see
                # PrivacyRequirements): older signed agreements keep their digest.
                **(
                    {}
                    if privacy.exact_guarantees_required
                    else {"exact_guarantees_required": False}
                ),
            },
            # Written only when set: agreements without analytics keep their digest.
            **({} if self.analytics.empty else {"analytics": self.analytics.to_data()}),
            # Written only when set: agreements without incentives keep their digest.
            **({} if self.incentives is None else {"incentives": self.incentives.to_mapping()}),
        }

    def canonical_bytes(self) -> bytes:
        """The bytes every party signs: canonical JSON of :meth:`to_data`.

        Keys sorted, no whitespace, UTF-8, dates as ISO strings, numbers normalised (ε of
        ``8`` and ``8.0`` are the same), lists of names sorted. It depends on the meaning of
        the agreement only, never on the layout, comments or quoting of a TOML file.
        """
        data = self.to_data()
        data["expires"] = self.expires.isoformat()
        text = json.dumps(
            data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")

    def digest(self) -> str:
        """Hex SHA-256 of :meth:`canonical_bytes`: the agreement's identity."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def to_toml(self) -> str:
        """The agreement as a deterministic TOML document (no signatures)."""
        return dumps(self.to_data(), comments=HEADER)

    @staticmethod
    def reference() -> str:
        """The Markdown reference of every agreement key (``docs/reference/agreement.md``),
        rendered from the schema the parser checks against."""
        from biofed.governance._agreement._schema import render_agreement_reference

        return render_agreement_reference()

    @classmethod
    def from_toml(cls, text: str) -> StudyAgreement:
        """Parse and validate an agreement written by :meth:`to_toml` (or by hand)."""
        return cls.from_data(loads(text), "agreement")

    @classmethod
    def from_data(cls, data: Mapping[str, object], where: str = "agreement") -> StudyAgreement:
        """Build from plain data (:meth:`to_data`'s shape); unknown keys are refused."""
        from biofed.governance._agreement._parse import agreement_from_data

        return agreement_from_data(data, where)
