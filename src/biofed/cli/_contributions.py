"""Rendering a run's measured contributions: a table, JSON and a bar chart.

The input is the ``contributions`` run event (:func:`biofed.contribution.run_record`'s
JSON, what the coordinator and a simulation write at a run's end) or, while a run is still
going, its rounds' ``contribution`` events. Both are read as hostile input: the ledger is
rebuilt with :meth:`~biofed.contribution.ContributionLedger.from_json` (totals recomputed,
never trusted) and every figure drawn is a checked finite number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table

    from biofed.contribution import ContributionLedger, IncentiveOutcome

#: Up to this many rounds the table has a column per round; above, a min…max column.
MAX_ROUND_COLUMNS = 5


def record_from_events(run_id: str, events: Sequence[tuple[int, str, str]]) -> tuple[str, bool]:
    """The run's contribution record and whether it is partial (the run has not ended:
    built from the rounds measured so far).

    Raises
    ------
    DataError
        The run has no measured contributions.
    """
    from biofed.contribution import (
        CONTRIBUTION_EVENT,
        CONTRIBUTIONS_EVENT,
        ledger_from_events,
        run_record,
    )
    from biofed.core import DataError

    final = [message for _, kind, message in events if kind == CONTRIBUTIONS_EVENT]
    if final:
        return final[-1], False
    if any(kind == CONTRIBUTION_EVENT for _, kind, _ in events):
        ledger, records, failed = ledger_from_events(events)
        return run_record(ledger, records, failed), True
    raise DataError(
        f"run {run_id!r} has no measured contributions (its job has no [contribution] table, "
        "or no round has been measured yet)"
    )


def round_records(events: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    """Each measured round's ``contribution`` record (its contributions, every evaluated
    coalition's value and the excluded sites), by round; the last of a round wins."""
    from biofed.contribution import ledger_from_events

    _, records, _ = ledger_from_events(events)
    return {str(r): records[r] for r in sorted(records)}


def parse_record(text: str) -> tuple[ContributionLedger, dict[str, Any]]:
    """The ledger (checked) and the whole record (for its other fields)."""
    from biofed.contribution import ledger_from_run_record

    ledger = ledger_from_run_record(text)
    data = json.loads(text)
    return ledger, data


def _flags(ledger: ContributionLedger, site: str) -> str:
    rounds = len(ledger.rounds)
    riding = sum(site in r.free_riders for r in ledger.rounds)
    twins = sorted(
        {other for r in ledger.rounds for g in r.duplicates if site in g for other in g} - {site}
    )
    out = []
    if riding:
        out.append(f"free-rider {riding}/{rounds}")
    if twins:
        out.append("copy of " + ", ".join(twins))
    return "; ".join(out)


def contributions_table(ledger: ContributionLedger, *, title: str = "") -> Table:
    """Sites by total value: the value of each round (or their range), the total, the
    share of the positive totals, and flags (free-rider rounds, near-duplicate groups)."""
    from rich.table import Table

    table = Table(title=title or "contributions", title_justify="left")
    table.add_column("site")
    rounds = ledger.rounds
    per_round = len(rounds) <= MAX_ROUND_COLUMNS
    if per_round:
        for r in rounds:
            table.add_column(f"r{r.server_round}", justify="right")
    else:
        table.add_column(f"rounds {rounds[0].server_round}-{rounds[-1].server_round}")
    table.add_column("total", justify="right")
    table.add_column("share", justify="right")
    table.add_column("flags", overflow="fold")
    totals, shares = ledger.totals(), ledger.shares()
    for site in sorted(totals, key=lambda s: (-totals[s], s)):
        values = [r.values.get(site) for r in rounds]
        if per_round:
            cells = ["—" if v is None else f"{v:+.4f}" for v in values]
        else:
            known = [v for v in values if v is not None]
            cells = [f"{min(known):+.3f} to {max(known):+.3f}" if known else "—"]
        table.add_row(
            site, *cells, f"{totals[site]:+.4f}", f"{shares[site]:.1%}", _flags(ledger, site)
        )
    return table


def summary_lines(ledger: ContributionLedger, data: dict[str, Any], *, partial: bool) -> list[str]:
    """What the table does not show: the method, v(N) per round, the cost, unmeasured
    rounds, and whether the run is still going."""
    rounds = ledger.rounds
    methods = sorted({r.method for r in rounds})
    gains = ", ".join(f"r{r.server_round} {r.total:+.4f}" for r in rounds)
    lines = [
        f"{len(rounds)} rounds measured by {', '.join(methods) or '—'}; value = gain of the "
        "trusted data's score over the round's starting model",
        f"v(N) per round: {gains}" if gains else "v(N): no round measured",
        f"cost: {ledger.evaluations} coalition evaluations, {ledger.seconds:.2f} s",
    ]
    unmeasured = data.get("unmeasured") or {}
    if isinstance(unmeasured, dict):
        for r, why in sorted(unmeasured.items(), key=lambda kv: str(kv[0])):
            lines.append(f"round {r} not measured: {why}")
    if partial:
        lines.append("the run has not ended: these are the rounds measured so far")
    return lines


def parse_outcome(data: dict[str, Any]) -> IncentiveOutcome | None:
    """The incentive policy's outcome in a record (checked), or None when none was
    applied."""
    from biofed.contribution import IncentiveOutcome

    outcome = data.get("outcome")
    if outcome is None:
        return None
    return IncentiveOutcome.from_json(json.dumps(outcome))


def outcome_table(outcome: IncentiveOutcome) -> Table:
    """Each site's figures under the study agreement's incentive policy: reward share,
    access to the final model, and whether it is flagged, with the first reason."""
    from rich.table import Table

    table = Table(
        title=f"incentive outcome ({outcome.measure}, {outcome.reward} reward)",
        title_justify="left",
    )
    table.add_column("site")
    table.add_column("reward", justify="right")
    table.add_column("access")
    table.add_column("flagged")
    table.add_column("why", overflow="fold")
    for site, figures in sorted(outcome.sites.items(), key=lambda kv: (-kv[1].reward_share, kv[0])):
        access = figures.access
        if access == "delayed" and figures.delay_days:
            access = f"delayed {figures.delay_days} d"
        elif access == "earlier_round" and figures.round is not None:
            access = f"round {figures.round} model"
        table.add_row(
            site,
            f"{figures.reward_share:.1%}",
            access,
            "free-rider" if figures.free_rider else "",
            figures.reasons[0] if figures.reasons else "",
        )
    return table


def write_chart(ledger: ContributionLedger, path: Path, *, title: str = "") -> None:
    """A bar chart of each site's total value (PNG, no metadata beyond the image)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    totals = ledger.totals()
    sites = sorted(totals, key=lambda s: (-totals[s], s))
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        figure = Figure(figsize=(max(4.0, 0.7 * len(sites) + 2), 3.5))
        axes = figure.add_subplot()
        values = [totals[s] for s in sites]
        colours = ["#b22222" if v < 0 else "#4682b4" for v in values]
        axes.bar(range(len(sites)), values, color=colours)
        axes.set_xticks(range(len(sites)), sites, rotation=30, ha="right")
        axes.axhline(0.0, color="#444", linewidth=0.8)
        axes.set_ylabel("total value (trusted score gain)")
        axes.set_title(title or "contributions")
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})
