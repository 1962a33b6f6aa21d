"""What every command prints: ``--format table|json``, one JSON document, tables that fit.

One meaning of ``--format`` everywhere: ``table`` (the default, for a person) or ``json``
(for a program: one JSON document on stdout and nothing else there; keys sorted, so a
script's diff of two outputs shows what changed). ``FormatOption`` is the one option
declaration and ``emit`` / ``print_json`` the one way out.

Tables keep every value whole. Rich shrinks a table that is wider than the terminal and cuts
cells with ``…``, which makes a run id or a digest impossible to copy. ``fit(table)`` renders
the table as it is when every cell fits on one line at the console's width (a prose column,
marked ``overflow="fold"``, may wrap between words: a note, a reason); otherwise each
row becomes a block of ``column  value`` lines (as ``psql``'s expanded display does), and a
value wider than its line folds onto the next lines, never cut. Rich has no such layout of
its own (its ``overflow="fold"`` folds a long id across lines *inside* a narrow column, where
the neighbouring columns' text interleaves with it), hence this small renderable.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from typing import Annotated, Any

import typer
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text


class Format(str, enum.Enum):
    """The value of ``--format``: a table for a person or one JSON document."""

    table = "table"
    json = "json"


def parse_format(value: str | Format) -> Format:
    """``--format``'s value; anything else is one red line on stderr and exit code 2 (as every
    other bad option value), not click's usage block."""
    if isinstance(value, Format):
        return value
    try:
        return Format(value.strip().lower())
    except ValueError:
        from biofed.cli._common import fail

        hint = "; see --file-format" if value in ("csv", "parquet") else ""
        message = f"--format must be table or json, got {value!r}{hint}"
        raise fail(ValueError(message)) from None


FormatOption = Annotated[
    Format,
    typer.Option(
        "--format",
        metavar="table|json",
        parser=parse_format,
        help="table (for a person) or json (one JSON document on stdout).",
    ),
]

#: Wide enough that measuring a table against it never makes Rich shrink a column.
_UNBOUNDED = 1_000_000


def console() -> Console:
    """The stdout console, created per call so that it reads ``COLUMNS`` when it prints."""
    return Console(highlight=False)


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as ``None`` (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def print_json(data: Any) -> None:
    """Write ``data`` as one JSON document (sorted keys, NaN as null) and a newline to stdout."""
    text = json.dumps(_finite(data), sort_keys=True, ensure_ascii=False, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def emit(fmt: Format | str, data: Any, *renderables: RenderableType) -> None:
    """Print ``data`` as JSON when ``fmt`` is json, else the renderables (tables fitted)."""
    if Format(fmt) is Format.json:
        print_json(data)
        return
    out = console()
    for item in renderables:
        out.print(fit(item) if isinstance(item, Table) else item)


def fit(table: Table) -> RenderableType:
    """``table`` as a renderable that never cuts a cell: the table itself when it fits the
    width it is given, else one ``column  value`` block per row."""
    return _Fitted(table)


def _plain(cell: RenderableType) -> RenderableType:
    return Text.from_markup(cell) if isinstance(cell, str) else cell


def _header(column: Any) -> Text:
    header = column.header
    if isinstance(header, Text):
        return header.copy()
    return Text.from_markup(header) if isinstance(header, str) else Text(str(header))


def _field(
    console: Console, header: Text, width: int, value: RenderableType, room: int
) -> list[RenderableType]:
    """``header  value`` lines: a text value folds onto indented lines (no padding after
    it, so a copied id has no trailing blanks); any other renderable goes in a grid."""
    key = header.copy()
    key.stylize("bold")
    key.pad_right(width - key.cell_len)
    if not isinstance(value, Text):
        block = Table.grid(padding=(0, 2))
        block.add_column(no_wrap=True)
        block.add_column(overflow="fold")
        block.add_row(key, value)
        return [block]
    lines = value.wrap(console, max(room, 1), overflow="fold") if value.plain else [Text("")]
    shown: list[RenderableType] = []
    for number, line in enumerate(lines):
        lead = key if number == 0 else Text(" " * width)
        field = Text.assemble(lead, "  ", line)
        field.rstrip()
        shown.append(field)
    return shown


def _stacked(table: Table, console: Console, max_width: int) -> RenderableType:
    columns = list(table.columns)
    headers = [_header(column) for column in columns]
    width = max((h.cell_len for h in headers), default=0)
    cells = [list(column.cells) for column in columns]
    rows: list[RenderableType] = []
    if table.title is not None:
        title = table.title
        rows.append(Text.from_markup(title, style="italic") if isinstance(title, str) else title)
    for index in range(table.row_count):
        if index or table.title is not None:
            rows.append(Text(""))
        for header, values in zip(headers, cells, strict=True):
            value = _plain(values[index] if index < len(values) else "")
            rows.extend(_field(console, header, width, value, max_width - width - 2))
    if table.caption is not None:
        caption = table.caption
        rows.append(Text.from_markup(caption) if isinstance(caption, str) else caption)
    return Group(*rows)


class _Fitted:
    """The renderable behind ``fit`` (decides per rendering, at the width it gets)."""

    def __init__(self, table: Table) -> None:
        self.table = table

    def _needed(self, console: Console, options: ConsoleOptions) -> int:
        """The width at which no cell is cut: every value on one line, except in prose
        columns (``overflow="fold"``), which may wrap down to their longest word."""
        wide = options.update_width(_UNBOUNDED)
        needed = Measurement.get(console, wide, self.table).maximum
        for column in self.table.columns:
            if column.overflow != "fold":
                continue
            cells = [cell for cell in (column.header, *column.cells) if cell != ""]
            sizes = [Measurement.get(console, wide, cell) for cell in cells]
            if sizes:
                cap = column.max_width or _UNBOUNDED
                top = min(max(m.maximum for m in sizes), cap)
                needed -= max(0, top - min(max(m.minimum for m in sizes), cap))
        return needed

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self._needed(console, options) <= options.max_width:
            for column in self.table.columns:  # only prose may wrap when Rich fits the table
                column.no_wrap = column.no_wrap or column.overflow != "fold"
            yield self.table
        else:
            yield _stacked(self.table, console, options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(1, min(self._needed(console, options), options.max_width))


__all__ = [
    "Format",
    "FormatOption",
    "console",
    "emit",
    "fit",
    "parse_format",
    "print_json",
]
