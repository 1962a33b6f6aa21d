"""HOST[:PORT] parsing for coordinator and listen addresses."""

from __future__ import annotations

import pytest

from biofed.core import ConfigurationError
from biofed.identity._address import format_address, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fl.example.org", ("fl.example.org", 7443)),
        ("FL.Example.org:9000", ("fl.example.org", 9000)),
        ("10.0.0.1:1", ("10.0.0.1", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("[::1]", ("::1", 7443)),
        ("::1", ("::1", 7443)),
        ("localhost", ("localhost", 7443)),
    ],
)
def test_parse(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "host:", "host:0", "host:65536", "host:x", "[::1", "[nothost]:1", "a b", "a:b:c", "-x"],
)
def test_reject(text: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_address(text)
