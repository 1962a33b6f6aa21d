"""Every ``--help`` fits 80 columns, names every flag whole, and loses no bracketed word.

Rich's help panels cut long flags at 80 columns (``--per-site-metri…``) and read help texts'
``[run]`` as markup (``( bundle)``); the app prints click's plain help instead. The help is
rendered as ``biofed … --help`` renders it, at 80 columns, for every command and group.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
import typer

from biofed.cli import app

WIDTH = 80


@functools.cache
def root() -> Any:
    return typer.main.get_command(app)


def paths() -> list[str]:
    def walk(command: Any, path: list[str]) -> list[str]:
        found = [" ".join(path)]
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            found += walk(sub, [*path, name])
        return found

    return walk(root(), [])


def command_and_help(path: str) -> tuple[Any, str]:
    command = root()
    ctx = command.context_class(command, info_name="biofed", terminal_width=WIDTH)
    for part in path.split():
        command = command.commands[part]
        ctx = command.context_class(command, info_name=part, parent=ctx, terminal_width=WIDTH)
    return command, command.get_help(ctx)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_help_fits_names_every_flag_and_keeps_brackets() -> None:
    for path in paths():
        command, text = command_and_help(path)
        long = [line for line in text.splitlines() if len(line) > WIDTH]
        assert not long, (path, long)
        words = set(re.findall(r"[^\s,]+", text))
        for param in command.params:
            for flag in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if flag.startswith("-"):
                    assert flag in words or f"{flag}," in text, (path, flag, text)
        flat = _flat(text)
        sources = [command.help or ""]
        sources += [getattr(p, "help", None) or "" for p in command.params]
        for source in sources:
            for bracketed in re.findall(r"\[[^\[\]]+\]", source):
                assert _flat(bracketed) in flat, (path, bracketed)


def test_version_is_in_the_root_help() -> None:
    _, text = command_and_help("")
    assert "-V, --version" in text


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("run submit", "The task bundle the job names ([run] bundle)."),
        ("agreement draft", "--per-site-metrics / --no-per-site-metrics"),
        ("agreement draft", "--secure-aggregation / --no-secure-aggregation"),
        ("node dataset add", "--file-format"),
    ],
)
def test_the_cases_the_issue_names(path: str, shown: str) -> None:
    _, text = command_and_help(path)
    assert shown in _flat(text)
