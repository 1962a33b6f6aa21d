"""A small deterministic TOML writer and a checked reader for study-agreement files.

Only the shapes an agreement file uses are written: strings, bools, ints, finite floats,
dates, UTC datetimes, lists of those, tables and arrays of tables. Output depends only on the
data (keys in the order given), so the same agreement always renders to the same bytes.
"""

from __future__ import annotations

import datetime as dt
import math
import sys
from collections.abc import Iterable, Mapping

from biofed.core import ConfigurationError
from biofed.core.toml import toml_key, toml_string

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HEADER = (
    "biofed study agreement. Each party signs the meaning of every field outside",
    "[signatures] (canonical JSON of the values), so re-formatting keeps the signatures valid",
    "and any change of a value invalidates all of them. Check: biofed agreement verify FILE",
)
"""The comment at the top of every agreement file."""


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigurationError(f"cannot write the non-finite number {value!r} to TOML")
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, dt.datetime):
        if value.utcoffset() != dt.timedelta(0):
            raise ConfigurationError(f"datetimes in agreement files are UTC, got {value}")
        return value.replace(tzinfo=None).isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise ConfigurationError(f"cannot write a {type(value).__name__} to TOML")


def _is_table_array(value: object) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], Mapping)


def _table(path: tuple[str, ...], data: Mapping[str, object], lines: list[str]) -> None:
    for key, value in data.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{toml_key(key)} = {_value(value)}")
    for key, value in data.items():
        sub = (*path, key)
        name = ".".join(toml_key(part) for part in sub)
        if isinstance(value, Mapping):
            if not value or not all(isinstance(v, Mapping) for v in value.values()):
                lines += ["", f"[{name}]"]  # a table of tables needs no header of its own
            _table(sub, value, lines)
        elif _is_table_array(value):
            assert isinstance(value, (list, tuple))
            for item in value:
                lines += ["", f"[[{name}]]"]
                _table(sub, item, lines)


def dumps(data: Mapping[str, object], comments: Iterable[str] = ()) -> str:
    """Render ``data`` as TOML, top-level values first, then tables in the order given."""
    lines = [f"# {line}" if line else "#" for line in comments]
    _table((), data, lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def loads(text: str, where: str = "agreement") -> dict[str, object]:
    """Parse TOML text; a syntax error becomes a ConfigurationError naming ``where``."""
    if not isinstance(text, str):
        raise ConfigurationError(f"{where}: expected TOML text, got {type(text).__name__}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where} is not valid TOML: {exc}") from exc
