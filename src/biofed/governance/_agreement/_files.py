"""Reading and writing agreement files (atomically, size-limited)."""

from __future__ import annotations

import os
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.governance._agreement._sign import SignedAgreement
from biofed.governance._files import write_atomically

MAX_AGREEMENT_BYTES = 1 << 20
"""Agreement files larger than this (1 MiB) are refused unread."""


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
    write_atomically(file, data, mode=0o644)
    return file
