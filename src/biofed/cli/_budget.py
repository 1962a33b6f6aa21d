"""``biofed node budget [DATASET]`` and ``biofed node budget-cap``: the site's privacy-budget
ledger (``NODE/privacy.db``), per dataset and per job. Caps only go down unless raised
explicitly with ``--raise`` (see :class:`~biofed.governance.PrivacyLedger`)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import clean_errors, fail, kit_audit
from biofed.cli._output import Format, FormatOption, emit

if TYPE_CHECKING:
    from biofed.governance import BudgetStatus

NodeDir = Annotated[Path, typer.Option("--node-dir", help="The node's folder (its kit).")]


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.6g}"


def budget_view(statuses: "list[BudgetStatus]") -> list[RenderableType]:
    """What ``node budget`` prints: caps and spend per dataset, then spend per job."""
    if not statuses:
        return ["no privacy budgets are set at this node (biofed node budget-cap DATASET ...)"]
    summary = Table(title="privacy budgets (basic composition across jobs)")
    for col in ("dataset", "cap ε", "cap δ", "spent ε", "spent δ", "remaining ε", "jobs"):
        summary.add_column(col, justify="left" if col == "dataset" else "right")
    for s in statuses:
        remaining = (
            "[bold red]no cap[/]"
            if s.cap_epsilon is None
            else f"[{'green' if s.remaining_epsilon > 0 else 'bold red'}]"
            f"{_num(s.remaining_epsilon)}[/]"
        )
        summary.add_row(
            escape(s.dataset),
            _num(s.cap_epsilon),
            _num(s.cap_delta),
            _num(s.spent_epsilon),
            _num(s.spent_delta),
            remaining,
            str(len(s.jobs)),
        )
    shown: list[RenderableType] = [summary]
    for s in statuses:
        if not s.jobs:
            continue
        jobs = Table(title=f"{escape(s.dataset)}: spend per job")
        for col in ("run", "ε", "δ", "rounds", "last round", "guarantee"):
            jobs.add_column(col, justify="left" if col in ("run", "guarantee") else "right")
        for j in s.jobs:  # the weakest label of the job's debits: exact, bounded, heuristic
            jobs.add_row(
                escape(j.run_id),
                _num(j.epsilon),
                _num(j.delta),
                str(j.rounds),
                str(j.last_round),
                j.guarantee,
            )
        shown.append(jobs)
    return shown


def budget_command(
    node_dir: NodeDir,
    dataset: Annotated[
        str | None, typer.Argument(help="One dataset (default: every dataset with a budget).")
    ] = None,
    format: FormatOption = Format.table,
) -> None:
    """Privacy budget per dataset: cap, spent (ε, δ) across jobs, remaining, and per job."""
    from biofed.governance import LEDGER_FILE, PrivacyLedger

    ledger = PrivacyLedger(node_dir / LEDGER_FILE)  # reading: nothing to audit
    with clean_errors():
        names = ledger.datasets()
        if dataset is not None:
            if dataset not in names:
                raise fail(
                    LookupError(f"no privacy budget or spend is recorded for dataset {dataset!r}")
                )
            names = [dataset]
        statuses = [ledger.spent(name) for name in names]
    emit(format, [s.to_json() for s in statuses], *budget_view(statuses))


def budget_cap_command(
    dataset: Annotated[str, typer.Argument(help="The dataset whose budget to set.")],
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Total ε this dataset may spend across all jobs.")
    ],
    delta: Annotated[
        float, typer.Option("--delta", help="Total δ this dataset may spend across all jobs.")
    ],
    node_dir: NodeDir,
    raise_cap: Annotated[
        bool,
        typer.Option(
            "--raise",
            help="Allow raising the cap (audited as budget.cap_raised). Without it a cap "
            "can only be set or lowered.",
        ),
    ] = False,
    format: FormatOption = Format.table,
) -> None:
    """Set or lower the site's privacy-budget cap (ε, δ) on a dataset; raise it with --raise.

    Caps only go down by themselves: node.toml can lower a cap at node start but never raise
    it, so a cap lowered here survives a restart. Every change is in the site's audit log
    (budget.cap_set, budget.cap_lowered, budget.cap_raised).
    """
    from biofed.governance import LEDGER_FILE, PrivacyLedger

    with clean_errors():
        audit = kit_audit(node_dir)  # the node's own signed log, when node_dir is its kit
        ledger = PrivacyLedger(node_dir / LEDGER_FILE, audit=audit)
        change = ledger.set_cap(dataset, epsilon, delta, allow_raise=raise_cap, source="cli")
        status = ledger.spent(dataset)
    before = (
        ""
        if change.previous is None
        else f" (was ε={_num(change.previous[0])}, δ={_num(change.previous[1])})"
    )
    data = {
        "dataset": dataset,
        "action": change.action,
        "epsilon": change.epsilon,
        "delta": change.delta,
        "previous": None if change.previous is None else list(change.previous),
        "spent_epsilon": status.spent_epsilon,
        "remaining_epsilon": status.remaining_epsilon,
    }
    emit(
        format,
        data,
        f"cap on [bold]{escape(dataset)}[/] {change.action}: ε={_num(change.epsilon)}, "
        f"δ={_num(change.delta)}{before}; spent ε={_num(status.spent_epsilon)}, "
        f"remaining ε={_num(status.remaining_epsilon)}",
    )
