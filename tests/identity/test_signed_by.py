"""`signed_by`: a signature counts only under a CA-issued, unrevoked certificate of exactly
the participant (name and role) it claims to come from — a relaying party can forward
certificates but not substitute one."""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.governance import AuditSigner
from biofed.identity import Consortium, load_kit, signed_by


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return Consortium.create(
        tmp_path_factory.mktemp("sig") / "c",
        consortium="t",
        coordinator="127.0.0.1:7443",
        sites=["a", "b"],
        researchers=["r"],
    )


def test_only_the_named_participants_certificate_and_key_count(
    consortium: Consortium, tmp_path: Path
) -> None:
    a, b, r = (load_kit(consortium.kit_directory(n)) for n in ("a", "b", "r"))
    message = b"keys of a for round 1"
    signature = AuditSigner.from_kit(a).sign(message)

    def check(cert: bytes, name: str = "a", role: str = "site", msg: bytes = message) -> bool:
        return signed_by(cert, a.ca_pem, name=name, role=role, message=msg, signature=signature)

    assert check(a.cert_pem)
    assert not check(a.cert_pem, msg=b"keys of a for round 2")  # tampered message
    assert not check(b.cert_pem)  # another site's certificate relayed as a's
    assert not check(b.cert_pem, name="b")  # b did not sign it
    assert not check(a.cert_pem, name="b")  # a's certificate does not name b
    assert not check(a.cert_pem, role="researcher")
    assert not check(r.cert_pem, name="r", role="researcher")
    foreign = Consortium.create(
        tmp_path / "other", consortium="t", coordinator="127.0.0.1:7443", sites=["a"]
    )
    assert not check(load_kit(foreign.kit_directory("a")).cert_pem)  # not this CA's


def test_a_revoked_certificate_no_longer_counts(tmp_path: Path) -> None:
    consortium = Consortium.create(
        tmp_path / "c", consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"]
    )
    a = load_kit(consortium.kit_directory("a"))
    signature = AuditSigner.from_kit(a).sign(b"m")
    consortium.revoke("a")
    crl = load_kit(consortium.kit_directory("coordinator")).crl_pem
    assert crl is not None
    assert signed_by(a.cert_pem, a.ca_pem, name="a", role="site", message=b"m", signature=signature)
    assert not signed_by(
        a.cert_pem,
        a.ca_pem,
        name="a",
        role="site",
        message=b"m",
        signature=signature,
        crl_pem=crl,
    )
