"""The audit log writer's identity: its participant name and kit key."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import ConfigurationError, check_id
from biofed.governance._audit._entry import SIGNATURE, AuditEntry, BadEntry, decode_signature
from biofed.identity import Kit


class AuditSigner:
    """A writer's name and signing key for its audit log.

    Parameters
    ----------
    name:
        The writer's participant name (the CN of its certificate).
    key_pem:
        The writer's unencrypted PEM private key, ECDSA P-256 (a kit's ``key.pem``).

    Security notes
    --------------
    Signs with ECDSA P-256 / SHA-256 (FIPS 186-5) so that anyone holding the writer's
    certificate can check every entry, and nobody without the key can write one. The key stays
    in this object; it is never logged or shown by ``repr``.
    """

    __slots__ = ("_key", "_name")

    def __init__(self, name: str, key_pem: bytes) -> None:
        self._name = check_id(name, what="audit writer name")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError("key_pem is not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigurationError("audit signing keys are ECDSA P-256 keys (a kit's key.pem)")
        self._key = key

    @classmethod
    def from_kit(cls, kit: Kit) -> AuditSigner:
        """The signer of the participant whose kit this is."""
        return cls(kit.name, kit.key_pem)

    def __repr__(self) -> str:
        return f"AuditSigner({self._name!r})"

    @property
    def name(self) -> str:
        """The writer's participant name."""
        return self._name

    def sign(self, message: bytes) -> bytes:
        """The DER ECDSA P-256 / SHA-256 signature of ``message``."""
        return self._key.sign(message, SIGNATURE)

    def signed_by_me(self, entry: AuditEntry) -> bool:
        """Whether ``entry`` names this writer and its signature verifies with this key."""
        try:
            der = decode_signature(entry.sig)
            self._key.public_key().verify(der, entry.hash.encode("ascii"), SIGNATURE)
        except (BadEntry, InvalidSignature):
            return False
        return entry.writer == self._name
