"""biofed.identity's public names (changing this list is an API change)."""

import biofed.identity


def test_public_api() -> None:
    assert biofed.identity.__all__ == [
        "CRL_VALIDITY",
        "DEFAULT_PORT",
        "ROLES",
        "CertificateAuthority",
        "Consortium",
        "Credentials",
        "IssuedCertificate",
        "Kit",
        "PeerIdentity",
        "RevocationList",
        "certificate_fingerprint",
        "identify_peer",
        "load_kit",
        "signed_by",
        "write_kit",
    ]
    for name in biofed.identity.__all__:
        assert hasattr(biofed.identity, name), name


def test_roles() -> None:
    assert biofed.identity.ROLES == ("admin", "coordinator", "researcher", "site")
