"""Reading a study agreement from plain data (a parsed TOML file), strictly."""

from __future__ import annotations

from collections.abc import Mapping

from biofed.core import ConfigurationError
from biofed.core.checks import check_int
from biofed.governance._agreement._checks import check_date, no_extra, require, table
from biofed.governance._agreement._incentives import IncentivePolicy
from biofed.governance._agreement._model import (
    FORMAT,
    AnalyticsPolicy,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    StudyAgreement,
)
from biofed.governance._agreement._schema import (
    ANALYTICS,
    COORDINATOR,
    OUTPUTS,
    PARTIES,
    PRIVACY,
    TOP,
)

# the key lists come from the declared schema, which the reference page renders
TOP_KEYS = TOP.ordered
_PARTY_KEYS = PARTIES.ordered
_COORDINATOR_KEYS = COORDINATOR.ordered
_OUTPUT_KEYS = OUTPUTS.ordered
_PRIVACY_KEYS = PRIVACY.ordered


def _str(data: Mapping[str, object], key: str, where: str) -> str:
    value = require(data, key, where)
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: {key!r} must be a string, got {value!r}")
    return value


def _bool(data: Mapping[str, object], key: str, where: str) -> bool:
    value = require(data, key, where)
    if not isinstance(value, bool):
        raise ConfigurationError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _list(data: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = require(data, key, where)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _map(
    data: Mapping[str, object], key: str, where: str, kind: type | tuple[type, ...]
) -> dict[str, object]:
    value = data.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value.values()
    ):
        raise ConfigurationError(f"{where}: [{key}] must be a table of site = value")
    return dict(value)


def _numbers(data: Mapping[str, object], key: str, where: str) -> dict[str, float]:
    values = _map(data, key, where, (int, float))
    return {site: float(value) for site, value in values.items()}  # type: ignore[arg-type]


def _party(data: Mapping[str, object], role: str | None, where: str) -> Party:
    no_extra(data, _PARTY_KEYS if role is None else _COORDINATOR_KEYS, where)
    return Party(
        name=_str(data, "name", where),
        role=_str(data, "role", where) if role is None else role,
        fingerprint=_str(data, "fingerprint", where),
    )


def _analytics(data: Mapping[str, object], where: str) -> AnalyticsPolicy:
    if "analytics" not in data:
        return AnalyticsPolicy()
    section = table(data, "analytics", where)
    no_extra(section, ANALYTICS.ordered, f"{where} [analytics]")
    allowed = _list(section, "allowed", f"{where} [analytics]") if "allowed" in section else ()
    rules = {k: v for k, v in section.items() if k != "allowed"}
    try:
        return AnalyticsPolicy(allowed=allowed, rules=rules)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where} [analytics]: {exc}") from None


def _incentives(data: Mapping[str, object], where: str) -> IncentivePolicy | None:
    if "incentives" not in data:
        return None
    section = table(data, "incentives", where)
    try:
        return IncentivePolicy.from_mapping(section)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where} [incentives]: {exc}") from None


def agreement_from_data(data: Mapping[str, object], where: str = "agreement") -> StudyAgreement:
    """Validate ``data`` (a parsed agreement file) and build the :class:`StudyAgreement`.

    Raises
    ------
    ConfigurationError
        If the format marker is wrong, a key is missing, has the wrong type or is unknown
        (an unknown key would not be covered by the signatures, so it is refused rather than
        ignored), or the agreement itself is invalid.
    """
    if data.get("format") != FORMAT:
        raise ConfigurationError(f"{where}: format must be {FORMAT!r}, got {data.get('format')!r}")
    no_extra(data, TOP_KEYS, where)
    raw_parties = require(data, "parties", where)
    if not isinstance(raw_parties, list) or not all(isinstance(p, dict) for p in raw_parties):
        raise ConfigurationError(f"{where}: parties must be an array of tables [[parties]]")
    outputs = table(data, "outputs", where)
    no_extra(outputs, _OUTPUT_KEYS, f"{where} [outputs]")
    privacy = table(data, "privacy", where)
    no_extra(privacy, _PRIVACY_KEYS, f"{where} [privacy]")
    min_cohort = check_int(data.get("min_cohort", 10), f"{where}: min_cohort")
    datasets = _map(data, "datasets", where, str)
    return StudyAgreement(
        agreement_id=_str(data, "agreement_id", where),
        title=_str(data, "title", where),
        purpose=_str(data, "purpose", where),
        legal_basis=_str(data, "legal_basis", where),
        consortium=_str(data, "consortium", where),
        coordinator=_party(
            table(data, "coordinator", where), "coordinator", f"{where} [coordinator]"
        ),
        parties=tuple(_party(p, None, f"{where} [[parties]]") for p in raw_parties),
        datasets={site: str(name) for site, name in datasets.items()},
        approved_bundles=_list(data, "approved_bundles", where),
        approved_studies=_list(data, "approved_studies", where)
        if "approved_studies" in data
        else (),
        outputs=OutputPolicy(
            final_model=_bool(outputs, "final_model", f"{where} [outputs]"),
            metrics=_list(outputs, "metrics", f"{where} [outputs]"),
            per_site_metrics=_bool(outputs, "per_site_metrics", f"{where} [outputs]"),
        ),
        privacy=PrivacyRequirements(
            secure_aggregation_required=_bool(
                privacy, "secure_aggregation_required", f"{where} [privacy]"
            ),
            dp_required=_bool(privacy, "dp_required", f"{where} [privacy]"),
            max_epsilon=_numbers(privacy, "max_epsilon", f"{where} [privacy]"),
            max_delta=_numbers(privacy, "max_delta", f"{where} [privacy]"),
            exact_guarantees_required=(
                _bool(privacy, "exact_guarantees_required", f"{where} [privacy]")
                if "exact_guarantees_required" in privacy
                else True
            ),
        ),
        min_cohort=min_cohort,
        analytics=_analytics(data, where),
        incentives=_incentives(data, where),
        expires=check_date(require(data, "expires", where), f"{where}: expires"),
    )
