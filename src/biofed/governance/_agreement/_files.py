"""Study agreements: a machine-readable, signed statement of what a federated study may do.

An agreement (:class:`StudyAgreement`) names the parties and the coordinator by certificate
fingerprint, the dataset of each site in scope, the task bundles approved by digest, the
outputs allowed to leave, the privacy required and an expiry date. It lives in one TOML file
together with the parties' signatures (:class:`SignedAgreement`); each party adds its own with
:func:`sign`, and :func:`verify` / :func:`require_in_force` decide whether it is in force.

The signatures cover the canonical JSON of the agreement's values
(:meth:`StudyAgreement.canonical_bytes`), not the TOML text: re-formatting a file keeps them
valid, changing any value invalidates every one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.governance._agreement_model import (
    FORMAT,
    PARTY_ROLES,
    OutputPolicy,
    Party,
    PrivacyRequirements,
    StudyAgreement,
)
from biofed.governance._agreement_sign import Signature, SignedAgreement, sign
from biofed.governance._agreement_verify import AgreementStatus, require_in_force, verify

MAX_AGREEMENT_BYTES = 1 << 20
"""Agreement files larger than this (1 MiB) are refused unread."""

__all__ = [
    "FORMAT",
    "MAX_AGREEMENT_BYTES",
    "PARTY_ROLES",
    "AgreementStatus",
    "OutputPolicy",
    "Party",
    "PrivacyRequirements",
    "Signature",
    "SignedAgreement",
    "StudyAgreement",
    "read_agreement",
    "require_in_force",
    "sign",
    "verify",
    "write_agreement",
]


def read_agreement(path: str | os.PathLike[str]) -> SignedAgreement:
    """Read an agreement file (signed or a draft); the signatures are not verified here.

    Raises
    ------
    ConfigurationError
        If the file is missing, too large, not UTF-8 TOML or not a valid agreement.
    """
    file = Path(path)
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_AGREEMENT_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(f"cannot read agreement {file}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_AGREEMENT_BYTES:
        raise ConfigurationError(f"{file} is larger than {MAX_AGREEMENT_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{file} is not UTF-8 text") from exc
    return SignedAgreement.from_toml(text, where=str(file))


def write_agreement(
    path: str | os.PathLike[str], signed: SignedAgreement, *, overwrite: bool = True
) -> Path:
    """Write ``signed`` to ``path`` atomically (a temporary file renamed over it).

    A reader never sees a half-written file and a crash leaves the old file intact.
    Refuses to replace an existing file unless ``overwrite``.
    """
    file = Path(path)
    if not overwrite and file.exists():
        raise ConfigurationError(f"{file} exists; refusing to overwrite it")
    data = signed.to_toml().encode("utf-8")
    handle, temp = tempfile.mkstemp(dir=file.parent or ".", prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, file)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return file
