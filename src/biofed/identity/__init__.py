"""biofed.identity: the consortium PKI behind mutual TLS.

A consortium CA (:class:`CertificateAuthority`) issues each participant (coordinator, site,
researcher, admin) an ECDSA P-256 key and X.509 certificate whose subject is
``O=<consortium>, OU=<role>, CN=<name>``. A participant's *kit* folder holds its key,
certificate, the CA certificate and ``kit.toml`` (:func:`write_kit`, :func:`load_kit`);
:class:`Consortium` lays out a whole federation the way ``biofed provision`` does. The
transport calls :func:`identify_peer` on every connection to learn who the peer is and to
refuse expired, foreign or revoked certificates (:class:`RevocationList` follows the CRL file
of a long-running coordinator).
"""

from biofed.identity._address import DEFAULT_PORT
from biofed.identity._ca import CertificateAuthority
from biofed.identity._consortium import Consortium
from biofed.identity._kit import Kit, load_kit, write_kit
from biofed.identity._pki import ROLES, Credentials, certificate_fingerprint
from biofed.identity._profiles import CRL_VALIDITY
from biofed.identity._registry import IssuedCertificate
from biofed.identity._revocation import PeerIdentity, RevocationList, identify_peer, signed_by

__all__ = [
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
