"""``biofed node dataset …``: the site operator's dataset registry."""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from biofed.cli._common import clean_errors, fail, kit_audit

if TYPE_CHECKING:
    from biofed.governance import DatasetRegistry, RegisteredDataset

app = typer.Typer(help="Register the datasets this site offers.", no_args_is_help=True)
out = Console()

NodeDir = Annotated[Path, typer.Option("--node-dir", help="The node's folder (its kit).")]


def _registry(node_dir: Path) -> "DatasetRegistry":
    from biofed.governance import DatasetRegistry

    with clean_errors():
        audit = kit_audit(node_dir)  # the node's own signed log, when node_dir is its kit
    return DatasetRegistry(node_dir / "datasets.json", audit=audit)


def _targets(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep or not key or not column:
            raise typer.BadParameter(f"--target must be KEY=COLUMN, got {item!r}")
        pairs[key] = column
    return pairs


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Dataset name studies will use.")],
    path: Annotated[Path, typer.Option("--path", help="CSV or Parquet file.")],
    node_dir: NodeDir,
    format: Annotated[str | None, typer.Option("--format", help="csv or parquet.")] = None,
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    tags: Annotated[str, typer.Option(help="Comma-separated tags.")] = "",
    min_cohort: Annotated[int, typer.Option(help="Smallest cohort any output may describe.")] = 10,
    target: Annotated[list[str] | None, typer.Option(help="KEY=COLUMN, repeatable.")] = None,
    split_column: Annotated[str | None, typer.Option(help="Column marking train/test.")] = None,
    replace: Annotated[bool, typer.Option(help="Re-register a changed file.")] = False,
) -> None:
    """Register a file: its schema, row count and SHA-256 are recorded."""
    with clean_errors():
        entry = _registry(node_dir).add(
            name,
            path,
            format=format,
            description=description,
            tags=tuple(t for t in tags.split(",") if t),
            min_cohort=min_cohort,
            targets=_targets(target or []),
            split_column=split_column,
            replace_existing=replace,
        )
    out.print(
        f"registered [bold]{entry.name}[/]: {entry.num_rows} rows, "
        f"{len(entry.columns)} columns, sha256 {entry.sha256[:16]}…"
    )


@app.command("list")
def list_(node_dir: NodeDir, format: Annotated[str, typer.Option("--format")] = "table") -> None:
    """Registered datasets and whether their files are unchanged."""
    registry = _registry(node_dir)
    with clean_errors():
        entries = registry.list()
        checks = {e.name: registry.check(e.name) for e in entries}
    if format == "json":
        print(json.dumps([{**e.to_json(), "state": checks[e.name].state} for e in entries]))
        return
    table = Table(title="datasets")
    for col in ("name", "rows", "columns", "min cohort", "state", "sha256", "path"):
        table.add_column(col)
    for e in entries:
        state = checks[e.name].state
        style = "green" if state == "ok" else "bold red"
        table.add_row(
            e.name,
            str(e.num_rows),
            str(len(e.columns)),
            str(e.min_cohort),
            f"[{style}]{state}[/]",
            e.sha256[:16] + "…",
            e.path,
        )
    out.print(table)


def _show(entry: "RegisteredDataset") -> None:
    out.print(f"[bold]{entry.name}[/] — {entry.description or 'no description'}")
    out.print(f"path: {entry.path} ({entry.format}, {entry.size} bytes)")
    out.print(
        f"rows: {entry.num_rows} · min cohort: {entry.min_cohort} · "
        f"tags: {', '.join(entry.tags) or '—'}"
    )
    out.print(f"sha256: {entry.sha256}")
    table = Table(title="schema")
    table.add_column("column")
    table.add_column("type")
    for column, kind in entry.columns:
        table.add_row(column, kind)
    out.print(table)


@app.command("show")
def show(name: Annotated[str, typer.Argument()], node_dir: NodeDir) -> None:
    """One dataset's registration and schema."""
    try:
        entry = _registry(node_dir).get(name)
    except LookupError as exc:
        raise fail(exc) from exc
    _show(entry)


@app.command("remove")
def remove(name: Annotated[str, typer.Argument()], node_dir: NodeDir) -> None:
    """Unregister a dataset (the file stays)."""
    try:
        _registry(node_dir).remove(name)
    except LookupError as exc:
        raise fail(exc) from exc
    out.print(f"removed {name}")


@app.command("check")
def check(name: Annotated[str, typer.Argument()], node_dir: NodeDir) -> None:
    """Re-read the file; exit 1 if it changed since registration."""
    try:
        result = _registry(node_dir).check(name)
    except LookupError as exc:
        raise fail(exc) from exc
    if result.ok:
        out.print(f"{name}: unchanged since registration")
        return
    out.print(f"[bold red]{name}: {result.state}[/] — {result.reason}")
    raise typer.Exit(code=1)
