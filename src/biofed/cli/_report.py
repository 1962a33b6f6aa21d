"""``biofed report heterogeneity``: how far each site's data is from the rest of the consortium.

Two sources, one report (:func:`biofed.data.heterogeneity_report`):

* **simulation** — ``--spec study.toml`` with ``--omop NAME=URL`` once per site, or with
  ``--data table.csv --site-column COL`` (a file study, one site per value of the column):
  every site compiles the spec against its own data and summarises its training rows, the
  coordinator's :class:`~biofed.data.PreprocessingFit` combines the summaries pass by pass, and
  the final pass's per-site summaries are compared;
* **networked** — ``RUN_ID --kit KIT``: the run's ``data_summaries`` event (the final
  preprocessing pass's summaries, as the coordinator received them) through the control API.

Output: a table (flagged comparisons first), ``--format json``, and ``--html report.html``, a
self-contained page with plots. Only disclosure-controlled numbers appear in any of them.

Exit codes: 0 the report was made (flags or not), 2 an option, file, spec or run that cannot
be used (one line saying what).
"""

import json
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import call, clean_errors, err
from biofed.cli._output import Format, FormatOption, emit, fit

if TYPE_CHECKING:
    from biofed.data import HeterogeneityFinding, HeterogeneityReport, SiteSummary, StudySpec

app = typer.Typer(
    name="report",
    help="Reports across the sites of a study (heterogeneity).",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()

_MEASURE_LABELS = {
    "records": "size",
    "outcome": "outcome",
    "smd": "SMD",
    "wasserstein": "W1/sd",
    "ks": "KS",
    "missing": "missing",
    "category": "share",
}
_PERCENT = ("records", "outcome", "missing", "category")


@app.command("heterogeneity")
def heterogeneity_command(
    run_id: Annotated[
        str | None,
        typer.Argument(help="A run (networked): compare the sites' summaries it received."),
    ] = None,
    kit: Annotated[
        Path | None, typer.Option("--kit", help="Your kit folder (or BIOFED_KIT), with RUN_ID.")
    ] = None,
    coordinator: Annotated[
        str | None,
        typer.Option("--coordinator", metavar="HOST:PORT", help="Another coordinator address."),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="The study spec (simulation): study.toml.")
    ] = None,
    omop: Annotated[
        list[str] | None,
        typer.Option("--omop", metavar="NAME=URL", help="A site's OMOP CDM; once per site."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="A file study's table (CSV or Parquet).")
    ] = None,
    site_column: Annotated[
        str | None, typer.Option("--site-column", help="The column naming each row's site.")
    ] = None,
    min_cell: Annotated[
        int,
        typer.Option("--min-cell", help="Disclosure threshold: no number rests on fewer records."),
    ] = 10,
    smd_threshold: Annotated[
        float, typer.Option("--smd-threshold", help="Flag |SMD| over this.")
    ] = 0.2,
    distance_threshold: Annotated[
        float,
        typer.Option("--distance-threshold", help="Flag a Wasserstein distance (sd) over this."),
    ] = 0.2,
    ks_threshold: Annotated[
        float, typer.Option("--ks-threshold", help="Flag a largest CDF difference over this.")
    ] = 0.1,
    missing_threshold: Annotated[
        float,
        typer.Option("--missing-threshold", help="Flag a missing share this far from the rest."),
    ] = 0.1,
    size_ratio: Annotated[
        float,
        typer.Option("--size-ratio", help="Flag records this many times above/below the median."),
    ] = 2.0,
    output: FormatOption = Format.table,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")
    ] = None,
) -> None:
    """Compare each site with the other sites: records, outcome, SMD, missingness,
    categories and distribution shift, flagged over thresholds; disclosure-controlled."""
    from biofed.core import ConfigurationError
    from biofed.data import heterogeneity_report

    with clean_errors():
        binary: list[str] = []
        if run_id is not None:
            if spec is not None or omop or data is not None:
                raise ConfigurationError(
                    "give RUN_ID (a networked run) or --spec (a simulation), not both"
                )
            summaries = _run_summaries(run_id, kit, coordinator)
        elif spec is not None:
            study, summaries = _simulated_summaries(spec, omop or [], data, site_column, min_cell)
            binary = [n for n, kind in study.covariate_kinds.items() if kind == "binary"]
        else:
            raise ConfigurationError(
                "give RUN_ID --kit KIT (a networked run), or --spec study.toml with --omop "
                "NAME=URL per site or --data TABLE --site-column COL (a simulation)"
            )
        report = heterogeneity_report(
            summaries,
            min_cell=min_cell,
            smd_threshold=smd_threshold,
            distance_threshold=distance_threshold,
            ks_threshold=ks_threshold,
            missing_threshold=missing_threshold,
            size_ratio=size_ratio,
            binary=binary,
        )
        if html is not None:
            from biofed.cli._report_html import render_html

            title = f"run {run_id}" if run_id else (spec.name if spec else "")
            text = render_html(report, title=title)
            html.write_text(text, encoding="utf-8")
    emit(output, report.to_json(), *report_view(report))
    if html is not None:
        Console(stderr=True).print(f"wrote {escape(str(html))}", highlight=False)


# -- sources ---------------------------------------------------------------------------------


def _simulated_summaries(
    spec_path: Path,
    omop: list[str],
    data: Path | None,
    site_column: str | None,
    min_cell: int,
) -> "tuple[StudySpec, dict[str, SiteSummary]]":
    """Each site's summaries of its own extracted table, pass by pass, as the preprocessing
    phase asks for them; the final pass's (with histograms on common edges)."""
    from biofed.core import ConfigurationError, DataError
    from biofed.data import PreprocessingFit, extract, load_study_spec, summarise

    study = load_study_spec(spec_path)
    with tempfile.TemporaryDirectory(prefix="biofed-report-") as folder:
        if study.source == "omop":
            if data is not None or site_column is not None or not omop:
                raise ConfigurationError(
                    f"study {study.name!r} reads OMOP CDMs: give --omop NAME=URL once per site"
                )
            sources: dict[str, str | Path] = dict(_named_urls(omop))
        else:
            if omop or data is None or site_column is None:
                raise ConfigurationError(
                    f"study {study.name!r} reads a file: give --data TABLE --site-column COL"
                )
            sources = dict(_split_by_site(data, site_column, Path(folder)))
        tables = {site: extract(study, source, name=site) for site, source in sources.items()}
    fit = PreprocessingFit.start(study)
    while not fit.done:
        request = fit.request()
        answers = {}
        for site, table in list(tables.items()):
            try:
                answers[site] = summarise(table, request, min_cell=min_cell)
            except DataError as exc:
                if request.pass_no > 1:
                    raise
                # as the preprocessing phase does: a site that does not answer is left out
                err.print(f"[yellow]{escape(site)} left out:[/] {escape(str(exc))}")
                del tables[site]
        if not answers:
            raise DataError("no site answered the summary request")
        fit = fit.add(answers)
    return study, dict(fit.last_summaries)


def _named_urls(values: list[str]) -> list[tuple[str, str]]:
    from biofed.core import ConfigurationError, check_id

    named: list[tuple[str, str]] = []
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not url:
            raise ConfigurationError(f"--omop must look like NAME=URL, got {value!r}")
        named.append((check_id(name.strip(), what="--omop site name"), url.strip()))
    if len({n for n, _ in named}) != len(named):
        raise ConfigurationError("--omop names a site twice")
    return named


def _split_by_site(path: Path, column: str, folder: Path) -> list[tuple[str, Path]]:
    """One Parquet file per site of a pooled table (the rows of each value of ``column``)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from biofed.core import ConfigurationError, DataError, check_id

    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    if column not in table.column_names:
        raise ConfigurationError(f"--site-column {column!r} is not a column of {path.name}")
    sites = table.column(column)
    if sites.null_count:
        raise DataError(f"{path.name}: column {column!r} has rows with no site")
    rest = table.drop_columns([column])
    files = []
    for value in sorted({str(v) for v in sites.to_pylist()}):
        site = check_id(value, what=f"site name in column {column!r}")
        rows = rest.filter(pc.equal(pc.cast(sites, pa.string()), value))
        file = folder / f"{site}.parquet"
        pq.write_table(rows, file)
        files.append((site, file))
    return files


def _run_summaries(run_id: str, kit: Path | None, coordinator: str | None) -> "dict[str, Any]":
    """The per-site summaries of the run's ``data_summaries`` event, parsed as hostile input."""
    from biofed.cli._run import control_client
    from biofed.core import DataError

    with control_client(kit, coordinator) as client:
        events = call(lambda: list(client.watch_run(run_id)))
    messages = [e.message for e in events if e.kind == "data_summaries"]
    if not messages:
        raise DataError(
            f"run {run_id!r} has no data summaries (it has no [study] spec, or its "
            "preprocessing phase has not finished)"
        )
    return summaries_from_json(messages[-1])


def summaries_from_json(text: str) -> "dict[str, SiteSummary]":
    """``{site: {array name: value}}`` (the ``data_summaries`` event) → site summaries.

    Each array's type follows from its name (counts int64, moments and edges float64), and
    :meth:`SiteSummary.from_arrays` then refuses anything that is not a summary.
    """
    import numpy as np

    from biofed.core import DataError, check_id
    from biofed.data import SiteSummary

    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise DataError("the run's data summaries are not JSON") from None
    if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
        raise DataError("the run's data summaries must map each site to its arrays")
    summaries = {}
    for site, arrays in body.items():
        check_id(site, what="site name")
        typed: dict[str, Any] = {}
        for name, value in arrays.items():
            integer = (
                name == "records"
                or (name.startswith("numeric/") and name.endswith(("/n", "/missing", "/counts")))
                or name.startswith(("categorical/", "suppressed/"))
            )
            if not _plain_numbers(value, integer=integer):  # no "100", true or 100.7 as a count
                raise DataError(f"site {site!r}: array {name[:80]!r} is not numeric")
            try:
                typed[name] = np.asarray(
                    math.nan if value is None else value,
                    dtype=np.int64 if integer else np.float64,
                )
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"site {site!r}: array {name[:80]!r} is not numeric") from None
        try:
            summaries[site] = SiteSummary.from_arrays(typed)
        except DataError as exc:
            raise DataError(f"site {site!r}: {exc}") from None
    return summaries


def _plain_numbers(value: object, *, integer: bool) -> bool:
    """A JSON number (an int for counts; null for NaN otherwise) or a flat list of them."""

    def one(v: object) -> bool:
        if isinstance(v, bool):
            return False
        return isinstance(v, int) if integer else v is None or isinstance(v, (int, float))

    return all(one(v) for v in value) if isinstance(value, list) else one(value)


# -- rendering -------------------------------------------------------------------------------


def cells(finding: "HeterogeneityFinding", min_cell: int) -> tuple[str, str, str]:
    """The value, reference and score of a finding as a table shows them."""

    def number(value: float | None) -> str:
        if value is None:
            return "—"
        if finding.measure in _PERCENT:
            return f"{100 * value:.1f}%"
        return f"{value:.3g}"

    if "withheld" in finding.note:
        return f"<{min_cell}", "", ""
    score = finding.score
    if score is None:
        shown = ""
    elif math.isinf(score):
        shown = "∞"
    elif finding.measure == "records":
        shown = f"×{score:.2f}"
    elif finding.measure == "missing":
        shown = f"{100 * score:+.1f}pt"
    else:
        shown = (
            f"{score:+.2f}" if finding.measure in ("smd", "outcome", "category") else f"{score:.2f}"
        )
    return number(finding.value), number(finding.reference), shown


def feature_label(finding: "HeterogeneityFinding") -> str:
    """``feature`` or ``feature=category`` (``—`` for site-level measures)."""
    if finding.category:
        return f"{finding.feature}={finding.category}"
    return finding.feature or "—"


def report_view(report: "HeterogeneityReport") -> list[RenderableType]:
    """What ``report heterogeneity`` prints: the sites, then each flagged comparison first."""
    k = report.min_cell
    sites = Table(title="sites", box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for name, justify in (
        ("site", "left"),
        ("records", "right"),
        ("share", "right"),
        ("outcome", "right"),
        ("note", "left"),
    ):
        sites.add_column(name, justify=justify, overflow="fold" if name == "note" else "ellipsis")  # type: ignore[arg-type]
    for s in report.sites:
        sites.add_row(
            escape(s.site),
            f"<{k}" if s.records is None else str(s.records),
            "" if s.share is None else f"{100 * s.share:.1f}%",
            "" if s.outcome is None else f"{100 * s.outcome:.1f}%",
            escape(s.note),
        )
    table = Table(
        title=f"each site against the others ({len(report.flags)} flagged)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
        caption=f"⚑ over threshold · <{k}: withheld (disclosure threshold {k})",
    )
    table.add_column("", width=1, no_wrap=True)
    table.add_column("site")
    table.add_column("feature", max_width=20, overflow="fold")
    table.add_column("measure", no_wrap=True)
    table.add_column("site", justify="right", no_wrap=True)
    table.add_column("others", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    for finding in report.ranked():
        value, reference, score = cells(finding, k)
        table.add_row(
            "[bold red]⚑[/]" if finding.flagged else "",
            escape(finding.site),
            escape(feature_label(finding)),
            _MEASURE_LABELS[finding.measure],
            value,
            reference,
            f"[bold red]{score}[/]" if finding.flagged else score,
        )
    return [fit(sites), fit(table)]
