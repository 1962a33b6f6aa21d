"""``biofed analyze KIND``: one federated query, simulated or against a running federation.

Every subcommand builds one :class:`~biofed.analytics.Query` from its flags (the kind's
options, ``--where`` filters, ``--split``, ``--dp-*``) and the requested disclosure rules
(``--min-cell`` …), then runs it

* **in simulation** — ``--tcga`` (the bundled Fed-TCGA-BRCA, six sites), ``--data TABLE
  --site-column COL`` (one virtual site per value of the column; numeric columns only,
  unless ``--spec`` describes the table), or ``--spec study.toml --site NAME=SOURCE`` (OMOP
  CDMs or files compiled through a study spec): :func:`biofed.simulation.analyze`, real site
  nodes over the in-memory transport;
* **networked** — ``--kit KIT --dataset NAME``: an analysis job submitted through the
  coordinator's ControlService, followed pass by pass until the run ends.

Output: the result's table (Rich, fits 80 columns, numbers never cut), ``--format json``
(the result's ``to_dict``, nothing else on stdout), ``--plot`` (KM curves or a histogram,
.png/.svg) and ``--html`` (a self-contained page).

One generic path serves every kind: each subcommand states only its own flags and how they
map to the kind's options; :func:`_command` adds the common flags to its signature (Typer
reads ``__signature__``), so a new kind is one small function.

Exit codes: 0 a result, 1 a run that failed (the sites' reasons said), 2 a flag, file or
query that cannot be used (one line saying what).
"""

import functools
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from biofed.cli._analyze_net import RunFailed
from biofed.cli._common import err
from biofed.cli._output import Format, FormatOption, print_json

if TYPE_CHECKING:
    from biofed.analytics import DisclosureRules, Query, Result
    from biofed.data import FederatedDataset

app = typer.Typer(
    name="analyze",
    help="Federated statistics and exact regression: one query, simulated or on a federation.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()

Multi = list[str] | None

# -- the flags every subcommand takes ---------------------------------------------------------

_COMMON: list[tuple[str, Any, Any]] = [
    (
        "tcga",
        Annotated[
            bool, typer.Option("--tcga", help="Simulate on the bundled Fed-TCGA-BRCA (6 sites).")
        ],
        False,
    ),
    (
        "data",
        Annotated[
            Path | None,
            typer.Option("--data", help="Simulate on a CSV or Parquet table (with --site-column)."),
        ],
        None,
    ),
    (
        "site_column",
        Annotated[
            str | None,
            typer.Option("--site-column", help="With --data: the column naming each row's site."),
        ],
        None,
    ),
    (
        "site",
        Annotated[
            Multi,
            typer.Option(
                "--site",
                metavar="NAME=SOURCE",
                help="With --spec: a virtual site and its OMOP CDM or data file (repeatable).",
            ),
        ],
        None,
    ),
    (
        "spec",
        Annotated[
            Path | None,
            typer.Option("--spec", help="A study spec the sites compile (study.toml)."),
        ],
        None,
    ),
    (
        "kit",
        Annotated[
            Path | None,
            typer.Option("--kit", help="Networked: your kit folder (or BIOFED_KIT)."),
        ],
        None,
    ),
    (
        "coordinator",
        Annotated[
            str | None,
            typer.Option("--coordinator", metavar="HOST:PORT", help="Another coordinator address."),
        ],
        None,
    ),
    (
        "dataset",
        Annotated[
            str | None,
            typer.Option("--dataset", help="Networked: the dataset name the sites registered."),
        ],
        None,
    ),
    (
        "agreement",
        Annotated[
            str | None,
            typer.Option(
                "--agreement",
                help="The study agreement: its id, or its file (sent with the job). In a "
                "simulation, a file every virtual site enforces (its datasets: analysis).",
            ),
        ],
        None,
    ),
    (
        "min_nodes",
        Annotated[
            int | None,
            typer.Option("--min-nodes", min=1, help="Networked: sites connected before it starts."),
        ],
        None,
    ),
    (
        "min_replies",
        Annotated[
            int | None,
            typer.Option("--min-replies", min=1, help="Valid answers each pass needs."),
        ],
        None,
    ),
    (
        "round_timeout",
        Annotated[
            float,
            typer.Option("--round-timeout", help="Networked: seconds each pass waits."),
        ],
        120.0,
    ),
    (
        "where",
        Annotated[
            Multi,
            typer.Option(
                "--where",
                metavar="'COL OP VALUE'",
                help="A row filter, repeatable: age>60, sex == F, stage in I,II, bmi missing.",
            ),
        ],
        None,
    ),
    (
        "split",
        Annotated[str, typer.Option("--split", help="Rows: all, train or test.")],
        "all",
    ),
    (
        "secure",
        Annotated[
            bool,
            typer.Option("--secure", help="Sum the sites' answers under SecAgg+."),
        ],
        False,
    ),
    (
        "dp_epsilon",
        Annotated[
            float | None,
            typer.Option("--dp-epsilon", help="DP answers: ε per pass at every site."),
        ],
        None,
    ),
    (
        "dp_delta",
        Annotated[float, typer.Option("--dp-delta", help="DP answers: δ (Gaussian).")],
        0.0,
    ),
    (
        "dp_mechanism",
        Annotated[
            str | None,
            typer.Option(
                "--dp-mechanism", help="laplace (default; δ 0) or gaussian (needs --dp-delta)."
            ),
        ],
        None,
    ),
    (
        "min_cell",
        Annotated[
            int | None, typer.Option("--min-cell", help="Requested rule: smallest count shown.")
        ],
        None,
    ),
    (
        "dominance",
        Annotated[
            float | None,
            typer.Option("--dominance", help="Requested rule: largest share of one record."),
        ],
        None,
    ),
    (
        "min_at_risk",
        Annotated[
            int | None,
            typer.Option("--min-at-risk", help="Requested rule: fewest at risk at a shown step."),
        ],
        None,
    ),
    (
        "min_difference",
        Annotated[
            int | None,
            typer.Option(
                "--min-difference", help="Requested rule: least difference between cohorts."
            ),
        ],
        None,
    ),
    (
        "min_sites",
        Annotated[
            int | None,
            typer.Option("--min-sites", help="Requested rule: fewest sites in a regression."),
        ],
        None,
    ),
    (
        "records_per_parameter",
        Annotated[
            int | None,
            typer.Option(
                "--records-per-parameter", help="Requested rule: records per model parameter."
            ),
        ],
        None,
    ),
    (
        "seed",
        Annotated[int, typer.Option("--seed", help="Simulation: the instructions' seed.")],
        0,
    ),
    (
        "output",
        FormatOption,
        Format.table,
    ),
    (
        "plot",
        Annotated[
            Path | None,
            typer.Option("--plot", help="Write a plot (.png or .svg): KM curves, a histogram."),
        ],
        None,
    ),
    (
        "html",
        Annotated[
            Path | None,
            typer.Option("--html", help="Write a self-contained HTML page of the result."),
        ],
        None,
    ),
]
_COMMON_NAMES = tuple(name for name, _, _ in _COMMON)
_RULE_FLAGS = (
    "min_cell",
    "dominance",
    "min_at_risk",
    "min_difference",
    "min_sites",
    "records_per_parameter",
)


def _command(name: str, kind: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    """Register ``fn`` (kind flags → the kind's options) as ``biofed analyze NAME`` with the
    common flags appended to its signature."""

    def decorate(fn: Callable[..., dict[str, Any]]) -> Any:
        own = list(inspect.signature(fn).parameters.values())
        common = [
            inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
            for n, a, d in _COMMON
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            flags = {n: kwargs.pop(n) for n in _COMMON_NAMES}
            _execute(kind, lambda: fn(**kwargs), flags)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + common
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read __signature__, not the wrapped function
        app.command(name)(command)
        return fn

    return decorate


# -- flag parsing -----------------------------------------------------------------------------

_WHERE = re.compile(
    r"""^\s*(?P<col>"[^"]+"|'[^']+'|[^\s<>=!]+)\s*"""
    r"""(?P<op>==|!=|<=|>=|<|>|=|not_in\b|not\s+in\b|in\b|missing\b|present\b)"""
    r"""\s*(?P<val>.*?)\s*$""",
    re.S,
)


def value_of(text: str) -> str | int | float | bool:
    """A flag's value: a quoted string as is, true/false, an int, a float, else the text."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    return number if number == number and abs(number) != float("inf") else text


def split_items(text: str, flag: str) -> list[str]:
    """Comma-separated items; single or double quotes keep a comma inside one item (the
    quotes stay on the item)."""
    from biofed.core import ConfigurationError

    items: list[str] = []
    current, quote = "", ""
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "'\"":
            current += char
            quote = char
        elif char == ",":
            items.append(current)
            current = ""
        else:
            current += char
    if quote:
        raise ConfigurationError(f"{flag} {text[:60]!r}: a quote is not closed")
    items.append(current)
    return [i.strip() for i in items if i.strip()]


def values_of(text: str, flag: str) -> list[str | int | float | bool]:
    """Comma-separated values (quoted ones kept whole, as text)."""
    from biofed.core import ConfigurationError

    values = split_items(text, flag)
    if not values:
        raise ConfigurationError(f"{flag} needs comma-separated values, got {text!r}")
    return [value_of(v) for v in values]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_where(text: str) -> Any:
    """``"age>60"``, ``"sex == 'F'"``, ``"stage in I,II"``, ``"bmi missing"`` → a Filter."""
    from biofed.analytics import FILTER_OPS, Filter
    from biofed.core import ConfigurationError

    match = _WHERE.match(text)
    if match is None:
        raise ConfigurationError(
            f"--where {text[:60]!r} is not COLUMN OP VALUE (OP one of {', '.join(FILTER_OPS)})"
        )
    column = match["col"]
    if column[0] in "'\"":
        column = column[1:-1]
    op = re.sub(r"\s+", "_", match["op"])
    op = "==" if op == "=" else op
    raw = match["val"]
    if op in ("missing", "present"):
        if raw:
            raise ConfigurationError(f"--where {text[:60]!r}: {op} takes no value")
        return Filter(column=column, op=op)
    if not raw:
        raise ConfigurationError(f"--where {text[:60]!r}: {op} needs a value")
    if op in ("in", "not_in"):
        return Filter(column=column, op=op, value=tuple(values_of(raw, "--where")))
    value = value_of(raw)
    if op in ("<", "<=", ">", ">=") and (
        isinstance(value, bool) or not isinstance(value, int | float)
    ):
        raise ConfigurationError(f"--where {text[:60]!r}: {op} compares with a number")
    if isinstance(value, str) and raw[:1] in "<>=!" and raw[:1] not in "'\"":
        raise ConfigurationError(f"--where {text[:60]!r}: the value starts with an operator")
    return Filter(column=column, op=op, value=value)


def _names(values: Multi, flag: str) -> list[str]:
    """Column names from repeatable, comma-separable flags."""
    from biofed.core import ConfigurationError

    names = [_unquote(n) for v in values or () for n in split_items(v, flag)]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{flag} names a column twice")
    return names


def _numbers(text: str, flag: str) -> list[float]:
    from biofed.core import ConfigurationError

    out = []
    for item in text.split(","):
        try:
            out.append(float(item))
        except ValueError:
            raise ConfigurationError(
                f"{flag} takes numbers separated by commas, got {text!r}"
            ) from None
    return out


def _keyed(values: Multi, flag: str) -> dict[str, str]:
    """``KEY=VALUE`` flags as a mapping (each key once)."""
    from biofed.core import ConfigurationError

    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigurationError(f"{flag} must look like COL=VALUES, got {item!r}")
        if key.strip() in out:
            raise ConfigurationError(f"{flag} names {key.strip()!r} twice")
        out[key.strip()] = value.strip()
    return out


def _bounds(values: Multi) -> dict[str, list[float]]:
    from biofed.core import ConfigurationError

    out = {}
    for col, text in _keyed(values, "--bounds").items():
        pair = _numbers(text, "--bounds")
        if len(pair) != 2:
            raise ConfigurationError(f"--bounds must look like COL=LO,HI, got {col}={text}")
        out[col] = pair
    return out


def _levels(values: Multi) -> dict[str, list[str]]:
    return {
        col: [str(v) for v in values_of(text, "--level")]
        for col, text in _keyed(values, "--level").items()
    }


def _grid(step: float | None, stop: float | None, grid: str | None) -> Any:
    from biofed.core import ConfigurationError

    if grid is not None:
        if step is not None or stop is not None:
            raise ConfigurationError("give --grid or --grid-step/--grid-stop, not both")
        return _numbers(grid, "--grid")
    if step is None:
        if stop is not None:
            raise ConfigurationError("--grid-stop needs --grid-step")
        return None
    if stop is None:
        raise ConfigurationError("--grid-step needs --grid-stop (the last grid time)")
    return {"step": step, "stop": stop}


def _drop_none(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


# -- the generic path -------------------------------------------------------------------------


def _execute(kind: str, options_of: Callable[[], dict[str, Any]], flags: dict[str, Any]) -> None:
    from biofed.core import BiofedError

    try:
        query, rules = _query(kind, options_of, flags)
        _check_outputs(kind, flags)
        networked = flags["kit"] is not None or flags["dataset"] is not None
        if networked:
            from biofed.cli._analyze_net import run_networked

            result = run_networked(query, rules, flags)
        else:
            result = _simulate(query, rules, flags)
        _write_outputs(result, flags)
    except typer.Exit:
        raise
    except RunFailed as exc:
        err.print(f"[bold red]failed:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(code=1) from None
    except (BiofedError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"[bold red]error:[/] {escape(text)}", soft_wrap=True)
        raise typer.Exit(code=2) from None
    if flags["output"] == Format.json:
        print_json(result.to_dict())
    else:
        from biofed.cli._analyze_render import print_result

        print_result(out, result)
    for path in (flags["plot"], flags["html"]):
        if path is not None:
            err.print(f"wrote {escape(str(path))}", highlight=False)


def _query(
    kind: str, options_of: Callable[[], dict[str, Any]], flags: dict[str, Any]
) -> "tuple[Query, DisclosureRules | None]":
    from biofed.analytics import SPLITS, DisclosureRules, DPOptions, Query
    from biofed.core import ConfigurationError

    if flags["split"] not in SPLITS:
        raise ConfigurationError(f"--split must be one of {', '.join(SPLITS)}")
    dp = None
    if flags["dp_epsilon"] is not None:
        mechanism = flags["dp_mechanism"] or ("gaussian" if flags["dp_delta"] else "laplace")
        dp = DPOptions(mechanism=mechanism, epsilon=flags["dp_epsilon"], delta=flags["dp_delta"])
    elif flags["dp_mechanism"] is not None or flags["dp_delta"]:
        raise ConfigurationError("--dp-mechanism and --dp-delta need --dp-epsilon")
    given = {k: flags[k] for k in _RULE_FLAGS if flags[k] is not None}
    rules = DisclosureRules.from_mapping(given, what="requested rules") if given else None
    where = tuple(parse_where(w) for w in flags["where"] or ())
    options = options_of()
    query = Query(kind=kind, options=options, where=where, split=flags["split"], dp=dp)
    return query, rules


def _check_outputs(kind: str, flags: dict[str, Any]) -> None:
    from biofed.core import ConfigurationError

    plot = flags["plot"]
    if plot is not None:
        if kind not in ("km", "histogram"):
            raise ConfigurationError("--plot draws km curves and histograms")
        if plot.suffix.lower() not in (".png", ".svg"):
            raise ConfigurationError(
                f"--plot writes .png or .svg, not {plot.suffix or plot.name!r}"
            )
    html = flags["html"]
    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise ConfigurationError(f"--html writes an .html file, not {html.name!r}")


def _write_outputs(result: "Result", flags: dict[str, Any]) -> None:
    from biofed.cli._analyze_render import page, plot

    if flags["plot"] is not None:
        plot(result, flags["plot"])
    if flags["html"] is not None:
        flags["html"].write_text(page(result), encoding="utf-8")


# -- simulation -------------------------------------------------------------------------------


def _simulate(query: "Query", rules: "DisclosureRules | None", flags: dict[str, Any]) -> "Result":
    import tempfile

    from biofed.analytics import kind_of
    from biofed.core import ConfigurationError

    sources = [flags["tcga"], flags["data"] is not None, bool(flags["site"])]
    if sum(sources) != 1:
        raise ConfigurationError(
            "say where the data is: --tcga, --data TABLE --site-column COL, or --spec "
            "study.toml --site NAME=SOURCE … (a simulation), or --kit KIT --dataset NAME "
            "(a running federation)"
        )
    for flag in ("coordinator", "min_nodes"):
        if flags[flag] is not None:
            raise ConfigurationError(f"--{flag.replace('_', '-')} is for a networked query (--kit)")
    if flags["secure"] and not kind_of(query.kind).secure_supported:
        raise ConfigurationError(f"{query.kind} cannot run with --secure")
    agreement = flags["agreement"]
    if agreement is not None:
        _check_rehearsal(agreement, flags)
    with tempfile.TemporaryDirectory(prefix="biofed-analyze-") as folder:
        study = None
        sites: Any
        if flags["tcga"]:
            from biofed.datasets import load_tcga_brca

            if flags["spec"] is not None:
                raise ConfigurationError("--spec is for --site or --data, not --tcga")
            sites = load_tcga_brca()
        elif flags["spec"] is not None:
            from biofed.data import load_study_spec

            study = load_study_spec(flags["spec"])
            sites = _study_sources(flags, Path(folder))
        else:
            sites = table_sites(flags["data"], flags["site_column"], query)
        if study is None:
            check_columns(query, sites)
        with _Progress() as progress:
            return _analyze(query, rules, flags, sites, study, agreement, progress)


def _check_rehearsal(agreement: str, flags: dict[str, Any]) -> None:
    """A rehearsed agreement must be a file that puts the simulation's dataset in scope."""
    from biofed.core import ConfigurationError
    from biofed.governance import read_agreement
    from biofed.simulation import SIM_DATASET

    if not Path(agreement).is_file():
        raise ConfigurationError(
            f"--agreement {agreement!r}: a simulation rehearses an agreement file"
        )
    if flags["data"] is not None and flags["spec"] is None:
        raise ConfigurationError(
            "--agreement with --data needs --spec study.toml: a governed site reads its "
            "table as a study file"
        )
    datasets = read_agreement(Path(agreement)).agreement.datasets
    other = sorted({d for d in datasets.values() if d != SIM_DATASET})
    if other:
        raise ConfigurationError(
            f"--agreement {agreement}: the simulated sites hold dataset {SIM_DATASET!r}, "
            f"the agreement puts {other[0]!r} in scope (draft it with --dataset {SIM_DATASET})"
        )


def _analyze(
    query: "Query",
    rules: "DisclosureRules | None",
    flags: dict[str, Any],
    sites: Any,
    study: Any,
    agreement: str | None,
    progress: "_Progress",
) -> "Result":
    from biofed.coordinator import AnalysisFailed
    from biofed.simulation import analyze

    try:
        return analyze(
            sites,
            query,
            secure=flags["secure"],
            rules=rules,
            # in a rehearsal without an agreement the researcher sets the virtual sites'
            # own rules too; with one, every virtual site enforces the agreement's
            node_rules=rules if agreement is None else None,
            study=study,
            agreement=agreement,
            seed=flags["seed"],
            min_replies=flags["min_replies"],
            listener=progress,
        )
    except AnalysisFailed as exc:
        raise RunFailed(failure_text(str(exc), progress.problems)) from None


def check_columns(query: "Query", sites: "FederatedDataset") -> None:
    """Every column the query reads is one the (simulated) sites hold, or a one-line error
    naming the closest one (a networked site says so itself)."""
    import difflib

    from biofed.core import ConfigurationError

    first = next(iter(sites.sites.values())).train
    held = [*first.feature_names, *first.targets]
    for column in query.columns():
        if column not in held:
            close = difflib.get_close_matches(column, held, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(f"{sites.name} has no column {column!r}{hint}")


def _study_sources(flags: dict[str, Any], folder: Path) -> dict[str, str]:
    from biofed.core import ConfigurationError

    if flags["data"] is not None:
        from biofed.cli._report import _split_by_site

        if flags["site_column"] is None:
            raise ConfigurationError("--data needs --site-column COL (the column naming sites)")
        return {s: str(p) for s, p in _split_by_site(flags["data"], flags["site_column"], folder)}
    sources: dict[str, str] = {}
    for item in flags["site"] or ():
        name, sep, source = item.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ConfigurationError(f"--site must be NAME=SOURCE, got {item!r}")
        if name.strip() in sources:
            raise ConfigurationError(f"--site {name.strip()} is given twice")
        sources[name.strip()] = source.strip()
    if not sources:
        raise ConfigurationError("--spec needs its sites: --site NAME=SOURCE … or --data")
    return sources


def table_sites(path: Path, site_column: str | None, query: "Query") -> "FederatedDataset":
    """One virtual site per value of ``site_column``: every numeric column of the table a
    column of the query (float64, missing as NaN). Text columns need a study spec (which
    says which are categorical)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from biofed.core import ConfigurationError, DataError, check_id
    from biofed.data import Dataset, FederatedDataset, SiteData

    if site_column is None:
        raise ConfigurationError("--data needs --site-column COL (the column naming sites)")
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(f"cannot read {path.name}: {str(exc).splitlines()[0]}") from None
    if site_column not in table.column_names:
        raise ConfigurationError(f"--site-column {site_column!r} is not a column of {path.name}")
    names = [str(v) for v in table.column(site_column).to_pylist()]
    if any(v == "None" for v in names):
        raise DataError(f"{path.name}: column {site_column!r} has rows with no site")
    columns: dict[str, Any] = {}
    for name in table.column_names:
        if name == site_column:
            continue
        col = table.column(name)
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            columns[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
        elif pa.types.is_boolean(col.type):
            columns[name] = np.asarray(
                [np.nan if v is None else float(v) for v in col.to_pylist()], np.float64
            )
        elif name in query.columns():
            raise ConfigurationError(
                f"column {name!r} of {path.name} is text: describe the table with --spec "
                "study.toml (its categorical columns) to query it"
            )
    missing = [c for c in query.columns() if c not in columns]
    if missing:
        raise ConfigurationError(f"{path.name} has no column {missing[0]!r}")
    site_of = np.asarray(names)
    sites = {}
    for value in sorted(set(names)):
        site = check_id(value, what=f"site name in column {site_column!r}")
        rows = site_of == value
        data = Dataset(
            name=site,
            features=np.zeros((int(rows.sum()), 0), np.float32),
            feature_names=(),
            targets={k: v[rows] for k, v in columns.items()},
        )
        sites[site] = SiteData(train=data)
    return FederatedDataset(name=check_id(_stem(path), what="table name"), sites=sites)


def _stem(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:64] or "table"


#: Run events that carry a site's reason for not answering.
PROBLEM_EVENTS = ("reply_rejected", "no_reply", "send_failed", "reply_late")


def failure_text(headline: str, problems: list[tuple[str, str]]) -> str:
    """The failure's first clause, then each distinct reason once with the sites giving it
    (a reason is capped at 200 characters: a site's error may list its columns)."""
    head = headline.split(" (", 1)[0]
    by_reason: dict[str, list[str]] = {}
    for site, message in problems:
        by_reason.setdefault(message, []).append(site)
    if not by_reason:
        return headline
    lines = [head]
    for message, sites in by_reason.items():
        shown = message if len(message) <= 200 else message[:199] + "…"
        lines.append(f"  {', '.join(sorted(set(sites)))}: {shown}")
    return "\n".join(lines)


class _Progress:
    """A Rich status line on stderr (the current pass, the sites that answered), each
    finished pass as a line, and the sites' reasons for any failure."""

    def __init__(self) -> None:
        self._status: Any = None
        self._answered = 0
        self._pass = 1
        self.problems: list[tuple[str, str]] = []

    def __enter__(self) -> "_Progress":
        self._status = err.status("pass 1: waiting for the sites…")
        self._status.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._status.__exit__(*exc)

    def on_reply(self, server_round: int, reply: Any, accepted: bool) -> None:
        if server_round != self._pass:
            self._pass, self._answered = server_round, 0
        self._answered += int(accepted)
        self._status.update(f"pass {server_round}: {self._answered} sites answered…")

    def on_event(self, event: Any) -> None:
        if event.kind == "query_pass":
            err.print(f"[dim]{escape(event.message)}[/]", highlight=False)
        elif event.kind in PROBLEM_EVENTS and event.node_id:
            self.problems.append((event.node_id, event.message))


# -- the kinds --------------------------------------------------------------------------------

ColumnsOpt = Annotated[
    Multi,
    typer.Option(
        "--column", help="A column (repeatable, or comma-separated; quote a name with a comma)."
    ),
]
TimeOpt = Annotated[str, typer.Option("--time", help="The follow-up time column.")]
EventOpt = Annotated[str, typer.Option("--event", help="The event column (1 event, 0 censored).")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="1 − confidence level.")]
CovariateOpt = Annotated[
    Multi, typer.Option("--covariate", help="A covariate column (repeatable, or comma-separated).")
]
LevelOpt = Annotated[
    Multi,
    typer.Option(
        "--level",
        metavar="COL=a,b,c",
        help="A categorical covariate's agreed levels, the first the reference (repeatable).",
    ),
]
GroupOpt = Annotated[str | None, typer.Option("--group", help="Compare the groups of a column.")]
LevelsOpt = Annotated[
    str | None, typer.Option("--levels", help="The group column's levels: a,b (or 0,1).")
]
GridStepOpt = Annotated[
    float | None, typer.Option("--grid-step", help="An agreed time grid: its step.")
]
GridStopOpt = Annotated[
    float | None, typer.Option("--grid-stop", help="An agreed time grid: its last time.")
]
GridOpt = Annotated[str | None, typer.Option("--grid", help="An explicit time grid: 0,30,60,…")]
MaxIterOpt = Annotated[int | None, typer.Option("--max-iter", help="Most Newton passes.")]
TolOpt = Annotated[float | None, typer.Option("--tol", help="Convergence tolerance.")]


@_command("count", "count")
def count_command() -> dict[str, Any]:
    """Records in the cohort over the consortium (suppressed below --min-cell)."""
    return {}


@_command("describe", "describe")
def describe_command(
    column: ColumnsOpt = None,
    bounds: Annotated[
        Multi,
        typer.Option(
            "--bounds", metavar="COL=LO,HI", help="A column's bounds (needed for DP; repeatable)."
        ),
    ] = None,
) -> dict[str, Any]:
    """n, sum, mean, variance and sd per column (no exact min/max: they are one record)."""
    options: dict[str, Any] = {"columns": _names(column, "--column")}
    if bounds:
        options["bounds"] = _bounds(bounds)
    return options


@_command("histogram", "histogram")
def histogram_command(
    column: Annotated[str, typer.Option("--column", help="The numeric column.")],
    edges: Annotated[str, typer.Option("--edges", help="Agreed bin edges: 0,10,20,…")],
) -> dict[str, Any]:
    """Counts per agreed bin, plus below the first and above the last edge."""
    return {"column": column, "edges": _numbers(edges, "--edges")}


@_command("quantile", "quantile")
def quantile_command(
    column: Annotated[str, typer.Option("--column", help="The numeric column.")],
    probs: Annotated[str, typer.Option("--probs", help="Probabilities: 0.25,0.5,0.75.")] = "0.5",
    bounds: Annotated[
        str | None, typer.Option("--bounds", metavar="LO,HI", help="The column's range.")
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option("--tolerance", help="Largest error of the answer.")
    ] = None,
    bins: Annotated[
        int | None, typer.Option("--bins", help="Bins per refining pass (default 32).")
    ] = None,
) -> dict[str, Any]:
    """Quantiles by federated histograms refined around the targets (error bound shown)."""
    return _drop_none(
        {
            "column": column,
            "probs": _numbers(probs, "--probs"),
            "bounds": None if bounds is None else _numbers(bounds, "--bounds"),
            "tolerance": tolerance,
            "bins": bins,
        }
    )


@_command("crosstab", "crosstab")
def crosstab_command(
    rows: Annotated[str, typer.Option("--rows", help="The rows' column.")],
    cols: Annotated[str, typer.Option("--cols", help="The columns' column.")],
    row_levels: Annotated[
        str | None, typer.Option("--row-levels", help="The rows' levels: a,b,c.")
    ] = None,
    col_levels: Annotated[
        str | None, typer.Option("--col-levels", help="The columns' levels: a,b,c.")
    ] = None,
    row_edges: Annotated[
        str | None, typer.Option("--row-edges", help="Bins of a numeric rows' column.")
    ] = None,
    col_edges: Annotated[
        str | None, typer.Option("--col-edges", help="Bins of a numeric columns' column.")
    ] = None,
) -> dict[str, Any]:
    """Counts of two columns with margins; small cells suppressed (with complements)."""
    return _drop_none(
        {
            "rows": rows,
            "cols": cols,
            "row_levels": None if row_levels is None else values_of(row_levels, "--row-levels"),
            "col_levels": None if col_levels is None else values_of(col_levels, "--col-levels"),
            "row_edges": None if row_edges is None else _numbers(row_edges, "--row-edges"),
            "col_edges": None if col_edges is None else _numbers(col_edges, "--col-edges"),
        }
    )


@_command("correlation", "correlation")
def correlation_command(column: ColumnsOpt = None) -> dict[str, Any]:
    """Covariance and Pearson correlation of two or more columns (complete cases)."""
    return {"columns": _names(column, "--column")}


def _survival(
    kind: str,
    time: str,
    event: str,
    group: str | None,
    levels: str | None,
    alpha: float | None,
    grid: Any,
) -> dict[str, Any]:
    from biofed.core import ConfigurationError

    if (group is None) != (levels is None):
        raise ConfigurationError("--group and --levels go together (the group's agreed levels)")
    return _drop_none(
        {
            "time": time,
            "event": event,
            "group": group,
            "levels": None if levels is None else values_of(levels, "--levels"),
            "alpha": alpha,
            "grid": grid,
        }
    )


@_command("km", "km")
def km_command(
    time: TimeOpt,
    event: EventOpt,
    group: GroupOpt = None,
    levels: LevelsOpt = None,
    alpha: AlphaOpt = 0.05,
    grid_step: GridStepOpt = None,
    grid_stop: GridStopOpt = None,
    grid: GridOpt = None,
) -> dict[str, Any]:
    """Kaplan–Meier curves with confidence bands (steps only where enough are at risk)."""
    return _survival("km", time, event, group, levels, alpha, _grid(grid_step, grid_stop, grid))


@_command("nelson-aalen", "nelson_aalen")
def nelson_aalen_command(
    time: TimeOpt,
    event: EventOpt,
    group: GroupOpt = None,
    levels: LevelsOpt = None,
    alpha: AlphaOpt = 0.05,
    grid_step: GridStepOpt = None,
    grid_stop: GridStopOpt = None,
    grid: GridOpt = None,
) -> dict[str, Any]:
    """Nelson–Aalen cumulative hazard with confidence bands."""
    return _survival(
        "nelson_aalen", time, event, group, levels, alpha, _grid(grid_step, grid_stop, grid)
    )


@_command("logrank", "logrank")
def logrank_command(
    time: TimeOpt,
    event: EventOpt,
    group: Annotated[str, typer.Option("--group", help="The group column.")],
    levels: Annotated[str, typer.Option("--levels", help="Its levels: a,b (two or more).")],
    grid_step: GridStepOpt = None,
    grid_stop: GridStopOpt = None,
    grid: GridOpt = None,
) -> dict[str, Any]:
    """The log-rank test between the groups."""
    return _survival("logrank", time, event, group, levels, None, _grid(grid_step, grid_stop, grid))


@_command("glm", "glm")
def glm_command(
    outcome: Annotated[str, typer.Option("--outcome", help="The outcome column.")],
    covariate: CovariateOpt = None,
    family: Annotated[
        str, typer.Option("--family", help="binomial, poisson or gaussian.")
    ] = "binomial",
    level: LevelOpt = None,
    offset: Annotated[
        str | None, typer.Option("--offset", help="An offset column (e.g. log exposure).")
    ] = None,
    intercept: Annotated[bool, typer.Option(help="Fit an intercept.")] = True,
    alpha: AlphaOpt = 0.05,
    max_iter: MaxIterOpt = None,
    tol: TolOpt = None,
) -> dict[str, Any]:
    """An exact federated GLM (IRLS on summed X'WX, X'Wz): equals the pooled fit."""
    return _drop_none(
        {
            "outcome": outcome,
            "covariates": _names(covariate, "--covariate"),
            "family": family,
            "levels": _levels(level),
            "offset": offset,
            "intercept": intercept,
            "alpha": alpha,
            "max_iter": max_iter,
            "tol": tol,
        }
    )


@_command("cox", "cox")
def cox_command(
    time: TimeOpt,
    event: EventOpt,
    covariate: CovariateOpt = None,
    level: LevelOpt = None,
    ties: Annotated[str, typer.Option("--ties", help="efron or breslow.")] = "efron",
    penalizer: Annotated[
        float, typer.Option("--penalizer", help="Ridge penalty (lifelines' scaling).")
    ] = 0.0,
    strata: Annotated[
        str | None, typer.Option("--strata", help="site: a baseline hazard per site.")
    ] = None,
    alpha: AlphaOpt = 0.05,
    max_iter: MaxIterOpt = None,
    tol: TolOpt = None,
    grid_step: GridStepOpt = None,
    grid_stop: GridStopOpt = None,
    grid: GridOpt = None,
) -> dict[str, Any]:
    """An exact federated Cox model (Newton on summed risk-set sums): equals the pooled fit."""
    return _drop_none(
        {
            "time": time,
            "event": event,
            "covariates": _names(covariate, "--covariate"),
            "levels": _levels(level),
            "ties": ties,
            "penalizer": penalizer,
            "strata": strata,
            "alpha": alpha,
            "max_iter": max_iter,
            "tol": tol,
            "grid": _grid(grid_step, grid_stop, grid),
        }
    )
