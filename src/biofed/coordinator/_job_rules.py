"""A small declarative vocabulary for the tables users write (the job file, kit limits).

Each key is a :class:`Field` with one :class:`Rule` (an integer range, a number interval,
a choice, a flag, a pattern); a :class:`Table` is a section of such keys and a
:class:`VariantTable` a section whose keys depend on its ``name`` (a task's or a strategy's
options). The same declarations check a parsed file, collect *every* error as one line that
names the field and what it may be, and render the reference page of the docs
(``scripts/gen_job_reference.py``), so the documentation cannot drift from the checks.

Security notes
--------------
Whatever a researcher writes reaches the coordinator's runner, the state store, the wire
and every site: a value outside what those can hold (a 64-bit round count in a 32-bit wire
field, a 3-billion-feature model, a negative cadence) has stopped a whole federation. Every
rule is therefore closed: exact types (``true`` is not an integer, ``"39"`` is not a number,
integral floats are not integers), finite numbers only, bounded ranges and lengths, and no
key that no rule names. Values are quoted in messages only through :func:`show`, which
bounds their length and escapes control characters, so one error is always one line.
The threats are CWE-20 (improper input validation) and CWE-190/CWE-681 (a value that
overflows or is truncated by a narrower type downstream); the approach is scikit-learn's
``_param_validation`` (declarative constraints, one message each).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from biofed.core import Scalar

#: Largest values of the integer types that wire fields and database columns use.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MAX = 2**63 - 1
#: At most this many error lines, and characters, are reported for one file (the rest are
#: counted): the message travels in a gRPC status, whose metadata is limited to 8 KiB.
MAX_ERRORS = 20
MAX_ERROR_CHARS = 4000
_SHOW_CHARS = 40


class Invalid(Exception):
    """A value a rule refuses (internal: turned into a one-line message by the table)."""


def show(value: object) -> str:
    """A short, one-line rendering of a value for an error message (TOML spelling)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > 200:  # str() of a huge int is slow, and refused past 4300 digits
            return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if len(value) > _SHOW_CHARS:
            return f"a string of {len(value)} characters"
        return repr(value)
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _number(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e15):
        return f"{int(value)}"
    return f"{value:g}"


class Rule(Protocol):
    """What one key may hold."""

    def check(self, value: object) -> Scalar:
        """The value, normalised (an int written for a float becomes a float); raises
        :class:`Invalid` otherwise."""
        ...

    def describe(self) -> str:
        """What the key may hold, as a phrase (``"an integer from 1 to 10"``)."""
        ...


@dataclass(frozen=True, slots=True)
class Integer:
    """An integer in ``[lo, hi]`` (not a bool, not a float even when integral)."""

    lo: int
    hi: int

    def check(self, value: object) -> Scalar:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid
        if not self.lo <= value <= self.hi:
            raise Invalid
        return value

    def describe(self) -> str:
        return f"an integer from {self.lo} to {self.hi}"


@dataclass(frozen=True, slots=True)
class Number:
    """A finite number in an interval (an integer is accepted and becomes a float)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def check(self, value: object) -> Scalar:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid
        try:
            number = float(value)
        except OverflowError:
            raise Invalid from None
        if not math.isfinite(number):
            raise Invalid
        if number < self.lo or (self.lo_open and number == self.lo):
            raise Invalid
        if number > self.hi or (self.hi_open and number == self.hi):
            raise Invalid
        return number

    def describe(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        return f"a number in {left}{_number(self.lo)}, {_number(self.hi)}{right}"


@dataclass(frozen=True, slots=True)
class Choice:
    """One of a few strings; with ``fold_case`` any letter case, normalised to the listed one."""

    values: tuple[str, ...]
    fold_case: bool = False

    def check(self, value: object) -> Scalar:
        if not isinstance(value, str):
            raise Invalid
        if self.fold_case:
            value = value.lower()
        if value not in self.values:
            raise Invalid
        return value

    def describe(self) -> str:
        return "one of " + ", ".join(f'"{v}"' for v in self.values)


@dataclass(frozen=True, slots=True)
class Flag:
    """``true`` or ``false``."""

    def check(self, value: object) -> Scalar:
        if not isinstance(value, bool):
            raise Invalid
        return value

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True, slots=True)
class Text:
    """A string matching ``pattern`` in full, of at most ``max_chars`` characters."""

    pattern: str
    max_chars: int
    what: str

    def check(self, value: object) -> Scalar:
        if not isinstance(value, str) or len(value) > self.max_chars:
            raise Invalid
        if not re.fullmatch(self.pattern, value, flags=re.ASCII):
            raise Invalid
        return value

    def describe(self) -> str:
        return self.what


#: What :class:`Field` holds when the key has no default.
NO_DEFAULT = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One key of a table.

    Attributes
    ----------
    name:
        The key.
    rule:
        What it may hold.
    doc:
        One or two sentences for the reference; the first is repeated when it is missing.
    default:
        What applies when the key is absent (documentation only: a missing key is left
        absent), or None.
    required:
        Whether the key must be given.
    """

    name: str
    rule: Rule
    doc: str
    default: Scalar | None = NO_DEFAULT
    required: bool = False


def _unknown(
    section: str, key: object, allowed: list[str], hints: Mapping[str, str], variant: str
) -> str:
    shown = repr(key) if isinstance(key, str) and len(key) <= _SHOW_CHARS else show(key)
    hint = hints.get(key, "") if isinstance(key, str) else ""
    hint = f" ({hint})" if hint else ""
    of = f" for {variant}" if variant else ""
    names = ", ".join(allowed) or "none"
    return f"unknown [{section}] key {shown}{of}{hint}; allowed: {names}"


def _check_fields(
    section: str,
    raw: Mapping[object, object],
    fields: tuple[Field, ...],
    hints: Mapping[str, str],
    errors: list[str],
    variant: str = "",
) -> dict[str, Scalar]:
    by_name = {f.name: f for f in fields}
    out: dict[str, Scalar] = {}
    for key, value in raw.items():
        spec = by_name.get(key) if isinstance(key, str) else None
        if spec is None:
            errors.append(_unknown(section, key, sorted(by_name), hints, variant))
            continue
        try:
            out[spec.name] = spec.rule.check(value)
        except Invalid:
            errors.append(
                f"[{section}] {spec.name} must be {spec.rule.describe()}, got {show(value)}"
            )
    for spec in fields:
        if spec.required and spec.name not in raw:
            errors.append(f"[{section}] {spec.name} is required: {spec.rule.describe()}")
    return out


def _as_table(section: str, raw: object, errors: list[str]) -> Mapping[object, object] | None:
    if not isinstance(raw, Mapping):
        errors.append(f"[{section}] must be a table of key = value pairs, got {show(raw)}")
        return None
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """A section of keys (``[run]``, ``[train]`` …)."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    #: Keys that belong elsewhere, and where: added to the "unknown key" message.
    hints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def check(self, raw: object, errors: list[str]) -> dict[str, Scalar]:
        """The table's values, normalised; every problem appended to ``errors``."""
        table = _as_table(self.name, raw, errors)
        if table is None:
            return {}
        return _check_fields(self.name, table, self.fields, self.hints, errors)


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantTable:
    """A section whose keys depend on its ``selector`` key (``[task] name``, ``[strategy]
    name``): the selector's choices each add their own fields to the ``common`` ones."""

    name: str
    doc: str
    selector: Field
    variants: Mapping[str, tuple[Field, ...]]
    common: tuple[Field, ...] = ()
    hints: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def fields_of(self, variant: str) -> tuple[Field, ...]:
        """Every field of ``variant``, the selector first."""
        return (self.selector, *self.common, *self.variants[variant])

    def check(self, raw: object, errors: list[str]) -> dict[str, Scalar]:
        """The table's values, normalised; every problem appended to ``errors``."""
        table = _as_table(self.name, raw, errors)
        if table is None:
            return {}
        key = self.selector.name
        if key not in table and self.selector.default is None:
            errors.append(f"[{self.name}] {key} is required: {self.selector.rule.describe()}")
            return {}
        chosen = table.get(key, self.selector.default)
        try:
            variant = str(self.selector.rule.check(chosen))
        except Invalid:
            errors.append(
                f"[{self.name}] {key} must be {self.selector.rule.describe()}, got {show(chosen)}"
            )
            return {}
        out = _check_fields(
            self.name, table, self.fields_of(variant), self.hints, errors, variant=variant
        )
        out[key] = variant
        return out


def error_text(errors: list[str]) -> str:
    """The message of a ConfigurationError for ``errors``: one line each, at most
    :data:`MAX_ERRORS` lines and about :data:`MAX_ERROR_CHARS` characters."""
    lines: list[str] = []
    size = 0
    for line in errors[:MAX_ERRORS]:
        if lines and size + len(line) > MAX_ERROR_CHARS:
            break
        lines.append(line)
        size += len(line) + 1
    if len(errors) > len(lines):
        lines.append(f"… and {len(errors) - len(lines)} more errors")
    return "\n".join(lines)
