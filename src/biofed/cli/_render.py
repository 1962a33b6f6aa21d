"""Rendering of results with Rich (tables to stdout, progress to stderr)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from biofed.coordinator import RoundRecord
from biofed.core import Reply
from biofed.simulation import MethodResult, SimulationReport


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.4f}"


def report_table(report: SimulationReport) -> Table:
    """One row per method: per-site test metric, their mean, and the pooled-test metric."""
    sites = list(report.federated.site_metrics)
    table = Table(
        title=(
            f"{report.dataset} · {report.task} · {report.strategy} · "
            f"seed {report.seed} · test {report.metric}"
        )
    )
    table.add_column("method", style="bold")
    for site in sites:
        table.add_column(site, justify="right")
    table.add_column("mean of sites", justify="right", style="bold cyan")
    table.add_column("pooled test", justify="right")

    def row(result: MethodResult, style: str | None = None) -> None:
        cells = [_fmt(result.site_metrics.get(s, math.nan)) for s in sites]
        table.add_row(
            result.method,
            *cells,
            _fmt(result.mean_site_metric),
            _fmt(result.pooled_metric),
            style=style,
        )

    row(report.federated, "green")
    for baseline in report.baselines:
        row(baseline)
    return table


class RoundProgress:
    """Engine listener that shows a Rich progress bar per round on stderr."""

    def __init__(self, console: Console, rounds: int, metric: str) -> None:
        self._progress = Progress(
            TextColumn("[bold]round {task.fields[round]}/{task.fields[rounds]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("sites · {task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._rounds = rounds
        self._metric = metric
        self._task: TaskID | None = None

    def __enter__(self) -> RoundProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        self._task = self._progress.add_task(
            "round", total=num_selected, round=server_round, rounds=self._rounds, status="training"
        )

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        if self._task is not None and reply.kind.value == "train":
            self._progress.advance(self._task)

    def on_round_end(self, record: RoundRecord) -> None:
        if self._task is None:
            return
        loss = record.train_metrics.get("train_loss", math.nan)
        score = record.eval_metrics.get(self._metric, math.nan)
        status = record.failed or f"train loss {_fmt(loss)} · {self._metric} {_fmt(score)}"
        self._progress.update(self._task, status=status)
