"""One vocabulary for checking parameters: value first, then the name the message uses.

Every check returns the value in its canonical type (``int``, ``float``, ``bool``, ``str``)
or raises :class:`~biofed.core.ConfigurationError` with one line that names the parameter,
says what it must be and shows what it got — raised early, before anything is contacted
(scikit-learn's declarative constraints; the house rule "validate parameters once, early,
with a message that says what to do")::

    check_int(num_sites, "num_sites", minimum=1)        # num_sites must be >= 1, got 0
    check_float(delta, "delta cap", minimum=0, below=1)  # delta cap must be in [0, 1), got 1.0
    check_fraction(fraction, "fraction_train", above=0)  # fraction_train must be in (0, 1], got 0
    check_flag(value, "dp_required")                     # dp_required must be true or false, ...
    check_choice(name, "accountant", ("pld", "rdp"))     # accountant must be one of pld, rdp, ...

The messages come in three steps, from the coarsest failure to the finest: the type
(``must be an integer`` / ``must be a number``; a ``bool`` is never a number), finiteness
(``must be finite``), then the range, written as ``>= a``, ``> a``, ``<= b``, ``< b`` or an
interval ``in [a, b)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection
from numbers import Real
from typing import TypeVar

from biofed.core._errors import ConfigurationError

__all__ = [
    "check_choice",
    "check_flag",
    "check_float",
    "check_fraction",
    "check_int",
    "check_text",
    "describe_range",
]

_T = TypeVar("_T")


def describe_range(
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> str:
    """The range as the messages write it: ``>= 0``, ``> 0``, ``in [0, 1)``, ``in (0, 1]``…"""
    low = minimum if minimum is not None else above
    high = maximum if maximum is not None else below
    if low is not None and high is not None:
        left = "[" if minimum is not None else "("
        right = "]" if maximum is not None else ")"
        return f"in {left}{_show(low)}, {_show(high)}{right}"
    if low is not None:
        return f"{'>=' if minimum is not None else '>'} {_show(low)}"
    if high is not None:
        return f"{'<=' if maximum is not None else '<'} {_show(high)}"
    return "any value"


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _in_range(
    number: float,
    minimum: float | None,
    maximum: float | None,
    above: float | None,
    below: float | None,
) -> bool:
    return (
        (minimum is None or number >= minimum)
        and (maximum is None or number <= maximum)
        and (above is None or number > above)
        and (below is None or number < below)
    )


def check_int(
    value: object,
    what: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """``value`` as an ``int`` (any integral type but ``bool``), within the bounds (inclusive).

    Raises
    ------
    ConfigurationError
        ``{what} must be an integer, got …`` or ``{what} must be >= {minimum}, got …``.
    """
    if isinstance(value, bool):
        raise ConfigurationError(f"{what} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigurationError(f"{what} must be an integer, got {value!r}") from None
    if not _in_range(number, minimum, maximum, None, None):
        rule = describe_range(minimum=minimum, maximum=maximum)
        raise ConfigurationError(f"{what} must be {rule}, got {number}")
    return int(number)


def check_float(
    value: object,
    what: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` as a finite ``float`` (any real number but ``bool``) within the bounds:
    ``minimum``/``maximum`` inclusive, ``above``/``below`` exclusive.

    Raises
    ------
    ConfigurationError
        ``{what} must be a number``, ``{what} must be finite`` or ``{what} must be {range}``.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigurationError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigurationError(f"{what} must be finite, got {number}")
    if not _in_range(number, minimum, maximum, above, below):
        rule = describe_range(minimum=minimum, maximum=maximum, above=above, below=below)
        raise ConfigurationError(f"{what} must be {rule}, got {number}")
    return number


def check_fraction(value: object, what: str, *, above: float | None = None) -> float:
    """A finite number in ``[0, 1]``; with ``above=0``, in ``(0, 1]``."""
    if above is not None:
        return check_float(value, what, above=above, maximum=1)
    return check_float(value, what, minimum=0, maximum=1)


def check_flag(value: object, what: str) -> bool:
    """``value`` if it is a ``bool`` (not 0/1 or a string such as ``"yes"``)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{what} must be true or false, got {value!r}")
    return value


def check_text(
    value: object, what: str, *, max_length: int | None = None, single_line: bool = False
) -> str:
    """Non-empty printable text (tabs and newlines allowed unless ``single_line``), at most
    ``max_length`` characters."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be non-empty text, got {value!r}")
    if max_length is not None and len(value) > max_length:
        raise ConfigurationError(
            f"{what} must be at most {max_length} characters, got {len(value)}"
        )
    allowed = "" if single_line else "\n\t"
    if any(not ch.isprintable() and ch not in allowed for ch in value):
        kind = "a single line of printable text" if single_line else "printable text"
        raise ConfigurationError(f"{what} must be {kind}, got {value!r}")
    return value


def check_choice(value: _T, what: str, choices: Collection[_T]) -> _T:
    """``value`` if it is one of ``choices`` (compared with ``==``; a ``bool`` never stands
    for 0 or 1)."""
    if isinstance(value, bool) != any(isinstance(c, bool) for c in choices) or (
        value not in choices
    ):
        shown = ", ".join(str(c) for c in choices)
        raise ConfigurationError(f"{what} must be one of {shown}, got {value!r}")
    return value
