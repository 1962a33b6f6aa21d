"""Writing TOML strings and keys: the one escaper that every TOML file biofed writes uses
(study agreements, kits, consortium layouts); reading is :mod:`tomllib`'s."""

from __future__ import annotations

import re

__all__ = ["toml_key", "toml_string"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string: quotes and backslashes escaped, newline and tab as
    ``\\n`` and ``\\t``, every other control character as ``\\uXXXX`` (so no value can end the
    string, the line or the table early)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_key(key: str) -> str:
    """``key`` bare when TOML allows it (``A-Za-z0-9_-``), else quoted."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)
