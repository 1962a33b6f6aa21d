"""The bundle store: the task bundles jobs name, kept by digest for the nodes to fetch.

Security notes
--------------
Threat: a researcher submitting a bundle other than the one the job (and the sites'
approvals) name, an archive that escapes its folder or a file name that escapes the store
(``../``). A bundle is kept only after :func:`~biofed.governance.read_bundle` checked it
against the digest the job names; the file name is the digest checked by
:func:`~biofed.governance.check_digest` (64 hex characters, nothing else); files are written
to a temporary name and renamed, so a node never fetches half a bundle. The node checks the
digest again and its own approval before it runs anything (see :mod:`biofed.governance`).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.governance import check_digest, read_bundle


class BundleStore:
    """Task bundles by digest in one folder (``<directory>/<digest>.zip``).

    Parameters
    ----------
    directory:
        Where bundles are kept; ``None`` for a coordinator that keeps none (a job that names
        a bundle is then refused).
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory

    def path(self, digest: str) -> Path:
        """Where the bundle with ``digest`` is (or would be) kept.

        Raises
        ------
        ConfigurationError
            If this store keeps no bundles or ``digest`` is not a SHA-256 in hex.
        """
        if self.directory is None:
            raise ConfigurationError("this coordinator keeps no task bundles")
        return self.directory / f"{check_digest(digest)}.zip"

    def keep(self, digest: str | None, data: bytes) -> None:
        """Check the bundle a job names and keep it for the nodes (before the run exists).

        ``digest`` is the job's ``bundle`` (``None``: the job names none). ``data`` may be
        empty when the bundle is already kept.

        Raises
        ------
        ConfigurationError
            If a bundle was sent with a job that names none, the named bundle is neither sent
            nor kept, or ``data`` does not match ``digest`` or is not a sound bundle.
        """
        if digest is None:
            if data:
                raise ConfigurationError("a bundle was sent with a job that names none")
            return
        path = self.path(digest)
        if not data:
            if not path.is_file():
                raise ConfigurationError(
                    f"the job names bundle {digest[:12]}…: send it with the job "
                    "(biofed run submit JOB --bundle FILE)"
                )
            return
        read_bundle(data, expected_digest=digest)  # refuses a mismatch or a bad archive
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".part{uuid.uuid4().hex}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, digest: str) -> bytes:
        """The kept bundle with ``digest``.

        Raises
        ------
        LookupError
            If none is kept.
        """
        path = self.path(digest)
        if not path.is_file():
            raise LookupError(f"no bundle {digest[:12]}… here")
        return path.read_bytes()
