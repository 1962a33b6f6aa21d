"""Rendering of results with Rich (tables to stdout, progress to stderr)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from biofed.coordinator import RoundRecord, RunEvent
    from biofed.core import Reply
    from biofed.simulation import MethodResult, SimulationReport


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def _short_names(sites: list[str]) -> tuple[str, dict[str, str]]:
    """Drop the sites' common prefix up to its last ``-``/``_`` ("center-0" → "0")."""
    prefix = os.path.commonprefix(sites) if len(sites) > 1 else ""  # noqa: RUF071 - names, not paths
    cut = max(prefix.rfind("-"), prefix.rfind("_")) + 1
    if cut == 0:
        return "", {s: s for s in sites}
    return sites[0][:cut], {s: s[cut:] for s in sites}


def report_table(report: SimulationReport) -> Table:
    """One row per method: per-site test metric, their mean, and the pooled-test metric."""
    sites = list(report.federated.site_metrics)
    prefix, short = _short_names(sites)
    table = Table(
        title=(
            f"{report.dataset} · {report.task} · {report.strategy} · "
            f"seed {report.seed} · test {report.metric}"
        ),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=(
            f"columns: each site's test set{f' (after {prefix!r})' if prefix else ''}, "
            "their mean, the pooled test set"
        ),
    )
    table.add_column("method", style="bold", no_wrap=True)
    for site in sites:
        table.add_column(short[site], justify="right", no_wrap=True)
    table.add_column("mean", justify="right", style="bold cyan", no_wrap=True)
    table.add_column("pooled", justify="right", no_wrap=True)

    def row(result: MethodResult, style: str | None = None) -> None:
        cells = [_fmt(result.site_metrics.get(s, math.nan), 3) for s in sites]
        method = result.method
        if method.startswith("local:"):
            method = f"local {short.get(method[6:], method[6:])}"
        table.add_row(
            method,
            *cells,
            _fmt(result.mean_site_metric),
            _fmt(result.pooled_metric),
            style=style,
        )

    row(report.federated, "green")
    for baseline in report.baselines:
        row(baseline)
    return table


#: Stages of a SecAgg+ round (advertise keys, share keys, masked input, unmask): each of a
#: site's replies is a quarter of its round.
SECAGG_STAGES = 4


#: The round progress bar's width: with the round (up to ``round 10/10``), the sites count and
#: the elapsed time it takes 41 of 80 columns; the round's status gets the rest (and wraps,
#: never the bar).
PROGRESS_BAR_WIDTH = 10


def round_progress(console: Console, *, unit: str) -> Progress:
    """A per-round progress display that fits 80 columns: ``round 2/5 ━━━ 4/6 sites 0:00:12``
    keep their width and come first; the round's status (``task.fields["status"]``) comes
    last and wraps under itself when it is long. (Rich's default layout shrinks the bar and
    the elapsed time instead: 3 characters and ``0:…`` at 80 columns.)"""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Column

    def fixed() -> Column:
        return Column(no_wrap=True)

    return Progress(
        TextColumn("[bold]round {task.fields[round]}/{task.fields[rounds]}", table_column=fixed()),
        BarColumn(bar_width=PROGRESS_BAR_WIDTH, table_column=fixed()),
        MofNCompleteColumn(table_column=fixed()),
        TextColumn(unit, table_column=fixed()),
        TimeElapsedColumn(table_column=fixed()),
        TextColumn("{task.fields[status]}", table_column=Column(overflow="fold")),
        console=console,
        transient=False,
    )


class RoundProgress:
    """Engine listener that shows a Rich progress bar per round on stderr."""

    def __init__(self, console: Console, rounds: int, metric: str) -> None:
        # the layout biofed demo uses too: only the status wraps at 80 columns
        self._progress = round_progress(console, unit="sites")
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
        if self._task is None:
            return
        if reply.kind.value == "train":
            self._progress.advance(self._task)
        elif reply.kind.value == "secagg":  # a site's secure round is four stages
            self._progress.advance(self._task, 1 / SECAGG_STAGES)
            self._progress.update(self._task, status="secure aggregation")

    def on_event(self, event: RunEvent) -> None:
        """Events are printed after the table; nothing to draw here."""

    def on_round_end(self, record: RoundRecord) -> None:
        if self._task is None:
            return
        loss = record.train_metrics.get("train_loss", math.nan)
        score = record.eval_metrics.get(self._metric, math.nan)
        status = record.failed or f"train loss {_fmt(loss)} · {self._metric} {_fmt(score)}"
        self._progress.update(self._task, status=status)


#: How each ε label is shown: a guarantee, or why it is not one.
_LABEL_TEXT = {
    "exact": "[green]exact[/]",
    "bounded": "[green]bounded[/] (proven per-record bound)",
    "heuristic": "[red]heuristic — not a guarantee[/]",
    "unlabelled": "[yellow]unlabelled — not shown to be a guarantee[/]",
}


def print_privacy(out: Console, privacy: Mapping[str, Any]) -> None:
    """Print ``privacy_renderables(privacy)`` to ``out``."""
    for item in privacy_renderables(privacy):
        out.print(item, highlight=False)


def privacy_renderables(privacy: Mapping[str, Any]) -> list[RenderableType]:
    """The guarantee the job asked for and each site's reported spend so far, every figure
    labelled with what it is (exact / bounded / heuristic) and what it rests on."""
    from biofed.cli._output import fit

    shown: list[RenderableType] = []
    g = privacy.get("guarantee", {})
    goal = (
        f"target ε={g['target_epsilon']:g}"
        if "target_epsilon" in g
        else f"noise multiplier {g.get('noise_multiplier')}"
    )
    shown.append(
        f"[bold]differential privacy[/]: {g.get('mode')} level ({g.get('protects')}), {goal}, "
        f"δ={g.get('delta'):g}, clip {g.get('max_grad_norm')}, {g.get('accountant')} accountant, "
        f"{g.get('rounds')} rounds"
    )
    trust = privacy.get("trust") or g.get("trust")
    if trust:
        shown.append(f"trust assumption: {trust}")
    label = privacy.get("label")
    if label:
        shown.append(f"ε figures: {_LABEL_TEXT.get(label, label)}")
    if "client_level_epsilon" in privacy:
        note = privacy.get("client_level_label", "the coordinator's own figure")
        shown.append(
            f"client-level ε so far (noise really in the sums): "
            f"{privacy['client_level_epsilon']:.4f} — {note}"
        )
    sites = privacy.get("sites", {})
    if sites:
        table = Table(title="privacy spent so far, as each site's ledger recorded it")
        for col in ("site", "ε", "δ", "after round", "guarantee"):
            table.add_column(
                col,
                justify="left" if col in ("site", "guarantee") else "right",
                overflow="fold" if col == "guarantee" else "ellipsis",
            )
        for site, spend in sorted(sites.items()):
            mark = str(spend.get("guarantee", "unlabelled"))
            table.add_row(
                site,
                f"{spend['epsilon']:.4f}",
                f"{spend['delta']:g}",
                f"{spend['round']:.0f}",
                _LABEL_TEXT.get(mark, mark),
            )
        shown.append(fit(table))
    if privacy.get("not_covered"):
        shown.append(f"[dim]not covered by ε: {privacy['not_covered']}[/]")
    return shown


#: How ``biofed run status`` colours each run state.
_STATUS_STYLE = {
    "finished": "green",
    "finished_with_failures": "yellow",
    "failed": "red",
    "cancelled": "dim",
    "running": "cyan",
    "pending": "",
}


def status_text(status: str) -> str:
    """A run state, coloured (``finished_with_failures`` is shown as "finished with failures")."""
    style = _STATUS_STYLE.get(status, "")
    label = status.replace("_", " ")
    return f"[{style}]{label}[/]" if style else label


def rounds_text(summary: Mapping[str, Any], completed_rounds: int, total_rounds: int) -> str:
    """Rounds of a run, failures first: "2 failed · 8/10" (stored rounds of the total)."""
    failed = int(summary.get("rounds", {}).get("failed", 0) or 0)
    done = f"{completed_rounds}/{total_rounds}"
    return f"[yellow]{failed} failed[/] · {done}" if failed else done


def run_headline(
    summary: Mapping[str, Any], completed_rounds: int, total_rounds: int
) -> str | None:
    """The first line of one run's status when something needs saying: how many rounds
    failed (before any metric), or why the run waits."""
    rounds = summary.get("rounds", {})
    failed = int(rounds.get("failed", 0) or 0)
    if failed:
        ok = int(rounds.get("completed", 0) or 0)
        return (
            f"[yellow]{failed} of {completed_rounds} rounds failed[/], {ok} completed "
            f"(of {total_rounds})"
        )
    waiting = summary.get("waiting")
    if waiting:
        return f"[cyan]waiting:[/] {waiting}"
    return None
