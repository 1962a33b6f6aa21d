"""biofed.core.checks: one vocabulary of parameter checks, value first, one-line messages that
name the parameter, state the rule and show the value."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from biofed.core import ConfigurationError, checks
from biofed.core.checks import (
    check_choice,
    check_flag,
    check_float,
    check_fraction,
    check_int,
    check_text,
    describe_range,
)


def test_public_names() -> None:
    assert checks.__all__ == sorted(checks.__all__)
    assert set(checks.__all__) == {
        "check_choice",
        "check_flag",
        "check_float",
        "check_fraction",
        "check_int",
        "check_text",
        "describe_range",
    }


def test_int_accepts_integral_values_and_returns_int() -> None:
    assert check_int(3, "n") == 3
    value = check_int(np.int64(7), "n", minimum=1, maximum=7)
    assert value == 7
    assert type(value) is int


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (True, {}, "n must be an integer, got True"),
        (2.0, {}, "n must be an integer, got 2.0"),
        ("3", {}, "n must be an integer, got '3'"),
        (0, {"minimum": 1}, "n must be >= 1, got 0"),
        (9, {"maximum": 8}, "n must be <= 8, got 9"),
        (0, {"minimum": 1, "maximum": 8}, r"n must be in \[1, 8\], got 0"),
    ],
)
def test_int_messages(value: object, bounds: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{message}$"):
        check_int(value, "n", **bounds)


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (True, {}, "x must be a number, got True"),
        ("1", {}, "x must be a number, got '1'"),
        (None, {}, "x must be a number, got None"),
        (math.nan, {}, "x must be finite, got nan"),
        (-math.inf, {"minimum": 0}, "x must be finite, got -inf"),
        (-1.0, {"minimum": 0}, "x must be >= 0, got -1.0"),
        (0, {"above": 0}, "x must be > 0, got 0.0"),
        (1.0, {"minimum": 0, "below": 1}, r"x must be in \[0, 1\), got 1.0"),
        (0.0, {"above": 0, "maximum": 1}, r"x must be in \(0, 1\], got 0.0"),
        (0.5, {"above": 0.5, "below": 2.5}, r"x must be in \(0.5, 2.5\), got 0.5"),
        (3, {"maximum": 2}, "x must be <= 2, got 3.0"),
        (2, {"below": 2}, "x must be < 2, got 2.0"),
    ],
)
def test_float_messages(value: object, bounds: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{message}$"):
        check_float(value, "x", **bounds)


def test_float_converts_any_real() -> None:
    assert check_float(1, "x") == 1.0
    assert type(check_float(np.float32(0.5), "x")) is float
    assert check_float(Fraction(1, 4), "x", above=0, below=1) == 0.25


@given(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(-10, 10),
    st.floats(0, 10),
)
def test_float_bounds_agree_with_the_comparison(x: float, low: float, width: float) -> None:
    high = low + width
    if low <= x < high:
        assert check_float(x, "x", minimum=low, below=high) == x
    else:
        with pytest.raises(ConfigurationError, match=r"^x must be in \["):
            check_float(x, "x", minimum=low, below=high)


def test_fraction_flag_text_and_choice() -> None:
    assert check_fraction(1, "f") == 1.0
    with pytest.raises(ConfigurationError, match=r"^f must be in \[0, 1\], got 1.5$"):
        check_fraction(1.5, "f")
    with pytest.raises(ConfigurationError, match=r"^f must be in \(0, 1\], got 0.0$"):
        check_fraction(0.0, "f", above=0)
    assert check_flag(False, "b") is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ConfigurationError, match=r"^b must be true or false, got "):
            check_flag(bad, "b")
    assert check_text("a\tb\nc", "t") == "a\tb\nc"
    with pytest.raises(ConfigurationError, match="t must be non-empty text"):
        check_text("  ", "t")
    with pytest.raises(ConfigurationError, match="t must be at most 3 characters, got 4"):
        check_text("abcd", "t", max_length=3)
    with pytest.raises(ConfigurationError, match="t must be a single line of printable text"):
        check_text("a\nb", "t", single_line=True)
    with pytest.raises(ConfigurationError, match="t must be printable text"):
        check_text("a\x00b", "t")
    assert check_choice("pld", "accountant", ("pld", "rdp")) == "pld"
    with pytest.raises(ConfigurationError, match=r"^accountant must be one of pld, rdp, got 'x'$"):
        check_choice("x", "accountant", ("pld", "rdp"))
    assert check_choice(64, "ring_bits", (32, 64)) == 64
    with pytest.raises(ConfigurationError, match="ring_bits must be one of 0, 1, got True"):
        check_choice(True, "ring_bits", (0, 1))  # a bool never stands for 1


def test_every_message_is_one_line() -> None:
    for call in (
        lambda: check_int("x\ny", "n"),
        lambda: check_float("a\nb", "x"),
        lambda: check_choice("a\nb", "c", ("a",)),
        lambda: check_text("a\nb", "t", single_line=True),
    ):
        with pytest.raises(ConfigurationError) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_describe_range() -> None:
    assert describe_range() == "any value"
    assert describe_range(minimum=0) == ">= 0"
    assert describe_range(above=0.5) == "> 0.5"
    assert describe_range(minimum=1, maximum=256) == "in [1, 256]"
