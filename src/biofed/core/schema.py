"""Declared keys of the configuration files people write, and their reference pages.

A public module of :mod:`biofed.core` (import from ``biofed.core.schema``). A file's parser
refuses every key its :class:`ConfigTable` does not list, and the reference page in the
docs is rendered from the same tables (:func:`render_tables`), so the page cannot disagree
with the parser. ``node.toml``'s tables are ``biofed.node``'s, a study agreement's are
``biofed.governance``'s; job files have their own, richer schema in ``biofed.coordinator``
(it also checks ranges).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConfigKey", "ConfigTable", "render_tables"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigKey:
    """One key of a configuration table.

    Attributes
    ----------
    name:
        The key as written in the file.
    value:
        What it holds, in words (Markdown).
    doc:
        What it means (Markdown, one paragraph).
    default:
        The default as TOML text; None for a required key or one that is unset when left out.
    required:
        Whether the table must hold it.
    """

    name: str
    value: str
    doc: str
    default: str | None = None
    required: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigTable:
    """One table of a configuration file and the keys it may hold.

    Attributes
    ----------
    name:
        The table's header without brackets (``privacy.caps.DATASET``); ``""`` for the top
        level of the file.
    doc:
        What the table is for (Markdown).
    keys:
        The keys it may hold, in the order of the reference page.
    array:
        Whether it is an array of tables (``[[parties]]``).
    variant:
        Which form of the table this is, where one header has several (``"a file"``).
    """

    name: str
    doc: str
    keys: tuple[ConfigKey, ...]
    array: bool = False
    variant: str = ""

    @property
    def names(self) -> frozenset[str]:
        """The keys the table accepts."""
        return frozenset(k.name for k in self.keys)

    @property
    def ordered(self) -> tuple[str, ...]:
        """The keys the table accepts, in declared order."""
        return tuple(k.name for k in self.keys)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_tables(tables: tuple[ConfigTable, ...]) -> str:
    """The Markdown reference of ``tables``: a heading, the table's doc and one row per key."""
    lines: list[str] = []
    for t in tables:
        if not t.name:
            heading = "Top-level keys"
        elif t.array:
            heading = f"`[[{t.name}]]`"
        else:
            heading = f"`[{t.name}]`"
        if t.variant:
            heading += f" ({t.variant})"
        lines += [f"## {heading}", "", t.doc, ""]
        lines += ["| key | value | default | meaning |", "|---|---|---|---|"]
        for k in t.keys:
            if k.required:
                default = "**required**"
            elif k.default is None:
                default = "not set"
            else:
                default = f"`{k.default}`"
            lines.append(f"| `{k.name}` | {_cell(k.value)} | {_cell(default)} | {_cell(k.doc)} |")
        lines.append("")
    return "\n".join(lines)
