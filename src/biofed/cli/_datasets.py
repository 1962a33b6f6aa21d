"""``biofed node dataset …``: the site operator's dataset registry (files and OMOP CDMs)
and its data-quality checks."""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import clean_errors, fail, kit_audit
from biofed.cli._output import Format, FormatOption, emit, fit, print_json

if TYPE_CHECKING:
    from biofed.data import QualityReport
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
    node_dir: NodeDir,
    path: Annotated[Path | None, typer.Option("--path", help="CSV or Parquet file.")] = None,
    omop: Annotated[
        str | None,
        typer.Option(
            "--omop",
            help="OMOP CDM: a DuckDB file or a database URL without a password "
            "(postgresql://user@host/db).",
        ),
    ] = None,
    password_env: Annotated[
        str | None,
        typer.Option(help="OMOP: environment variable holding the database password."),
    ] = None,
    schema: Annotated[str | None, typer.Option(help="OMOP: schema of the CDM tables.")] = None,
    file_format: Annotated[
        str | None,
        typer.Option("--file-format", help="csv or parquet (default: from the file's suffix)."),
    ] = None,
    description: Annotated[str, typer.Option(help="What the data is.")] = "",
    tags: Annotated[str, typer.Option(help="Comma-separated tags.")] = "",
    min_cohort: Annotated[int, typer.Option(help="Smallest cohort any output may describe.")] = 10,
    target: Annotated[list[str] | None, typer.Option(help="KEY=COLUMN, repeatable.")] = None,
    split_column: Annotated[str | None, typer.Option(help="Column marking train/test.")] = None,
    replace: Annotated[bool, typer.Option(help="Re-register a changed file.")] = False,
    format: FormatOption = Format.table,
) -> None:
    """Register a file (schema, row count, SHA-256) or an OMOP CDM (CDM version,
    cdm_source, row counts, fingerprint)."""
    if (path is None) == (omop is None):
        raise typer.BadParameter("give exactly one of --path FILE or --omop URL")
    if omop is not None:
        if target or split_column or file_format:
            raise typer.BadParameter("--target, --split-column and --file-format are for files")
        with clean_errors():
            cdm = _registry(node_dir).add_omop(
                name,
                omop,
                password_env=password_env,
                schema=schema,
                description=description,
                tags=tuple(t for t in tags.split(",") if t),
                min_cohort=min_cohort,
                replace_existing=replace,
            )
        emit(
            format,
            cdm.to_json(),
            f"registered [bold]{escape(cdm.name)}[/]: OMOP CDM {escape(cdm.cdm_version)}, "
            f"{cdm.num_rows} persons, fingerprint {cdm.sha256}\n"
            f"check its data quality: biofed node dataset check {escape(cdm.name)}",
        )
        return
    if password_env or schema:
        raise typer.BadParameter("--password-env and --schema are for OMOP CDMs")
    assert path is not None
    with clean_errors():
        entry = _registry(node_dir).add(
            name,
            path,
            format=file_format,
            description=description,
            tags=tuple(t for t in tags.split(",") if t),
            min_cohort=min_cohort,
            targets=_targets(target or []),
            split_column=split_column,
            replace_existing=replace,
        )
    emit(
        format,
        entry.to_json(),
        f"registered [bold]{escape(entry.name)}[/]: {entry.num_rows} rows, "
        f"{len(entry.columns)} columns, sha256 {entry.sha256}",
    )


@app.command("list")
def list_(node_dir: NodeDir, format: FormatOption = Format.table) -> None:
    """Registered datasets and whether their files are unchanged."""
    registry = _registry(node_dir)
    with clean_errors():
        entries = registry.list()
        states = {e.name: registry.check(e.name).state for e in entries}
    data = [{**e.to_json(), "state": states[e.name]} for e in entries]
    emit(format, data, datasets_table(entries, states))


def datasets_table(entries: "Sequence[RegisteredDataset]", states: Mapping[str, str]) -> Table:
    """The registered datasets: kind, size, state, quality, SHA-256 (whole) and location."""
    table = Table(title="datasets")
    for col in ("name", "kind", "rows", "min cohort", "state", "quality", "sha256", "location"):
        table.add_column(col)
    for e in entries:
        state = states[e.name]
        style = "green" if state == "ok" else "bold red"
        table.add_row(
            escape(e.name),
            "omop " + e.cdm_version if e.kind == "omop" else e.format,
            str(e.num_rows),
            str(e.min_cohort),
            f"[{style}]{state}[/]",
            _quality_state(e),
            e.sha256,
            escape(e.path),
        )
    return table


def _quality_state(entry: "RegisteredDataset") -> str:
    if entry.quality is None:
        return "[dim]not checked[/]"
    report = entry.quality.report
    if report.fatal_failures:
        return f"[bold red]fatal ({len(report.fatal_failures)})[/]"
    if report.failures:
        return f"[yellow]warnings ({len(report.failures)})[/]"
    return "[green]passed[/]"


def show_view(entry: "RegisteredDataset") -> list[RenderableType]:
    """What ``node dataset show`` prints: the registration, then the schema (or the CDM's
    tables)."""
    head = f"[bold]{escape(entry.name)}[/] — {escape(entry.description or 'no description')}"
    if entry.kind == "omop":
        return [head, *_show_omop(entry)]
    table = Table(title="schema")
    table.add_column("column")
    table.add_column("type")
    for column, kind in entry.columns:
        table.add_row(escape(column), escape(kind))
    return [
        head,
        f"path: {escape(entry.path)} ({entry.format}, {entry.size} bytes)",
        f"rows: {entry.num_rows} · min cohort: {entry.min_cohort} · "
        f"tags: {escape(', '.join(entry.tags) or '—')}",
        f"sha256: {entry.sha256}",
        table,
    ]


def _show_omop(entry: "RegisteredDataset") -> list[RenderableType]:
    secret = f" · password from ${entry.password_env}" if entry.password_env else ""
    shown: list[RenderableType] = [
        f"OMOP CDM {escape(entry.cdm_version)} at {escape(entry.path)}{escape(secret)}"
    ]
    source = entry.cdm_source
    if source:
        shown.append(
            f"source: {escape(source.get('cdm_source_name', '?'))} · vocabulary "
            f"{escape(source.get('vocabulary_version', '?'))} · released "
            f"{escape(source.get('cdm_release_date', '?'))}"
        )
    shown.append(f"persons: {entry.num_rows} · min cohort: {entry.min_cohort}")
    shown.append(f"fingerprint: {entry.sha256}")
    shown.append(f"quality: {_quality_state(entry)}")
    table = Table(title="tables")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, rows in sorted(entry.row_counts.items()):
        table.add_row(escape(name), str(rows))
    shown.append(table)
    return shown


@app.command("show")
def show(
    name: Annotated[str, typer.Argument()], node_dir: NodeDir, format: FormatOption = Format.table
) -> None:
    """One dataset's registration and schema."""
    try:
        entry = _registry(node_dir).get(name)
    except LookupError as exc:
        raise fail(exc) from exc
    emit(format, entry.to_json(), *show_view(entry))


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument()], node_dir: NodeDir, format: FormatOption = Format.table
) -> None:
    """Unregister a dataset (the file stays)."""
    try:
        _registry(node_dir).remove(name)
    except LookupError as exc:
        raise fail(exc) from exc
    emit(format, {"name": name, "removed": True}, f"removed {escape(name)}")


def quality_table(report: "QualityReport") -> Table:
    """Each check with pass/fail and counts, grouped by table (fits 80 columns)."""
    from rich import box

    table = Table(title="data quality", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("field", overflow="fold")
    table.add_column("violated", justify="right", no_wrap=True)
    table.add_column("of", justify="right", no_wrap=True)
    current = None
    order = {t: i for i, t in enumerate(dict.fromkeys(c.table for c in report.checks))}
    for c in sorted(report.checks, key=lambda c: order[c.table]):
        if c.table != current:
            current = c.table
            table.add_row("", f"[bold]{escape(c.table)}[/]", "", "", "")
        failed = "[bold red]FAIL[/]" if c.fatal else "[yellow]warn[/]"
        mark = "[green]ok[/]" if c.passed else failed
        where = escape(c.field or "(table)")
        if c.concept_id is not None:
            where += f"\n@{c.concept_id}"
        name = f"{c.name}*" if c.fatal else c.name
        table.add_row(mark, name, where, str(c.violated), str(c.total))
    table.caption = "* fatal: a failure stops training on this dataset"
    return table


def _fatal_from_config(config: Path | None, name: str) -> tuple[str, ...]:
    if config is None:
        return ()
    from biofed.node import NodeConfig

    source = NodeConfig.from_toml(config).datasets.get(name)
    return () if source is None else source.fatal_checks


@app.command("check")
def check(
    name: Annotated[str, typer.Argument()],
    node_dir: NodeDir,
    format: FormatOption = Format.table,
    config: Annotated[
        Path | None,
        typer.Option(help="node.toml whose [datasets.NAME] fatal_checks apply."),
    ] = None,
    fatal: Annotated[
        list[str] | None, typer.Option("--fatal", help="Also treat this check as fatal.")
    ] = None,
    redacted: Annotated[
        bool,
        typer.Option(help="Show only what may leave the site (counts < min cohort hidden)."),
    ] = False,
) -> None:
    """Re-check the file or CDM against its registration, then run the data-quality checks
    and keep the report; exit 1 if it changed or a fatal check failed."""
    registry = _registry(node_dir)
    try:
        result = registry.check(name)
    except LookupError as exc:
        raise fail(exc) from exc
    if not result.ok:
        emit(
            format,
            {"name": name, "state": result.state, "reason": result.reason},
            f"[bold red]{escape(name)}: {result.state}[/] — {escape(result.reason)}",
        )
        raise typer.Exit(code=1)
    with clean_errors():
        selectors = (*_fatal_from_config(config, name), *(fatal or ()))
        report = registry.check_quality(name, fatal=selectors)
        entry = registry.get(name)
    if format is Format.json:
        body = report.redacted(entry.min_cohort) if redacted else report.to_json()
        print_json(
            {
                "name": name,
                "state": result.state,
                "passed": report.passed,
                "fatal_failed": [c.key for c in report.fatal_failures],
                "quality": body,
            }
        )
    elif redacted:
        out.print_json(json.dumps(report.redacted(entry.min_cohort)))
    else:
        out.print(f"{escape(name)}: unchanged since registration")
        out.print(fit(quality_table(report)))
        failed = report.fatal_failures
        summary = (
            f"[bold red]{len(failed)} fatal check(s) failed: training on {escape(name)} is "
            "refused until the data is fixed and checked again[/]"
            if failed
            else f"{len(report.checks) - len(report.failures)} of {len(report.checks)} checks "
            f"passed; no fatal failure"
        )
        out.print(summary)
    if report.fatal_failures:
        raise typer.Exit(code=1)
