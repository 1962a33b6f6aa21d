"""Field checks shared by the study-agreement types: text, digests, typed table look-ups."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

from biofed.core import ConfigurationError, check_id

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def check_hex64(value: object, what: str) -> str:
    """Return ``value`` lower-cased if it is 64 hex digits (a SHA-256), else raise."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ConfigurationError(f"{what} must be 64 hex digits (a SHA-256), got {value!r}")
    return value.lower()


def check_date(value: object, what: str) -> dt.date:
    """A calendar date from a ``date`` or an ISO ``YYYY-MM-DD`` string (not a datetime)."""
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{what} must be a date YYYY-MM-DD, got {value!r}") from None
    if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
        raise ConfigurationError(f"{what} must be a date YYYY-MM-DD (UTC), got {value!r}")
    return value


def check_names(values: object, what: str, *, hex_digests: bool = False) -> tuple[str, ...]:
    """A sorted tuple of distinct ids (or SHA-256 hex digests) from a list or tuple."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ConfigurationError(f"{what} must be a list, got {values!r}")
    out = [check_hex64(v, what) if hex_digests else check_id(v, what=what) for v in values]
    doubled = sorted({v for v in out if out.count(v) > 1})
    if doubled:
        raise ConfigurationError(f"{what} lists {', '.join(doubled)} more than once")
    return tuple(sorted(out))


def table(data: Mapping[str, object], key: str, where: str) -> Mapping[str, object]:
    """``data[key]`` if it is a table (missing → error naming it)."""
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}: [{key}] must be a table")
    return value


def require(data: Mapping[str, object], key: str, where: str) -> object:
    """``data[key]``, or an error that names the missing key."""
    if key not in data:
        raise ConfigurationError(f"{where}: {key!r} is missing")
    return data[key]


def no_extra(data: Mapping[str, object], known: tuple[str, ...], where: str) -> None:
    """Refuse keys the format does not know: they would not be covered by the signatures."""
    extra = sorted(set(data) - set(known))
    if extra:
        raise ConfigurationError(
            f"{where}: unknown key(s) {', '.join(map(repr, extra))}; expected only "
            f"{', '.join(known)}"
        )
