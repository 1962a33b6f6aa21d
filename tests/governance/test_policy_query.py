"""The agreement's [analytics] section (signed like the rest) and the policy's rules for a
QUERY instruction."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from biofed.analytics import RULE_KEYS
from biofed.core import ConfigurationError
from biofed.governance import (
    ANALYTICS_RULE_KEYS,
    AnalyticsPolicy,
    Party,
    StudyAgreement,
)

FP = "ab" * 32


def _agreement(**changes: object) -> StudyAgreement:
    base = StudyAgreement(
        agreement_id="stats",
        title="Statistics",
        purpose="Count.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium="t",
        coordinator=Party(name="coordinator", role="coordinator", fingerprint=FP),
        parties=(Party(name="a", role="site", fingerprint=FP),),
        datasets={"a": "brca"},
        approved_bundles=(),
        expires=dt.date(2099, 12, 31),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_the_rule_keys_are_the_analytics_ones() -> None:
    assert ANALYTICS_RULE_KEYS == RULE_KEYS


def test_analytics_round_trips_through_toml_and_is_signed() -> None:
    plain = _agreement()
    policy = AnalyticsPolicy(
        allowed=("describe", "count"), rules={"min_cell": 20, "dominance": 0.4}
    )
    with_analytics = _agreement(analytics=policy)
    assert "analytics" not in plain.to_data()  # older agreements keep their digest
    assert with_analytics.digest() != plain.digest()
    text = with_analytics.to_toml()
    assert "[analytics]" in text
    back = StudyAgreement.from_toml(text)
    assert back == with_analytics
    assert back.analytics.allowed == ("count", "describe")
    assert dict(back.analytics.rules) == {"dominance": 0.4, "min_cell": 20}
    stricter = _agreement(analytics=AnalyticsPolicy(allowed=("count", "describe")))
    assert stricter.digest() != with_analytics.digest()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('allowed = ["count"]\nmin_cells = 5\n', "unknown key(s) 'min_cells'"),
        ('allowed = ["count"]\nmin_cell = 0\n', "analytics.min_cell must be"),
        ('allowed = ["count"]\ndominance = 1.5\n', "analytics.dominance must be"),
        ('allowed = ["count"]\nmin_cell = true\n', "analytics.min_cell must be an integer"),
        ('allowed = "count"\n', "'allowed' must be a list of strings"),
        ('allowed = ["count", "count"]\n', "more than once"),
        ('allowed = ["bad kind"]\n', "analytics.allowed must be"),
    ],
)
def test_a_malformed_analytics_table_is_refused(table: str, message: str) -> None:
    text = _agreement().to_toml() + "\n[analytics]\n" + table
    with pytest.raises(ConfigurationError) as info:
        StudyAgreement.from_toml(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
