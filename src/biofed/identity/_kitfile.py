"""``kit.toml``: what a kit folder says about its participant, read and written."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from biofed.core import ConfigurationError
from biofed.core.toml import toml_string
from biofed.identity._address import format_address, parse_address
from biofed.identity._kit_schema import KIT_FILES
from biofed.identity._pki import check_consortium, check_name, check_role

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

KIT_FILE = "kit.toml"
DEFAULT_FILES = {"key": "key.pem", "cert": "cert.pem", "ca": "ca.pem", "crl": "crl.pem"}


@dataclass(frozen=True, slots=True, kw_only=True)
class KitConfig:
    """The settings of ``kit.toml`` (file names relative to the kit folder)."""

    name: str
    role: str
    consortium: str
    coordinator: str
    files: Mapping[str, str]
    listen: str | None
    state: str | None
    max_concurrent_runs: int | None = None


def render_kit_config(config: KitConfig) -> str:
    lines = [
        f"# biofed kit of {config.role} {config.name!r} in consortium {config.consortium!r}.",
        "# key.pem is this participant's private key: keep the folder readable by its owner only.",
        f"name = {toml_string(config.name)}",
        f"role = {toml_string(config.role)}",
        f"consortium = {toml_string(config.consortium)}",
        f"coordinator = {toml_string(config.coordinator)}",
    ]
    if config.listen is not None:
        lines.append(f"listen = {toml_string(config.listen)}")
    if config.state is not None:
        lines.append(f"state = {toml_string(config.state)}")
    if config.max_concurrent_runs is not None:
        lines.append(f"max_concurrent_runs = {config.max_concurrent_runs}")
    lines += ["", "[files]"]
    lines += [f"{key} = {toml_string(value)}" for key, value in config.files.items()]
    if config.role == "site":
        lines += [
            "",
            "# Datasets this site offers to the federation; uncomment, one line per dataset:",
            "# [datasets]",
            '# cohort = "/data/cohort.parquet"',
        ]
    return "\n".join(lines) + "\n"


def _string(table: Mapping[str, object], key: str, where: Path, *, optional: bool = False) -> str:
    value = table.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {key!r} must be a non-empty string")
    return value


def read_kit_config(directory: Path) -> KitConfig:
    """Parse and check ``directory/kit.toml`` (not the key material)."""
    path = Path(directory) / KIT_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigurationError(f"{path} not found: is {directory} a biofed kit?") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path} is not readable TOML: {exc}") from exc
    files_table = data.get("files", {})
    if not isinstance(files_table, dict):
        raise ConfigurationError(f"{path}: [files] must be a table")
    files: dict[str, str] = {}
    for key in KIT_FILES.ordered:  # the declared [files] keys
        value = _string(files_table, key, path, optional=key == "crl")
        if value and (Path(value).name != value or value in (".", "..") or "\\" in value):
            raise ConfigurationError(
                f"{path}: files.{key} must be a file name inside the kit folder, got {value!r}"
            )
        if value:
            files[key] = value
    role = check_role(_string(data, "role", path))
    host, port = parse_address(_string(data, "coordinator", path))
    listen = _string(data, "listen", path, optional=True) or None
    if listen is not None:
        listen = format_address(*parse_address(listen))
    if role == "coordinator" and "crl" not in files:
        raise ConfigurationError(f"{path}: a coordinator kit needs files.crl (the CA's CRL)")
    concurrent = data.get("max_concurrent_runs")
    if concurrent is not None:
        if role != "coordinator":
            raise ConfigurationError(f"{path}: max_concurrent_runs belongs to the coordinator")
        if isinstance(concurrent, bool) or not isinstance(concurrent, int):
            raise ConfigurationError(f"{path}: max_concurrent_runs must be an integer")
        if not 1 <= concurrent <= 256:
            raise ConfigurationError(
                f"{path}: max_concurrent_runs must be between 1 and 256, got {concurrent}"
            )
    return KitConfig(
        name=check_name(_string(data, "name", path)),
        role=role,
        consortium=check_consortium(_string(data, "consortium", path)),
        coordinator=format_address(host, port),
        files=files,
        listen=listen,
        state=_string(data, "state", path, optional=True) or None,
        max_concurrent_runs=concurrent,
    )
