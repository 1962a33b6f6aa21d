"""``biofed simulate``: a federation of virtual sites in one process."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.markup import escape

from biofed.cli._names import STRATEGY_NAMES
from biofed.cli._output import Format, FormatOption, emit
from biofed.cli._render import RoundProgress, privacy_renderables, report_table
from biofed.cli._simulate_table import TableOptions

if TYPE_CHECKING:
    from biofed.coordinator import JobSpec
    from biofed.core import Scalar
    from biofed.data import FederatedDataset
    from biofed.node import NodeConfig
    from biofed.simulation import SimulationReport
    from biofed.tasks import Task

# The SDK is imported where it is used, so that `biofed --help` stays fast.
_BUNDLED = ("tcga-brca",)


def _task_for(name: str | None, fed: FederatedDataset, metric: str | None = None) -> Task:
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
    _check_metric_task(name, metric)
    extra = {} if metric is None else {"metric": metric}
    return make_task(name, num_features=first.num_features, **extra)


def _check_metric_task(task: str, metric: str | None) -> None:
    from biofed.core import ConfigurationError

    if metric is not None and task != "logistic_regression":
        raise ConfigurationError(
            f"--metric is for --task logistic_regression (roc_auc or accuracy); {task} "
            "reports its own metric"
        )


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
    if the_task.name == "logistic_regression" and the_task.primary_metric != "roc_auc":
        task_options["metric"] = the_task.primary_metric
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
    if flags["metric"] is not None:
        _check_metric_task(tables["task"]["name"], flags["metric"])
        tables["task"]["metric"] = flags["metric"]
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


def _load_fed(name: str, table: TableOptions | None, seed: int) -> FederatedDataset:
    from biofed.core import ConfigurationError

    if table is not None:
        from biofed.cli._simulate_table import load_user_federation

        return load_user_federation(table, seed)
    if name in _BUNDLED:
        from biofed.datasets import load_tcga_brca

        return load_tcga_brca()
    raise ConfigurationError(
        f"unknown dataset {name!r}; bundled: {sorted(_BUNDLED)} (or use --data PATH)"
    )


def _prepare(
    fed: FederatedDataset, table: TableOptions | None, standardise: bool, err: Console
) -> FederatedDataset:
    """Standardise the features if asked; else warn (once) about what will hurt training."""
    from biofed.cli._simulate_table import id_like_features, scale_warning
    from biofed.data import standardise_sites

    if table is not None and table.features is None:
        suspect = id_like_features(fed)
        if suspect:
            err.print(
                f"[yellow]warning:[/] column(s) {', '.join(suspect)} look like ids or flags and "
                "are used as features; pass --id-column, --exclude or --features"
            )
    if standardise:
        return standardise_sites(fed)[0]
    if table is not None:
        warning = scale_warning(fed)
        if warning:
            err.print(f"[yellow]warning:[/] {warning}")
    return fed


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
    split_column: Annotated[
        str | None,
        typer.Option(
            help="With --data: the column marking each row train or test (instead of a split "
            "drawn with --seed)."
        ),
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(
            help="With --data: the feature columns, comma-separated (default: all "
            "other numeric columns)."
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        typer.Option(help="With --data: columns never used as features, comma-separated."),
    ] = None,
    id_column: Annotated[
        str | None, typer.Option(help="With --data: a record-id column (never a feature).")
    ] = None,
    impute: Annotated[
        str | None,
        typer.Option(
            help="With --data: fill missing numbers with the pooled training mean, median or "
            "zero (mean|median|zero), adding a 0/1 <col>__missing feature."
        ),
    ] = None,
    one_hot: Annotated[
        bool,
        typer.Option(
            help="With --data: one-hot encode text columns with a vocabulary pooled from the "
            "sites' training category counts (rare ones merged into 'other')."
        ),
    ] = False,
    min_category_count: Annotated[
        int,
        typer.Option(help="With --one-hot: pooled count below which a category becomes 'other'."),
    ] = 10,
    standardise: Annotated[
        bool,
        typer.Option(
            help="Standardise features with the mean and std pooled over the sites' training "
            "sets (from per-site sums), applied to every site's train and test."
        ),
    ] = False,
    metric: Annotated[
        str | None,
        typer.Option(help="logistic_regression's test metric: roc_auc (default) or accuracy."),
    ] = None,
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
    site: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=SOURCE, repeatable: with a --job that has [study], a virtual site and "
            "its study source (an OMOP CDM's DuckDB file or URL, or a data file)."
        ),
    ] = None,
    trusted: Annotated[
        Path | None,
        typer.Option(
            help="The coordinator's trusted dataset (CSV or Parquet: the task's targets and "
            "feature columns) for a job whose [robust] section validates updates or runs "
            "FLTrust, or that measures contributions ([contribution])."
        ),
    ] = None,
    format: FormatOption = Format.table,
) -> None:
    """Federate a task over virtual sites and compare with local-only and pooled training."""
    from biofed.cli._simulate_table import check_task_targets
    from biofed.coordinator import JobSpec
    from biofed.core import BiofedError, ConfigurationError
    from biofed.simulation import simulate
    from biofed.tasks import make_task

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
        "metric": metric,
    }
    table = None
    if data is not None:
        table = TableOptions(
            path=data,
            site_column=site_column,
            targets=tuple(target or ()),
            test_fraction=test_fraction,
            split_column=split_column,
            features=features,
            exclude=exclude,
            id_column=id_column,
            impute=impute,
            one_hot=one_hot,
            min_category_count=min_category_count,
        )
    try:
        configs = _parse_node_configs(node_config or [])
        if table is None:
            given = {
                "--split-column": split_column,
                "--features": features,
                "--exclude": exclude,
                "--id-column": id_column,
                "--impute": impute,
                "--one-hot": True if one_hot else None,
            }
            unused = [flag for flag, value in given.items() if value is not None]
            if unused:
                raise ConfigurationError(f"{unused[0]} is for a table given with --data")
        spec = None if job is None else _with_flags(JobSpec.from_file(job), flags)
        if trusted is not None and spec is None:
            raise ConfigurationError(
                "--trusted is for a --job with a [robust] or [contribution] section"
            )
        if spec is not None and spec.study is not None:
            if trusted is not None:
                raise ConfigurationError("--trusted cannot be used with a job with [study]")
            _simulate_study(spec, site or [], baselines, configs, ledger_dir, backend, format)
            return
        if site:
            raise ConfigurationError("--site gives a study source: it needs a --job with [study]")
        run_seed = spec.seed if spec is not None else (42 if seed is None else seed)
        fed = _load_fed(dataset or (spec.dataset if spec else "tcga-brca"), table, run_seed)
        if table is not None:
            task_name = spec.task if spec is not None else _task_for(task, fed).name
            check_task_targets(task_name, set(next(iter(fed.sites.values())).train.targets))
        fed = _prepare(fed, table, standardise, err)
        if spec is None:
            spec = _flags_job(fed, flags, run_seed)
        shown = "" if spec.bundle else make_task(spec.task, **spec.task_options).primary_metric
        trusted_data = None
        if trusted is not None:
            from biofed.coordinator import TrustedData

            trusted_data = TrustedData(spec, trusted, name=trusted.name)
        with RoundProgress(err, spec.rounds, shown) as progress:
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
                trusted=trusted_data,
            )
    except BiofedError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")  # "[study]" is text, not markup
        raise typer.Exit(code=2) from exc
    emit(format, report.to_dict(), *simulate_view(report))
    for event in report.events:
        err.print(f"[yellow]event:[/] {event}")


def simulate_view(report: SimulationReport) -> list[RenderableType]:
    """What ``simulate`` prints: the methods' table, the features, the privacy spent and, for
    a job with [contribution], each site's contribution."""
    shown: list[RenderableType] = [report_table(report)]
    if report.features:
        shown.append(escape(f"features ({len(report.features)}): {', '.join(report.features)}"))
    if report.privacy is not None:
        shown.extend(privacy_renderables(report.privacy))
    if report.contributions is not None:  # a job with [contribution] (and --trusted)
        from biofed.cli._contributions import contributions_table, parse_record, summary_lines

        ledger, record = parse_record(report.contributions)
        shown.append(contributions_table(ledger, title="contributions (simulated run)"))
        shown.extend(summary_lines(ledger, record, partial=False))
    return shown


def _simulate_study(
    spec: JobSpec,
    sites: list[str],
    baselines: bool,
    configs: dict[str, Any],
    ledger_dir: Path | None,
    backend: str,
    format: Format,
) -> None:
    """Simulate a job with a study spec over ``--site NAME=SOURCE`` virtual sites."""
    from biofed.core import ConfigurationError
    from biofed.simulation import simulate

    sources: dict[str, str] = {}
    for item in sites:
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise ConfigurationError(f"--site must be NAME=SOURCE, got {item!r}")
        if name in sources:
            raise ConfigurationError(f"--site {name} is given twice")
        sources[name] = source
    if not sources:
        raise ConfigurationError("a job with [study] needs its sites: --site NAME=SOURCE …")
    from biofed.tasks import make_task

    # the metric's name is the task's, whatever width the fitted preprocessing gives it
    shown = make_task(spec.task, **{"num_features": 1, **spec.task_options}).primary_metric
    err = Console(stderr=True)
    with RoundProgress(err, spec.rounds, shown) as progress:
        report = simulate(
            sources,
            job=spec,
            baselines=baselines,
            listener=progress,
            node_configs=configs,
            ledger_dir=ledger_dir,
            backend=backend,
        )
    emit(format, report.to_dict(), *simulate_view(report))
    for event in report.events:
        err.print(f"[yellow]event:[/] {event}")


def _flags_job(fed: FederatedDataset, flags: dict[str, Any], seed: int) -> JobSpec:
    """The job of the flags alone, with the recommended settings for the dataset."""
    from biofed.simulation import recommended_settings
    from biofed.strategies import make_strategy
    from biofed.tasks import LocalTrainingConfig

    name = flags["strategy"] or "fedadam"
    the_task = _task_for(flags["task"], fed, flags["metric"])
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
