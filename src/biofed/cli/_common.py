"""Helpers shared by the command modules: error rendering, kits, signals."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from biofed.core import BiofedError

err = Console(stderr=True)
T = TypeVar("T")


def fail(exc: BaseException, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=code)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn biofed and file-system errors into a red line and exit code 2 (no traceback)."""
    try:
        yield
    except (BiofedError, OSError) as exc:
        raise fail(exc) from exc


def kit_option(value: Path | None) -> Path:
    """The kit folder from ``--kit`` or ``BIOFED_KIT``."""
    if value is not None:
        return value
    env = os.environ.get("BIOFED_KIT")
    if env:
        return Path(env)
    raise typer.BadParameter("pass --kit DIR (or set BIOFED_KIT) with your participant kit")


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM (for long-running servers)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def call(fn: Callable[[], T]) -> T:
    """Run ``fn`` with clean error rendering."""
    with clean_errors():
        return fn()
