"""The last screen of ``biofed demo``: what ran and how it went, read by a person at 80
columns, then what to run next.

Every id (the run id, the agreement, the bundle and study digests) is printed whole, each on
a line of its own that fits 80 columns; the per-site table holds only short names and numbers.
The commands in "what next" are printed with soft wrapping, so that a long folder name is
never broken inside a command a person copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

#: Where the dashboard of the hint listens (the coordinator's ``--dashboard`` option).
DASHBOARD = "127.0.0.1:8765"


def _number(value: Any, digits: int = 4) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "—"


def _mean(values: Sequence[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _facts(rows: Sequence[tuple[str, str]]) -> Table:
    """Label/value lines: the label column is narrow, values wrap at spaces under themselves."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True, min_width=10)
    grid.add_column()
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _audit_cell(audit: Mapping[str, Any], name: str) -> str:
    log = audit.get(name)
    if log is None:
        return "[red]missing[/]"
    if log.get("ok"):
        return f"[green]ok[/] · {log.get('entries', 0)} entries"
    return f"[red]FAILED[/] · {log.get('entries', 0)} entries"


def _site_table(result: Mapping[str, Any], sites: Sequence[str], data: str) -> Table:
    audit = result.get("audit", {})
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("site", no_wrap=True)
    if data == "omop":
        compare = result.get("comparison", {}).get("sites", {})
        table.add_column("train/test", justify="right", no_wrap=True)
        for name in ("federated", "local only", "pooled"):
            table.add_column(name, justify="right", no_wrap=True)
        table.add_column("audit log", no_wrap=True)
        keys = ("federated", "local", "pooled")
        for site in sites:
            row = compare.get(site, {})
            size = f"{row['train']}/{row['test']}" if row else "—"
            table.add_row(
                site, size, *(_number(row.get(k)) for k in keys), _audit_cell(audit, site)
            )
        means = [_number(_mean([compare.get(s, {}).get(k) for s in sites])) for k in keys]
        table.add_row("mean", "", *means, "", style="bold cyan")
        return table
    from biofed.datasets import TCGA_BRCA_REGIONS

    summary = result.get("summary", {})
    scores = summary.get("evaluation", {}).get("sites", {})
    spent = (summary.get("privacy") or {}).get("sites", {})
    table.add_column("region", no_wrap=True)
    table.add_column("test C-index", justify="right", no_wrap=True)
    table.add_column("ε (ledger)", justify="right", no_wrap=True)
    table.add_column("audit log", no_wrap=True)
    values = []
    for k, site in enumerate(sites):
        value = scores.get(site, {}).get("c_index")
        values.append(value)
        region = TCGA_BRCA_REGIONS[k] if k < len(TCGA_BRCA_REGIONS) else ""
        epsilon = spent.get(site, {}).get("epsilon")
        table.add_row(site, region, _number(value), _number(epsilon, 2), _audit_cell(audit, site))
    table.add_row("mean", "", _number(_mean(values)), "", "", style="bold cyan")
    return table


def _privacy_line(result: Mapping[str, Any]) -> str:
    privacy = result.get("summary", {}).get("privacy")
    if not privacy:
        return "no DP; secure aggregation: the coordinator saw only the sum of the updates"
    g = privacy.get("guarantee", {})
    target = g.get("target_epsilon")
    goal = f"target ε {target:g}" if isinstance(target, int | float) else "a fixed noise"
    labels = {str(s.get("guarantee", "unlabelled")) for s in privacy.get("sites", {}).values()}
    if not labels:
        kind = "none recorded"
    elif labels <= {"exact", "bounded"}:
        kind = "a guarantee"
    else:
        kind = "NOT shown to be a guarantee"
    return (
        f"DP-SGD at every site ({goal}, δ {g.get('delta', 0):g}, {g.get('accountant')}) "
        f"and secure aggregation; ε: what each site's own ledger recorded, {kind}"
    )


def _audit_line(result: Mapping[str, Any], sites: Sequence[str]) -> str:
    audit = {k: v for k, v in result.get("audit", {}).items() if k != "reconcile"}
    failed = [name for name, log in audit.items() if not log.get("ok")]
    entries = sum(int(log.get("entries", 0)) for log in audit.values())
    who = f"{len(sites)} sites" + (" and the coordinator" if "coordinator" in audit else "")
    if failed:
        reasons = "; ".join(f"{n}: {audit[n].get('reason', 'not verified')}" for n in failed)
        return f"[red]FAILED[/] for {escape(reasons)}"
    return f"[green]verified[/]: {len(audit)} signed logs ({who}), {entries} entries"


def _reconcile_line(result: Mapping[str, Any]) -> str | None:
    reconciled = result.get("audit", {}).get("reconcile")
    if reconciled is None:
        return None
    if reconciled.get("ok"):
        return (
            f"[green]ok[/]: {reconciled.get('entries', 0)} payloads the sites sent = what "
            "the coordinator received"
        )
    return "[red]MISMATCH[/] between the sites' and the coordinator's audit logs"


def _processes_line(codes: Mapping[str, int]) -> str:
    bad = {name: code for name, code in codes.items() if code != 0}
    nodes = len([n for n in codes if n != "coordinator"])
    if not bad:
        return f"[green]stopped cleanly[/]: the coordinator and {nodes} nodes"
    listed = ", ".join(f"{name} exited {code}" for name, code in bad.items())
    return f"[red]{escape(listed)}[/] (see the logs folder)"


def summary(
    result: Mapping[str, Any],
    *,
    data: str,
    sites: Sequence[str],
    rounds: int,
    strategy: str,
) -> RenderableType:
    """The demo's result for a person: the run, the per-site table, privacy, the audit."""
    status = str(result.get("status", "unknown"))
    style = "green" if status == "finished" else "red"
    done = result.get("rounds", 0)
    failed = int(result.get("summary", {}).get("rounds", {}).get("failed", 0) or 0)
    head = Text.assemble(
        ("biofed demo: ", "bold"),
        (status.replace("_", " "), f"bold {style}"),
        f" · {done} of {rounds} round{'' if rounds == 1 else 's'}",
        (f" ({failed} failed)" if failed else "", "bold red"),
        f" · {len(sites)} sites over mutual TLS",
    )
    facts: list[tuple[str, str]] = [("run id", escape(str(result.get("run_id"))))]
    if data == "omop":
        study = result.get("study", {})
        facts.append(
            (
                "model",
                f"logistic model of GI bleeding after a new NSAID ({escape(strategy)}), "
                f"compiled by each site from its OMOP CDM with the study spec "
                f"{escape(str(study.get('name')))}",
            )
        )
        facts.append(("study spec", escape(str(study.get("digest")))))
    else:
        facts.append(
            (
                "model",
                f"piecewise-exponential survival model ({escape(strategy)}) on "
                "Fed-TCGA-BRCA, each site holding only its own region",
            )
        )
    agreement = result.get("agreement", {})
    state = "[green]in force[/]" if agreement.get("in_force") else "[red]not in force[/]"
    signers = len(agreement.get("signed_by", []))
    facts.append(
        ("agreement", f"{escape(str(agreement.get('id')))}: {state}, signed by {signers} parties")
    )
    facts.append(("bundle", escape(str(result.get("bundle")))))
    after = [("privacy", _privacy_line(result)), ("audit", _audit_line(result, sites))]
    reconciled = _reconcile_line(result)
    if reconciled:
        after.append(("reconciled", reconciled))
    after.append(("processes", _processes_line(result.get("processes", {}))))
    title = "test C-index per site" if data == "tcga" else "test ROC AUC per site"
    return Group(
        head,
        _facts(facts),
        Text(""),
        Text(title, style="bold"),
        _site_table(result, sites, data),
        Text(""),
        _facts(after),
    )


def next_steps(
    result: Mapping[str, Any], *, data: str, sites: Sequence[str], kept: Path | None
) -> list[str]:
    """What to run next, one command a line (``$ `` marks a command)."""
    run_id = str(result.get("run_id")) if kept is not None else ""  # a new run has a new id
    again = "biofed demo" + (" --data omop" if data == "omop" else "")
    lines: list[str] = []
    if kept is None:
        lines.append(
            f"This folder was removed: run `{again} --keep` (or --workdir DIR) to keep "
            "the consortium, its logs and the run's state, then look at the run:"
        )
        folder = "DIR"
    else:
        lines.append(
            "Kept: the consortium, each process's log (logs/), the run's state and its "
            "report (demo.json). To look at the run again:"
        )
        folder = str(kept)
    lines += [
        f"$ cd {folder}",
        "$ biofed coordinator start --kit consortium/coordinator \\",
        f"    --state sqlite:///state.db --dashboard {DASHBOARD}",
        "then, in another terminal, log in to its dashboard with a one-time link:",
        "$ biofed dashboard link --kit consortium/researcher",
        "or ask it on the command line:",
        f"$ biofed run status {run_id} --kit consortium/researcher".replace("  ", " "),
        f"$ biofed audit verify consortium/{sites[0]}/audit.jsonl",
        "Docs: README.md and the documentation site (docs/, `mkdocs serve`).",
    ]
    return lines


def print_summary(
    out: Console,
    result: Mapping[str, Any],
    *,
    data: str,
    sites: Sequence[str],
    rounds: int,
    strategy: str,
    kept: Path | None,
) -> None:
    """Print :func:`summary` and :func:`next_steps` on ``out``."""
    out.print(summary(result, data=data, sites=sites, rounds=rounds, strategy=strategy))
    out.print()
    out.print("[bold]What next[/]")
    for line in next_steps(result, data=data, sites=sites, kept=kept):
        if line.startswith(("$ ", "    ")):
            out.print(Text(f"  {line}", style="cyan"), soft_wrap=True)
        else:
            out.print(Padding(Text(line), (0, 0, 0, 2)))
