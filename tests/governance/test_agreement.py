"""Study agreements: the value, its TOML file, signatures and the in-force check."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import ConfigurationError, PolicyViolation
from biofed.governance._agreement import (
    OutputPolicy,
    Party,
    PrivacyRequirements,
    Signature,
    SignedAgreement,
    StudyAgreement,
    read_agreement,
    require_in_force,
    sign,
    verify,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit

SIGNERS = ("a", "b", "r", "coordinator")
EXPIRES = dt.date(2099, 12, 31)
BUNDLE = "ab" * 32


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return folder


@pytest.fixture(scope="module")
def kits(fed: Path) -> dict[str, Kit]:
    return {name: load_kit(fed / name) for name in (*SIGNERS, "admin")}


@pytest.fixture(scope="module")
def certs(fed: Path) -> dict[str, bytes]:
    return {name: (fed / name / "cert.pem").read_bytes() for name in (*SIGNERS, "admin")}


@pytest.fixture(scope="module")
def ca(fed: Path) -> bytes:
    return (fed / "ca" / "ca.pem").read_bytes()


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


@pytest.fixture(scope="module")
def agreement(kits: dict[str, Kit]) -> StudyAgreement:
    return StudyAgreement(
        agreement_id="brca-cox-2025",
        title="Survival in breast cancer",
        purpose="Train a Cox model on TCGA-BRCA.\nNo other use.",
        legal_basis="GDPR Art. 9(2)(j); ethics approval EC-2025-17",
        consortium="t",
        coordinator=_party(kits["coordinator"]),
        parties=(_party(kits["r"]), _party(kits["b"]), _party(kits["a"])),
        datasets={"a": "brca", "b": "brca-v2"},
        approved_bundles=(BUNDLE,),
        outputs=OutputPolicy(final_model=True, metrics=("c_index",), per_site_metrics=False),
        privacy=PrivacyRequirements(
            secure_aggregation_required=True,
            dp_required=True,
            max_epsilon={"a": 8, "b": 4.5},
            max_delta={"a": 1e-5, "b": 1e-6},
        ),
        expires=EXPIRES,
    )


@pytest.fixture(scope="module")
def signed(agreement: StudyAgreement, kits: dict[str, Kit]) -> SignedAgreement:
    out = SignedAgreement(agreement=agreement)
    for name in SIGNERS:
        out = sign(out, kits[name])
    return out


# -- the value and its TOML form ------------------------------------------------------------


def test_toml_round_trip_is_exact_and_deterministic(
    agreement: StudyAgreement, signed: SignedAgreement
) -> None:
    text = agreement.to_toml()
    assert StudyAgreement.from_toml(text) == agreement
    assert StudyAgreement.from_toml(text).to_toml() == text
    assert SignedAgreement.from_toml(signed.to_toml()) == signed
    assert "[signatures.a]" in signed.to_toml()
    assert [p.name for p in agreement.parties] == ["a", "b", "r"]
    assert agreement.privacy.max_epsilon["a"] == 8.0


def test_canonical_bytes_are_sorted_compact_json(agreement: StudyAgreement) -> None:
    raw = agreement.canonical_bytes()
    data = json.loads(raw)
    assert raw == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert data["expires"] == "2099-12-31"
    shuffled = dataclasses.replace(agreement, parties=tuple(reversed(agreement.parties)))
    assert shuffled.canonical_bytes() == raw


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"agreement_id": "bad id"}, "agreement_id"),
        ({"datasets": {"a": "brca", "b": "x", "r": "y"}}, "not a site party"),
        ({"datasets": {"a": "brca"}}, "no dataset for site"),
        ({"approved_bundles": ("abc",)}, "64 hex"),
        ({"approved_bundles": (BUNDLE, BUNDLE.upper())}, "more than once"),
        ({"expires": dt.datetime(2099, 1, 1)}, "date"),
        ({"expires": "next year"}, "YYYY-MM-DD"),
        ({"min_cohort": 0}, "min_cohort"),
        ({"title": "two\nlines"}, "single line"),
        ({"privacy": PrivacyRequirements(dp_required=True)}, "max_epsilon must give"),
    ],
)
def test_invalid_agreements_are_refused(
    agreement: StudyAgreement, change: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        dataclasses.replace(agreement, **change)  # type: ignore[arg-type]


def test_parties_must_be_unique_and_fingerprints_hex(agreement: StudyAgreement) -> None:
    twin = Party(name="A", role="site", fingerprint="0" * 64)
    with pytest.raises(ConfigurationError, match="listed twice"):
        dataclasses.replace(agreement, parties=(*agreement.parties, twin))
    with pytest.raises(ConfigurationError, match="fingerprint of 'x'"):
        Party(name="x", role="site", fingerprint="zz" * 32)
    with pytest.raises(ConfigurationError, match="role of 'x'"):
        Party(name="x", role="boss", fingerprint="0" * 64)
    with pytest.raises(ConfigurationError, match="dp_required is false"):
        PrivacyRequirements(max_epsilon={"a": 1.0})
    with pytest.raises(ConfigurationError, match=r"in \(0, 1\)"):
        PrivacyRequirements(dp_required=True, max_epsilon={"a": 1.0}, max_delta={"a": 1.5})


def test_unknown_or_malformed_toml_is_refused(agreement: StudyAgreement) -> None:
    text = agreement.to_toml()
    with pytest.raises(ConfigurationError, match="unknown key"):
        StudyAgreement.from_toml(text.replace("min_cohort = 10", "min_cohort = 10\nnote = 'x'"))
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        StudyAgreement.from_toml(text + "\n[[[")
    with pytest.raises(ConfigurationError, match="format"):
        StudyAgreement.from_toml(text.replace("biofed-agreement/1", "v0"))
    with pytest.raises(ConfigurationError, match="must be true or false"):
        StudyAgreement.from_toml(text.replace("final_model = true", "final_model = 1"))


def test_file_round_trip(tmp_path: Path, signed: SignedAgreement) -> None:
    path = write_agreement(tmp_path / "study.toml", signed)
    assert read_agreement(path) == signed
    with pytest.raises(ConfigurationError, match="exists"):
        write_agreement(path, signed, overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["study.toml"]  # no temporary file left


# -- signatures -------------------------------------------------------------------------------


def test_everyone_signed_is_in_force(
    signed: SignedAgreement, certs: dict[str, bytes], ca: bytes
) -> None:
    status = verify(signed, certs, ca)
    assert status.in_force, status.reasons
    assert set(status.signed_by) == set(SIGNERS)
    assert status.missing == ()
    assert require_in_force(signed, certs, ca, party="a") == status
    with pytest.raises(PolicyViolation, match="'admin' is not a party"):
        require_in_force(signed, certs, ca, party="admin")


def test_missing_signature(signed: SignedAgreement, certs: dict[str, bytes], ca: bytes) -> None:
    partial = dataclasses.replace(
        signed, signatures={k: v for k, v in signed.signatures.items() if k != "r"}
    )
    status = verify(partial, certs, ca)
    assert not status.in_force
    assert status.missing == ("r",)
    assert status.reasons == ("not signed by researcher 'r'",)
    with pytest.raises(PolicyViolation, match="not in force: not signed by researcher 'r'"):
        require_in_force(partial, certs, ca)


def test_expired(
    signed: SignedAgreement, certs: dict[str, bytes], ca: bytes, kits: dict[str, Kit]
) -> None:
    assert verify(signed, certs, ca, today=EXPIRES).in_force
    status = verify(signed, certs, ca, today=EXPIRES + dt.timedelta(days=1))
    assert not status.in_force
    assert status.reasons == ("expired on 2099-12-31 (today is 2100-01-01)",)
    late = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
    with pytest.raises(PolicyViolation, match="expired"):
        sign(SignedAgreement(agreement=signed.agreement), kits["a"], now=late)


def test_non_party_cannot_sign_and_its_signature_is_refused(
    signed: SignedAgreement, kits: dict[str, Kit], certs: dict[str, bytes], ca: bytes
) -> None:
    with pytest.raises(PolicyViolation, match="'admin' is not a party"):
        sign(signed, kits["admin"])
    key = serialization.load_pem_private_key(kits["admin"].key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    raw = key.sign(signed.agreement.canonical_bytes(), ec.ECDSA(hashes.SHA256()))
    forged = Signature(
        fingerprint=kits["admin"].fingerprint,
        signature=base64.b64encode(raw).decode(),
        signed_at=dt.datetime.now(dt.timezone.utc),
        digest=signed.agreement.digest(),
    )
    extra = dataclasses.replace(signed, signatures={**signed.signatures, "admin": forged})
    status = verify(SignedAgreement.from_toml(extra.to_toml()), certs, ca)
    assert not status.in_force
    assert status.reasons == (
        "signature by 'admin' refused: 'admin' is not a party to the agreement",
    )


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('metrics = ["c_index"]', 'metrics = ["c_index", "auc"]'),
        ("a = 8.0", "a = 80.0"),
        ("expires = 2099-12-31", "expires = 2199-12-31"),
        ("min_cohort = 10", "min_cohort = 2"),
        ('b = "brca-v2"', 'b = "everything"'),
    ],
)
def test_edit_after_signing_invalidates_every_signature(
    signed: SignedAgreement, certs: dict[str, bytes], ca: bytes, old: str, new: str
) -> None:
    text = signed.to_toml()
    assert text.count(old) == 1
    edited = SignedAgreement.from_toml(text.replace(old, new))
    status = verify(edited, certs, ca)
    assert not status.in_force
    assert status.signed_by == ()
    assert len(status.reasons) == len(SIGNERS)
    assert all("edited after" in reason for reason in status.reasons)
    with pytest.raises(PolicyViolation, match="edited after 'a' signed it"):
        require_in_force(edited, certs, ca)


def test_corrupt_signature(signed: SignedAgreement, certs: dict[str, bytes], ca: bytes) -> None:
    good = signed.signatures["b"]
    other = signed.signatures["a"].signature
    bad = dataclasses.replace(
        signed, signatures={**signed.signatures, "b": dataclasses.replace(good, signature=other)}
    )
    status = verify(bad, certs, ca)
    assert status.reasons == (
        "signature of site 'b' is invalid: corrupt, or not made with its certificate's key",
    )


def test_formatting_only_changes_keep_signatures_valid(
    signed: SignedAgreement, certs: dict[str, bytes], ca: bytes
) -> None:
    text = signed.to_toml()
    head, sep, tail = text.partition("[coordinator]")
    reformatted = (
        "# re-formatted by hand\n"
        + head.replace(
            'title = "Survival in breast cancer"', "title    =   'Survival in breast cancer'"
        )
        .replace("expires = 2099-12-31", "expires = 2099-12-31 # last day")
        .replace("min_cohort = 10\n", "")  # the default, spelled out or not
        + sep
        + tail.replace("a = 8.0", "a = 8").replace(
            '[datasets]\na = "brca"\nb = "brca-v2"', '[datasets]\nb = "brca-v2"\n\n\na = "brca"'
        )
    )
    assert reformatted != text
    again = SignedAgreement.from_toml(reformatted)
    assert again == signed
    assert verify(again, certs, ca).in_force


def test_certificate_from_another_ca_is_refused(
    tmp_path: Path, signed: SignedAgreement, certs: dict[str, bytes], ca: bytes
) -> None:
    Consortium.create(
        tmp_path / "evil",
        consortium="t",
        coordinator="127.0.0.1",
        sites=["a", "b"],
        researchers=["r"],
    )
    foreign = {**certs, "a": (tmp_path / "evil" / "a" / "cert.pem").read_bytes()}
    status = verify(signed, foreign, ca)
    assert not status.in_force
    assert status.reasons == (
        "signature of site 'a' refused: certificate of 'a' was not issued by this consortium's CA",
    )
    # the whole set from the other CA: every signature is refused
    evil_ca = (tmp_path / "evil" / "ca" / "ca.pem").read_bytes()
    assert verify(signed, certs, evil_ca).signed_by == ()


def test_certificate_with_another_fingerprint_is_refused(
    tmp_path: Path, agreement: StudyAgreement
) -> None:
    folder = tmp_path / "c"
    fed = Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1", sites=["a", "b"], researchers=["r"]
    )
    kits = {name: load_kit(folder / name) for name in SIGNERS}
    ca = (folder / "ca" / "ca.pem").read_bytes()
    mine = dataclasses.replace(
        agreement,
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in ("a", "b", "r")),
    )
    signed = SignedAgreement(agreement=mine)
    for name in SIGNERS:
        signed = sign(signed, kits[name])
    fresh = {name: (folder / name / "cert.pem").read_bytes() for name in SIGNERS}
    assert verify(signed, fresh, ca).in_force
    # the wrong party's certificate (same CA) is refused
    swapped = verify(signed, {**fresh, "a": fresh["b"]}, ca)
    assert swapped.reasons == (
        "signature of site 'a' refused: the certificate given is site 'b''s",
    )
    # a re-issued certificate of 'a' (same CA, same name) is not the one listed
    new_kit = fed.add("a", "site", replace=True)
    status = verify(signed, {**fresh, "a": new_kit.cert_pem}, ca)
    assert not status.in_force
    assert "but the agreement lists" in status.reasons[0]
    with pytest.raises(PolicyViolation, match="is not the one the agreement lists"):
        sign(signed, new_kit)


def test_exact_guarantees_are_required_by_default_and_only_a_signed_false_relaxes_them(
    agreement: StudyAgreement,
) -> None:
    assert agreement.privacy.exact_guarantees_required  # the default: strict
    text = agreement.to_toml()
    assert "exact_guarantees_required" not in text  # older agreements keep their digest
    assert "exact_guarantees_required" not in agreement.canonical_bytes().decode()
    relaxed = dataclasses.replace(
        agreement,
        privacy=dataclasses.replace(agreement.privacy, exact_guarantees_required=False),
    )
    relaxed_text = relaxed.to_toml()
    assert "exact_guarantees_required = false" in relaxed_text
    assert StudyAgreement.from_toml(relaxed_text) == relaxed
    assert relaxed.digest() != agreement.digest()  # the relaxation is signed, not implied
    explicit = text.replace("[privacy]\n", "[privacy]\nexact_guarantees_required = true\n")
    assert StudyAgreement.from_toml(explicit) == agreement
    with pytest.raises(ConfigurationError, match="exact_guarantees_required"):
        StudyAgreement.from_toml(
            text.replace("[privacy]\n", '[privacy]\nexact_guarantees_required = "no"\n')
        )
