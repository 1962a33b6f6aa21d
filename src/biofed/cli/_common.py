"""Helpers shared by the command modules: error rendering, kits, signals."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)
T = TypeVar("T")


def fail(exc: BaseException, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    return typer.Exit(code=code)


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn biofed and file-system errors into a red line and exit code 2 (no traceback)."""
    from biofed.core import BiofedError

    try:
        yield
    except (BiofedError, OSError) as exc:
        raise fail(exc) from exc


def kit_audit(folder: Path) -> Callable[[str, Mapping[str, Any]], None]:
    """An audit hook writing to the kit folder's ``audit.jsonl``, signed with its key; a
    no-op when ``folder`` is not a participant kit (a plain folder in development)."""
    if not ((folder / "kit.toml").is_file() and (folder / "key.pem").is_file()):
        return lambda event, data: None
    from biofed.governance import LOG_FILE, AuditLog, AuditSigner
    from biofed.identity import load_kit

    log = AuditLog(folder / LOG_FILE, AuditSigner.from_kit(load_kit(folder)))

    def record(event: str, data: Mapping[str, Any]) -> None:
        log.append(event, dict(data))

    return record


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
