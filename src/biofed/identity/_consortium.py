"""A consortium folder: the CA plus one kit per participant, as ``biofed provision`` lays it out."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.core.toml import toml_string
from biofed.identity._address import format_address, parse_address
from biofed.identity._ca import CertificateAuthority
from biofed.identity._kit import Kit, write_kit
from biofed.identity._pki import (
    check_consortium,
    check_name,
    check_role,
    make_private_dir,
    write_public,
)
from biofed.identity._registry import IssuedCertificate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

LAYOUT_FILE = "consortium.toml"
COORDINATOR = "coordinator"
_RESERVED = frozenset({"ca", COORDINATOR, LAYOUT_FILE})


class Consortium:
    """A consortium folder: ``consortium.toml``, ``ca/`` and one kit folder per participant.

    ::

        DIR/consortium.toml      consortium name and coordinator address
        DIR/ca/                  the CA (ca-key.pem, ca.pem, crl.pem, registry.json)
        DIR/coordinator/         the coordinator's kit (with crl.pem)
        DIR/<name>/              the kit of each site, researcher and admin

    Every kit folder is self-contained: hand it to its participant over a secure channel.

    Security notes
    --------------
    The folder holds every participant's private key and the CA key until the kits are handed
    out; it is created with mode 0700. Move ``ca/`` offline once provisioning is done.
    """

    def __init__(self, directory: Path, ca: CertificateAuthority, coordinator: str) -> None:
        self._directory = directory
        self._ca = ca
        self._coordinator = coordinator

    def __repr__(self) -> str:
        return f"Consortium({self.name!r}, directory={str(self._directory)!r})"

    @property
    def directory(self) -> Path:
        """The consortium folder."""
        return self._directory

    @property
    def ca(self) -> CertificateAuthority:
        """The consortium's certificate authority."""
        return self._ca

    @property
    def name(self) -> str:
        """The consortium name."""
        return self._ca.consortium

    @property
    def coordinator(self) -> str:
        """The coordinator's address, ``host:port``."""
        return self._coordinator

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        consortium: str,
        coordinator: str,
        sites: Iterable[str],
        researchers: Iterable[str] = (),
        admin: str = "admin",
        valid_days: int = 365,
        ca_valid_days: int = 3650,
    ) -> Consortium:
        """Make the CA and a kit for the coordinator and every site, researcher and admin.

        Parameters
        ----------
        directory:
            The consortium folder; must not exist or be empty.
        consortium:
            The consortium name (certificate O).
        coordinator:
            ``HOST[:PORT]`` the participants dial (default port 7443); HOST goes into the
            coordinator certificate's SubjectAltName.
        sites, researchers, admin:
            Participant names (biofed ids, distinct even ignoring case).
        valid_days, ca_valid_days:
            Validity of participant certificates and of the CA certificate.
        """
        folder = Path(directory)
        check_consortium(consortium)
        host, port = parse_address(coordinator)
        members = [(name, "site") for name in sites] + [
            (name, "researcher") for name in researchers
        ]
        members.append((admin, "admin"))
        if not any(role == "site" for _, role in members):
            raise ConfigurationError("a consortium needs at least one site")
        seen: set[str] = set()
        for name, _ in members:
            _check_free(check_name(name), seen)
            seen.add(name.lower())
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigurationError(f"{folder} exists and is not empty; pick a new folder")
        make_private_dir(folder)
        ca = CertificateAuthority.create(folder / "ca", consortium, valid_days=ca_valid_days)
        address = format_address(host, port)
        layout = f"consortium = {toml_string(consortium)}\ncoordinator = {toml_string(address)}\n"
        header = "# biofed consortium folder, made by `biofed provision init`\n"
        write_public(folder / LAYOUT_FILE, (header + layout).encode("utf-8"))
        self = cls(folder, ca, address)
        for name, role in [(COORDINATOR, "coordinator"), *members]:
            self.add(name, role, valid_days=valid_days)
        return self

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Consortium:
        """Open a consortium folder made by :meth:`create`."""
        folder = Path(directory)
        path = folder / LAYOUT_FILE
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigurationError(
                f"{folder} is not a consortium folder ({LAYOUT_FILE} missing): pass the folder "
                "that `biofed provision init --out` created"
            ) from exc
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{path} is not readable TOML: {exc}") from exc
        address = data.get("coordinator")
        if not isinstance(address, str):
            raise ConfigurationError(f"{path}: 'coordinator' must be a string")
        ca = CertificateAuthority.load(folder / "ca")
        if data.get("consortium") != ca.consortium:
            raise ConfigurationError(f"{path} and {folder / 'ca'} name different consortia")
        return cls(folder, ca, format_address(*parse_address(address)))

    def kit_directory(self, name: str) -> Path:
        """Where the kit of participant ``name`` lies."""
        return self._directory / check_name(name)

    def add(self, name: str, role: str, *, valid_days: int = 365, replace: bool = False) -> Kit:
        """Issue a certificate to a new participant and write its kit folder.

        With ``replace`` an existing participant (or the coordinator) gets a new key and
        certificate, its old certificate is revoked, and its kit folder is rewritten.
        """
        check_name(name)
        check_role(role)
        if (role == "coordinator") != (name == COORDINATOR):
            raise ConfigurationError(f"only the participant named {COORDINATOR!r} is coordinator")
        issued = self._ca.certificates()
        others = {c.name.lower() for c in issued if c.name != name}
        roles = {c.role for c in issued if c.name == name}
        if roles - {role}:
            raise ConfigurationError(
                f"{name!r} is a {roles.pop()} in this consortium; pick another name for a {role}"
            )
        if role != "coordinator":
            _check_free(name, others)
        folder = self.kit_directory(name)
        if folder.exists() and any(folder.iterdir()) and not replace:
            raise ConfigurationError(
                f"{folder} exists already; to re-issue the certificate of {name!r}, pass "
                "replace=True (CLI: --replace)"
            )
        if role == "coordinator":
            host, port = parse_address(self._coordinator)
            credentials = self._ca.issue(
                name, role, hosts=[host], valid_days=valid_days, replace=replace
            )
            return write_kit(
                folder,
                credentials,
                coordinator=self._coordinator,
                crl_pem=self._ca.crl_pem(),
                listen=format_address("0.0.0.0", port),
                state=f"sqlite:///{(folder / 'state.db').resolve()}",
                overwrite=replace,
            )
        credentials = self._ca.issue(name, role, valid_days=valid_days, replace=replace)
        return write_kit(folder, credentials, coordinator=self._coordinator, overwrite=replace)

    def revoke(self, name: str) -> tuple[int, ...]:
        """Revoke ``name``'s certificates (see :meth:`CertificateAuthority.revoke`)."""
        return self._ca.revoke(name)

    def participants(self) -> tuple[IssuedCertificate, ...]:
        """Every certificate issued in this consortium, oldest first."""
        return self._ca.certificates()


def _check_free(name: str, taken: set[str]) -> None:
    if name.lower() in _RESERVED:
        raise ConfigurationError(f"{name!r} is reserved in a consortium folder; pick another name")
    if name.lower() in taken:
        raise ConfigurationError(
            f"{name!r} is taken (names must differ even ignoring case: they are folder names)"
        )
