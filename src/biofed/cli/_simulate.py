"""``biofed simulate``: a federation of virtual sites in one process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from biofed.cli._names import STRATEGY_NAMES
from biofed.cli._render import RoundProgress, report_table

if TYPE_CHECKING:
    from biofed.data import FederatedDataset
    from biofed.tasks import Task

# The SDK is imported where it is used, so that `biofed --help` stays fast.


def _parse_targets(items: list[str]) -> dict[str, str]:
    from biofed.core import ConfigurationError

    targets: dict[str, str] = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep or not key or not column:
            raise ConfigurationError(
                "--target must look like KEY=COLUMN (e.g. event=E, time=T or label=y), "
                f"got {item!r}"
            )
        targets[key] = column
    return targets


def _user_dataset(
    path: Path, site_column: str | None, targets: dict[str, str], test_fraction: float, seed: int
) -> FederatedDataset:
    import numpy as np

    from biofed.core import ConfigurationError
    from biofed.data import FederatedDataset, SiteData, load_table, train_test_split

    if site_column is None:
        raise ConfigurationError(
            "--data needs --site-column COL: the column naming each row's site"
        )
    if not targets:
        raise ConfigurationError("--data needs --target KEY=COLUMN (event=…, time=… or label=…)")
    per_site = load_table(path, site_column=site_column, target_columns=targets)
    rng = np.random.default_rng(seed)
    stratify = "event" if "event" in targets else ("label" if "label" in targets else None)
    sites: dict[str, SiteData] = {}
    for site, ds in per_site.items():
        sites[site] = train_test_split(ds, test_fraction, rng, stratify_key=stratify)
    return FederatedDataset(name=path.stem, sites=sites)


def _task_for(name: str | None, fed: FederatedDataset) -> Task:
    from biofed.core import ConfigurationError
    from biofed.tasks import make_task

    first = next(iter(fed.sites.values())).train
    if name is None:
        if {"event", "time"} <= set(first.targets):
            name = "cox_ph"
        elif "label" in first.targets:
            name = "logistic_regression"
        else:
            raise ConfigurationError(
                "cannot infer the task: pass --task cox_ph|logistic_regression"
            )
    return make_task(name, num_features=first.num_features)


def simulate_command(
    dataset: Annotated[
        str, typer.Option(help="Bundled dataset to federate (ignored with --data).")
    ] = "tcga-brca",
    data: Annotated[
        Path | None, typer.Option(help="Your own CSV or Parquet table instead of a bundled set.")
    ] = None,
    site_column: Annotated[
        str | None, typer.Option(help="With --data: the column that names each row's site.")
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="With --data: KEY=COLUMN, repeatable (event=E --target time=T, label=y)."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="cox_ph or logistic_regression (inferred from targets).")
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="With --data: share of each site held out for testing.")
    ] = 0.2,
    strategy: Annotated[
        str, typer.Option(help=f"One of: {', '.join(STRATEGY_NAMES)}.")
    ] = "fedadam",
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 5,
    local_steps: Annotated[
        int, typer.Option(min=1, help="Local mini-batch steps per round.")
    ] = 100,
    batch_size: Annotated[int | None, typer.Option(help="Examples per local step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Client learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Client optimizer: sgd or adam.")] = None,
    server_lr: Annotated[
        float | None, typer.Option(help="Server learning rate (FedOpt, SCAFFOLD, FedAvgM).")
    ] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="FedProx μ.")] = None,
    seed: Annotated[
        int, typer.Option(help="Seed: the whole simulation is deterministic given it.")
    ] = 42,
    baselines: Annotated[
        bool, typer.Option(help="Also train local-only and pooled baselines.")
    ] = True,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Federate a task over virtual sites and compare with local-only and pooled training."""
    from biofed.core import BiofedError, ConfigurationError, Scalar
    from biofed.datasets import load_tcga_brca
    from biofed.simulation import recommended_settings, simulate
    from biofed.strategies import make_strategy

    bundled = {"tcga-brca": load_tcga_brca}
    out = Console()
    err = Console(stderr=True)
    try:
        if format not in ("table", "json"):
            raise ConfigurationError(f"--format must be table or json, got {format!r}")
        if data is not None:
            fed = _user_dataset(
                data, site_column, _parse_targets(target or []), test_fraction, seed
            )
        elif dataset in bundled:
            fed = bundled[dataset]()
        else:
            raise ConfigurationError(
                f"unknown dataset {dataset!r}; bundled: {sorted(bundled)} (or use --data PATH)"
            )
        the_task = _task_for(task, fed)
        settings = recommended_settings(fed.name, strategy)
        train_config: dict[str, Scalar] = {**settings.train_config, "local_steps": local_steps}
        overrides = {"batch_size": batch_size, "learning_rate": lr, "optimizer": optimizer}
        train_config.update({k: v for k, v in overrides.items() if v is not None})
        strategy_kwargs: dict[str, Any] = dict(settings.strategy_kwargs)
        if server_lr is not None:
            strategy_kwargs["server_learning_rate"] = server_lr
        if proximal_mu is not None:
            strategy_kwargs["proximal_mu"] = proximal_mu
        the_strategy = make_strategy(strategy, train_config=train_config, **strategy_kwargs)
        with RoundProgress(err, rounds, the_task.primary_metric) as progress:
            report = simulate(
                fed,
                the_task,
                the_strategy,
                rounds=rounds,
                seed=seed,
                baselines=baselines,
                listener=progress,
            )
    except BiofedError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    if format == "json":
        print(json.dumps(report.to_dict()))
        return
    out.print(report_table(report))
    for event in report.events:
        err.print(f"[yellow]event:[/] {event}")
