"""``biofed simulate``: a federation of virtual sites in one process."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from biofed.cli._names import STRATEGY_NAMES
from biofed.cli._render import RoundProgress, print_privacy, report_table

if TYPE_CHECKING:
    from biofed.coordinator import JobSpec
    from biofed.core import Scalar
    from biofed.data import FederatedDataset
    from biofed.node import NodeConfig
    from biofed.tasks import Task

# The SDK is imported where it is used, so that `biofed --help` stays fast.
_BUNDLED = ("tcga-brca",)


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


def _dataset_id(name: str) -> str:
    """A table's file name as a dataset id (letters, digits, ``.``, ``_``, ``-``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._")[:128] or "data"


def _parse_node_configs(items: list[str]) -> dict[str, NodeConfig]:
    from biofed.core import ConfigurationError
    from biofed.simulation import load_node_config

    configs: dict[str, NodeConfig] = {}
    for item in items:
        site, sep, path = item.partition("=")
        if not sep or not site or not path:
            raise ConfigurationError(f"--node-config must look like SITE=node.toml, got {item!r}")
        configs[site] = load_node_config(Path(path), site)
    return configs


def _shortcut_job(
    fed: FederatedDataset,
    the_task: Task,
    strategy: str,
    train_config: dict[str, Scalar],
    strategy_kwargs: dict[str, Any],
    rounds: int,
    seed: int,
) -> JobSpec:
    """The job the flags describe (what ``biofed simulate`` runs without ``--job``)."""
    from biofed.coordinator import JobSpec

    task_options: dict[str, Scalar] = {"name": the_task.name}
    task_options["num_features"] = next(iter(fed.sites.values())).train.num_features
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "simulation",
                "dataset": _dataset_id(fed.name),
                "rounds": rounds,
                "seed": seed,
                "min_nodes": 1,
                "min_replies": 1,
            },
            "task": task_options,
            "strategy": {"name": strategy, **strategy_kwargs},
            "train": train_config,
            "evaluate": {"split": "test"},
        }
    )


def _with_flags(job: JobSpec, flags: dict[str, Any]) -> JobSpec:
    """``job`` with the flags given on the command line in place of its own values."""
    from biofed.coordinator import JobSpec

    tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in job.to_mapping().items()}
    for key in ("rounds", "seed"):
        if flags[key] is not None:
            tables["run"][key] = flags[key]
    if flags["strategy"] is not None and flags["strategy"] != job.strategy:
        tables["strategy"] = {"name": flags["strategy"]}
    if flags["task"] is not None:
        tables["task"]["name"] = flags["task"]
    train = {
        "local_steps": flags["local_steps"],
        "batch_size": flags["batch_size"],
        "learning_rate": flags["lr"],
        "optimizer": flags["optimizer"],
    }
    tables["train"].update({k: v for k, v in train.items() if v is not None})
    strategy = {"server_learning_rate": flags["server_lr"], "proximal_mu": flags["proximal_mu"]}
    tables["strategy"].update({k: v for k, v in strategy.items() if v is not None})
    return JobSpec.from_mapping(tables)


def _load_fed(
    name: str,
    data: Path | None,
    site_column: str | None,
    target: list[str] | None,
    test_fraction: float,
    seed: int,
) -> FederatedDataset:
    from biofed.core import ConfigurationError

    if data is not None:
        return _user_dataset(data, site_column, _parse_targets(target or []), test_fraction, seed)
    if name in _BUNDLED:
        from biofed.datasets import load_tcga_brca

        return load_tcga_brca()
    raise ConfigurationError(
        f"unknown dataset {name!r}; bundled: {sorted(_BUNDLED)} (or use --data PATH)"
    )


def simulate_command(
    job: Annotated[
        Path | None,
        typer.Option(
            help="A job file (what `biofed run submit` takes, [privacy] and "
            "[secure_aggregation] included): every virtual site runs it as a real site "
            "node. Flags given with it replace its values."
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Bundled dataset to federate (default: the job's, or tcga-brca; ignored "
            "with --data)."
        ),
    ] = None,
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
        str | None,
        typer.Option(help=f"One of: {', '.join(STRATEGY_NAMES)} (default fedadam)."),
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Federated rounds (default 5).")] = None,
    local_steps: Annotated[
        int | None, typer.Option(min=1, help="Local mini-batch steps per round (default 100).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per local step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Client learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Client optimizer: sgd or adam.")] = None,
    server_lr: Annotated[
        float | None, typer.Option(help="Server learning rate (FedOpt, SCAFFOLD, FedAvgM).")
    ] = None,
    proximal_mu: Annotated[float | None, typer.Option(help="FedProx μ.")] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed: the whole simulation is deterministic given it (default 42)."),
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Also train local-only and pooled baselines.")
    ] = True,
    node_config: Annotated[
        list[str] | None,
        typer.Option(
            help="SITE=node.toml, repeatable: the node config a virtual site runs (its "
            "[privacy] caps and allow_heuristic; its datasets and ledger path are not used)."
        ),
    ] = None,
    ledger_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep the privacy ledger of each virtual site with caps (--node-config) as "
            "DIR/<site>.db, so rehearsals spend one budget (default: throwaway ledgers)."
        ),
    ] = None,
    agreement: Annotated[
        Path | None,
        typer.Option(
            help="A study agreement (signed or a draft) to rehearse: every virtual site "
            "enforces its terms as a governed node, re-signed by a throwaway consortium "
            "(needs --bundle and a job naming both)."
        ),
    ] = None,
    bundle: Annotated[
        Path | None,
        typer.Option(help="With --agreement: the task bundle (.zip) the agreement approves."),
    ] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="How the virtual sites run: inprocess, processes (a pool of worker "
            "processes) or ray (Ray actors; the ray extra)."
        ),
    ] = "inprocess",
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Federate a task over virtual sites and compare with local-only and pooled training."""
    from biofed.coordinator import JobSpec
    from biofed.core import BiofedError, ConfigurationError
    from biofed.simulation import simulate
    from biofed.tasks import make_task

    out = Console()
    err = Console(stderr=True)
    flags = {
        "rounds": rounds,
        "seed": seed,
        "strategy": strategy,
        "task": task,
        "local_steps": local_steps,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "server_lr": server_lr,
        "proximal_mu": proximal_mu,
    }
    # dp-accounting logs a warning per RDP order it drops; they are not the user's concern.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if format not in ("table", "json"):
            raise ConfigurationError(f"--format must be table or json, got {format!r}")
        configs = _parse_node_configs(node_config or [])
        if job is not None:
            spec = _with_flags(JobSpec.from_file(job), flags)
            fed = _load_fed(
                dataset or spec.dataset, data, site_column, target, test_fraction, spec.seed
            )
        else:
            seed = 42 if seed is None else seed
            fed = _load_fed(dataset or "tcga-brca", data, site_column, target, test_fraction, seed)
            spec = _flags_job(fed, flags, seed)
        metric = "" if spec.bundle else make_task(spec.task, **spec.task_options).primary_metric
        with RoundProgress(err, spec.rounds, metric) as progress:
            report = simulate(
                fed,
                job=spec,
                baselines=baselines,
                listener=progress,
                node_configs=configs,
                ledger_dir=ledger_dir,
                backend=backend,
                agreement=agreement,
                bundle=bundle,
            )
    except BiofedError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from exc
    if format == "json":
        print(json.dumps(report.to_dict()))
        return
    out.print(report_table(report))
    if report.privacy is not None:
        print_privacy(out, report.privacy)
    for event in report.events:
        err.print(f"[yellow]event:[/] {event}")


def _flags_job(fed: FederatedDataset, flags: dict[str, Any], seed: int) -> JobSpec:
    """The job of the flags alone, with the recommended settings for the dataset."""
    from biofed.simulation import recommended_settings
    from biofed.strategies import make_strategy
    from biofed.tasks import LocalTrainingConfig

    name = flags["strategy"] or "fedadam"
    the_task = _task_for(flags["task"], fed)
    settings = recommended_settings(fed.name, name)
    train_config: dict[str, Scalar] = {
        **settings.train_config,
        "local_steps": flags["local_steps"] or 100,
    }
    overrides = {
        "batch_size": flags["batch_size"],
        "learning_rate": flags["lr"],
        "optimizer": flags["optimizer"],
    }
    train_config.update({k: v for k, v in overrides.items() if v is not None})
    strategy_kwargs: dict[str, Any] = dict(settings.strategy_kwargs)
    if flags["server_lr"] is not None:
        strategy_kwargs["server_learning_rate"] = flags["server_lr"]
    if flags["proximal_mu"] is not None:
        strategy_kwargs["proximal_mu"] = flags["proximal_mu"]
    # The strategy's and the training config's own messages, before the job schema's.
    make_strategy(name, train_config=train_config, **strategy_kwargs)
    LocalTrainingConfig.from_config(train_config)
    return _shortcut_job(
        fed, the_task, name, train_config, strategy_kwargs, flags["rounds"] or 5, seed
    )
