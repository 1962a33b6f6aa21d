"""Every ``biofed …`` command the documentation site shows exists, with those flags.

The tutorial and the how-to guides are read by people who paste their commands; a renamed
flag or command must fail here, not in a reader's terminal. Each command line in a fenced
``bash`` block, and each inline ``biofed …`` code span, is walked down the real CLI's
command tree (no command runs): the subcommands must exist and every ``--flag`` must be one
of the final command's options.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: The pages that teach commands (the generated references name commands in prose only).
PAGES = sorted([DOCS / "index.md", *DOCS.glob("tutorial/*.md"), *DOCS.glob("how-to/*.md")])

_FENCE = re.compile(r"```bash\n(.*?)```", re.DOTALL)
_INLINE = re.compile(r"`(biofed [^`]+)`")
_COMMAND = re.compile(r"\bbiofed\s+([^|;&)>\n#]*)")


def _cli() -> Any:
    """The CLI's command tree (Typer's own click: groups have ``commands``)."""
    from biofed.cli import app

    return typer.main.get_command(app)


def _commands(text: str) -> list[str]:
    """The ``biofed`` command lines of one page (continuation lines joined)."""
    found: list[str] = []
    for block in _FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        found += [m.group(1) for m in _COMMAND.finditer(joined)]
    found += [m.group(1)[len("biofed ") :] for m in _INLINE.finditer(text)]
    return found


def _problems(line: str, cli: Any) -> list[str]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an inline span cut mid-quote: check what splits cleanly
        words = line.split()
    command = cli
    path = ["biofed"]
    rest = list(words)
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        word = rest[0]
        sub = command.commands.get(word)
        if sub is None:
            if word.isupper() or "…" in word:  # a placeholder (biofed COMMAND --help)
                return []
            return [f"`{' '.join(path)} {word}`: no such command"]
        command, path, rest = sub, [*path, word], rest[1:]
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [
        f"`{' '.join(path)}` has no option {flag}"
        for word in rest
        if word.startswith("--") and (flag := word.split("=", 1)[0]) not in options
    ]


def test_the_pages_show_commands() -> None:
    assert len(PAGES) >= 8
    assert sum(len(_commands(p.read_text(encoding="utf-8"))) for p in PAGES) > 50


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_command_on_the_page_exists_with_its_flags(page: Path) -> None:
    cli = _cli()
    problems = [
        problem
        for line in _commands(page.read_text(encoding="utf-8"))
        for problem in _problems(line, cli)
    ]
    assert problems == []


def test_a_renamed_flag_or_command_is_caught() -> None:
    cli = _cli()
    assert _problems("run submit job.toml --kit k --follow", cli) == []
    assert _problems("run submit job.toml --folow", cli) == [
        "`biofed run submit` has no option --folow"
    ]
    assert _problems("run sumbit job.toml", cli) == ["`biofed run sumbit`: no such command"]


def _command_lines(markdown: str) -> list[str]:
    """The non-comment lines of a text's ``bash`` blocks, continuations joined, spaces and
    trailing comments dropped."""
    lines: list[str] = []
    for block in _FENCE.findall(markdown):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(re.sub(r"\s+", " ", line))
    return lines


def test_the_one_machine_tutorial_runs_the_tested_walkthrough() -> None:
    """tests/e2e/test_walkthrough.py runs the README's "A federation, step by step"; the
    tutorial shows the same commands in the same order, so it runs as written too."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## A federation, step by step")
    section = readme[start : readme.find("\n## ", start + 1)]
    walkthrough = [line for line in _command_lines(section) if line != ". .venv/bin/activate"]
    tutorial = _command_lines((DOCS / "tutorial" / "one-machine.md").read_text(encoding="utf-8"))
    assert len(walkthrough) > 20
    missing = [line for line in walkthrough if line not in tutorial]
    assert missing == [], "the tutorial lost these walkthrough commands"
    positions = [tutorial.index(line) for line in walkthrough]
    assert positions == sorted(positions), "the tutorial runs the walkthrough out of order"
