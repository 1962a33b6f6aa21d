"""The study agreement's ``[incentives]`` table (issue 17, item 3): each key, each refusal,
the TOML round trip, and the table under the parties' signatures (an edited table fails)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance import (
    INCENTIVE_KEYS,
    SECURE_MECHANISMS,
    IncentivePolicy,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    SignedAgreement,
    StudyAgreement,
    require_in_force,
    sign,
    verify,
)
from biofed.identity import Consortium, Kit, load_kit

SIGNERS = ("a", "b", "coordinator")


def test_a_policy_keeps_each_key() -> None:
    policy = IncentivePolicy.from_mapping(
        {
            "measure": "gtg_shapley",
            "reward": "equal",
            "min_share": 0.05,
            "below_min": "delayed",
            "delay_days": 30,
            "free_rider_share": 0.01,
        }
    )
    assert policy == IncentivePolicy(
        measure="gtg_shapley",
        reward="equal",
        min_share=0.05,
        below_min="delayed",
        delay_days=30,
        free_rider_share=0.01,
    )
    assert policy.to_mapping() == {
        "measure": "gtg_shapley",
        "reward": "equal",
        "min_share": 0.05,
        "below_min": "delayed",
        "delay_days": 30,
        "free_rider_share": 0.01,
    }
    earlier = IncentivePolicy.from_mapping(
        {"measure": "shapley", "below_min": "earlier_round", "earlier_rounds": 3, "min_share": 0}
    )
    assert earlier.earlier_rounds == 3
    assert earlier.min_share == 0.0
    assert isinstance(earlier.min_share, float)
    assert earlier.to_mapping()["earlier_rounds"] == 3
    assert "delay_days" not in earlier.to_mapping()
    # the defaults: proportional reward, full access for everyone, flag a share of 0
    plain = IncentivePolicy.from_mapping({"measure": "leave_one_out"})
    assert (plain.reward, plain.min_share, plain.below_min, plain.free_rider_share) == (
        "proportional",
        0.0,
        "full",
        0.0,
    )
    assert IncentivePolicy.from_mapping(plain.to_mapping()) == plain
    for measure in ("shapley", "gtg_shapley", "tmc_shapley", "leave_one_out"):
        assert IncentivePolicy(measure=measure).measure == measure
    for access in ("full", "none"):
        assert IncentivePolicy(measure="shapley", below_min=access).below_min == access


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "incentives.measure is required"),
        ({"measure": "banzhaf"}, "incentives.measure must be one of"),
        ({"measure": 1}, "incentives.measure must be one of"),
        ({"measure": "shapley", "reward": "winner"}, "incentives.reward must be one of"),
        ({"measure": "shapley", "min_share": 1.5}, r"incentives.min_share must be in \[0, 1\]"),
        ({"measure": "shapley", "min_share": -0.1}, "incentives.min_share must be"),
        ({"measure": "shapley", "min_share": "5%"}, "incentives.min_share must be a number"),
        ({"measure": "shapley", "min_share": True}, "incentives.min_share must be a number"),
        ({"measure": "shapley", "min_share": float("nan")}, "min_share must be finite"),
        ({"measure": "shapley", "below_min": "later"}, "incentives.below_min must be one of"),
        ({"measure": "shapley", "below_min": "delayed"}, "incentives.delay_days must be ≥ 1"),
        (
            {"measure": "shapley", "below_min": "delayed", "delay_days": 1.5},
            "incentives.delay_days must be an integer",
        ),
        (
            {"measure": "shapley", "below_min": "delayed", "delay_days": 100_000},
            "incentives.delay_days must be in",
        ),
        ({"measure": "shapley", "delay_days": 7}, 'delay_days is for below_min = "delayed"'),
        (
            {"measure": "shapley", "below_min": "earlier_round"},
            "incentives.earlier_rounds must be ≥ 1",
        ),
        (
            {"measure": "shapley", "below_min": "none", "earlier_rounds": 2},
            'earlier_rounds is for below_min = "earlier_round"',
        ),
        ({"measure": "shapley", "free_rider_share": 2}, "incentives.free_rider_share must be"),
        ({"measure": "shapley", "bonus": 1}, "incentives: unknown key 'bonus'"),
        (
            {"measure": "shapley", "secure_mechanism": "dp_coalitions"},
            r"secure_mechanism 'dp_coalitions' is not implemented \(mechanisms biofed has: none\)",
        ),
    ],
)
def test_each_refusal_is_one_line_naming_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        IncentivePolicy.from_mapping(table)
    assert "\n" not in str(info.value)


def test_no_secure_mechanism_exists_so_secure_aggregation_is_refused() -> None:
    assert SECURE_MECHANISMS == ()
    policy = IncentivePolicy(measure="shapley")
    assert not policy.allows_secure_aggregation
    policy.check_secure_aggregation(False)
    with pytest.raises(ConfigurationError, match="refused under secure aggregation"):
        policy.check_secure_aggregation(True)
    with pytest.raises(ConfigurationError, match="is not implemented"):
        IncentivePolicy(measure="shapley", secure_mechanism="anything")
    assert set(INCENTIVE_KEYS) >= set(policy.to_mapping())


# -- in a signed agreement ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"])
    return folder


@pytest.fixture(scope="module")
def kits(fed: Path) -> dict[str, Kit]:
    return {name: load_kit(fed / name) for name in SIGNERS}


def _agreement(kits: dict[str, Kit], **extra: object) -> StudyAgreement:
    def party(kit: Kit) -> Party:
        return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)

    return StudyAgreement(
        agreement_id="brca-incentives",
        title="Survival in breast cancer, with incentives",
        purpose="Train a Cox model; reward the sites by their Shapley value.",
        legal_basis="consent",
        consortium="t",
        coordinator=party(kits["coordinator"]),
        parties=(party(kits["a"]), party(kits["b"])),
        datasets={"a": "brca", "b": "brca"},
        approved_bundles=(),
        outputs=OutputPolicy(),
        expires=dt.date(2099, 12, 31),
        **extra,  # type: ignore[arg-type]
    )


POLICY = IncentivePolicy(
    measure="shapley", min_share=0.05, below_min="delayed", delay_days=30, free_rider_share=0.01
)


def test_the_table_is_signed_with_the_rest_and_an_edit_fails(
    fed: Path, kits: dict[str, Kit]
) -> None:
    agreement = _agreement(kits, incentives=POLICY)
    text = agreement.to_toml()
    assert "[incentives]" in text
    assert StudyAgreement.from_toml(text) == agreement
    assert agreement.digest() != _agreement(kits).digest()
    # an agreement without the table keeps the digest it had before the table existed
    assert b'"incentives":' not in _agreement(kits).canonical_bytes()
    assert b'"incentives":' in agreement.canonical_bytes()
    signed = SignedAgreement(agreement=agreement)
    for name in SIGNERS:
        signed = sign(signed, kits[name])
    certs = {n: (fed / n / "cert.pem").read_bytes() for n in SIGNERS}
    ca = (fed / "ca" / "ca.pem").read_bytes()
    assert verify(signed, certs, ca).in_force
    again = SignedAgreement.from_toml(signed.to_toml())
    assert again.agreement.incentives == POLICY
    assert verify(again, certs, ca).in_force
    for old, new in [
        ("min_share = 0.05", "min_share = 0.5"),
        ("delay_days = 30", "delay_days = 3000"),
        ("free_rider_share = 0.01", "free_rider_share = 0.2"),
        ('reward = "proportional"', 'reward = "equal"'),
        ('measure = "shapley"', 'measure = "leave_one_out"'),
    ]:
        signed_text = signed.to_toml()
        assert signed_text.count(old) == 1, old
        edited = SignedAgreement.from_toml(signed_text.replace(old, new))
        status = verify(edited, certs, ca)
        assert not status.in_force
        assert all("edited after" in reason for reason in status.reasons)
        with pytest.raises(PolicyViolation, match="edited after"):
            require_in_force(edited, certs, ca)
    # dropping the table is an edit too
    start = signed.to_toml().index("[incentives]")
    end = signed.to_toml().index("\n[", start + 1)
    dropped = SignedAgreement.from_toml(signed.to_toml()[:start] + signed.to_toml()[end + 1 :])
    assert dropped.agreement.incentives is None
    assert not verify(dropped, certs, ca).in_force


def test_a_bad_table_in_a_file_is_refused_with_where(kits: dict[str, Kit]) -> None:
    text = _agreement(kits, incentives=POLICY).to_toml()
    with pytest.raises(ConfigurationError, match=r"agreement \[incentives\]: incentives.min_share"):
        StudyAgreement.from_toml(text.replace("min_share = 0.05", "min_share = 7"))
    with pytest.raises(ConfigurationError, match=r"\[incentives\]: incentives: unknown key 'x'"):
        StudyAgreement.from_toml(text.replace("min_share = 0.05", "min_share = 0.05\nx = 1"))
    with pytest.raises(ConfigurationError, match="incentives must be an IncentivePolicy"):
        _agreement(kits, incentives={"measure": "shapley"})


def test_incentives_with_required_secure_aggregation_are_refused(kits: dict[str, Kit]) -> None:
    secure = PrivacyRequirements(secure_aggregation_required=True)
    with pytest.raises(ConfigurationError, match="refused under secure aggregation"):
        _agreement(kits, incentives=POLICY, privacy=secure)
    assert _agreement(kits, privacy=secure).incentives is None
    assert dataclasses.replace(_agreement(kits), incentives=POLICY).incentives == POLICY
