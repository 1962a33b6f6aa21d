"""Where a site's OMOP CDM lives, and how the node gets its password without storing it.

A registered CDM is a DuckDB file (a path, ``duckdb:///path``) or a database URL
(``postgresql://user@host/db``, any SQLAlchemy URL). A URL that carries a password
(``user:pw@host`` or a ``password=`` query parameter) is refused: the password would end up
in ``node.toml``, in the registry, in shell history and in ``ps`` output (the CLI's
arguments). The password comes instead from an environment variable the site names
(``password_env``), read only when the node connects, or from the driver's own secret store
(PostgreSQL's ``~/.pgpass`` / ``PGPASSWORD`` need no setting here).

Security notes
--------------
Threat: database credentials leaking through configuration files, the registry, the audit
log, error messages or the command line. Following OWASP's Secrets Management Cheat Sheet
(keep secrets out of configuration and source, inject them at runtime) and 12-factor's
"config in the environment", only the variable's *name* is stored; every URL biofed prints
or stores is password-free, and connection errors are rendered with the password hidden.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from biofed.core import ConfigurationError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "pass"})


def _is_duckdb(url: str) -> bool:
    return url.startswith("duckdb:") or "://" not in url


def omop_location(url: str) -> str:
    """The password-free location to record for a CDM URL: a DuckDB file's absolute path,
    or the database URL as given.

    Raises
    ------
    ConfigurationError
        If the URL is empty or carries a password (naming ``--password-env`` as the fix).
    """
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("the OMOP URL must be a non-empty string")
    if _is_duckdb(url):
        path = url[len("duckdb:///") :] if url.startswith("duckdb:///") else url
        if url.startswith("duckdb:") and not url.startswith("duckdb:///"):
            raise ConfigurationError(f"DuckDB URLs are duckdb:///path/to/cdm.duckdb, got {url!r}")
        return str(Path(path).expanduser().resolve())
    parts = urlsplit(url)
    secret_query = any(k.lower() in _SECRET_PARAMS for k, _ in parse_qsl(parts.query))
    if parts.password is not None or secret_query:
        raise ConfigurationError(
            "the OMOP URL carries a password, which would be stored and shown in clear; "
            "remove it and name the environment variable that holds it (--password-env / "
            "password_env), or use the driver's own password file (~/.pgpass)"
        )
    if not parts.scheme or not (parts.netloc or parts.path):
        raise ConfigurationError(f"cannot read {url!r} as a database URL")
    return url


def check_omop_url(url: str, *, password_env: str | None = None) -> str:
    """Validate an OMOP URL (no password in it) and the password variable's name; returns
    the location to record (:func:`omop_location`)."""
    check_env_name(password_env)
    return omop_location(url)


def check_env_name(name: str | None) -> str | None:
    """Validate an environment variable name (None passes)."""
    if name is not None and (not isinstance(name, str) or not _ENV_NAME.fullmatch(name)):
        raise ConfigurationError(f"password_env must be an environment variable name, got {name!r}")
    return name


def omop_connect_url(location: str, password_env: str | None, environ: Mapping[str, str]) -> str:
    """The URL to connect with: ``location`` plus the password read from ``environ``.

    Security notes
    --------------
    The result may hold the password: pass it to :meth:`~biofed.data.OmopDatabase.open`
    only, never store or print it.
    """
    if password_env is None or _is_duckdb(location):
        return location
    password = environ.get(password_env)
    if not password:
        raise ConfigurationError(
            f"the OMOP database's password is read from ${password_env}, which is not set "
            "in the node's environment"
        )
    from sqlalchemy.engine import make_url

    return make_url(location).set(password=password).render_as_string(hide_password=False)


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
