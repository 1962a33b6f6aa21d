"""What the coordinator's dashboard shows of a run, built from what the control API returns.

Pure functions: they take a :class:`~biofed.transport.grpc.RunSummary`, the run's events
(:class:`~biofed.transport.grpc.EventInfo`, as ``watch_run`` streams them) and its round
records (:meth:`biofed.coordinator.Coordinator.run_rounds`), never the store, and return
plain values for the templates — table rows and :func:`~biofed.web.chart` specs.

Security notes
--------------
Sites name their metrics and write the reasons of their failures, and a run may last
10,000 rounds: what a page shows is bounded whatever a run holds (the newest
:data:`MAX_EVENTS` events and :data:`MAX_FAILURES` failures, :data:`MAX_CHARTS` charts
of each kind with :data:`MAX_POINTS` points each, the newest :data:`MAX_REPLY_ROUNDS`
rounds of replies), so a run's page cannot be made a denial of service for its readers or
the dashboard (OWASP ASVS 4.0 V11.1.4, anti-automation / resource limits).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from biofed.analytics import KaplanMeierResult, Result, result_from_json
from biofed.contribution import CONTRIBUTIONS_EVENT
from biofed.coordinator import PRIVACY_EVENT, RoundRecord, RunEvent, site_spend
from biofed.core import BiofedError
from biofed.transport.grpc import EventInfo, NodeSummary, RunSummary
from biofed.web._app import chart

#: Event kinds shown as failures, with their reasons.
FAILURE_EVENTS = frozenset(
    {
        "failed",
        "round_failed",
        "reply_rejected",
        "reply_late",
        "no_reply",
        "send_failed",
        "contribution_failed",
        "contributions_failed",
        "incentives_failed",
    }
)
#: Robust aggregation's decisions about a site's update (``update_<action>`` events).
DECISION_PREFIX = "update_"
#: Points a Kaplan–Meier curve is drawn at (an even time grid, so the axis is to scale).
KM_POINTS = 120
#: Training metrics that are DP bookkeeping (ε, δ, noise, clipping), shown under privacy.
PRIVATE_METRICS = ("dp.", "dp_")
#: The most events a run page lists (the newest).
MAX_EVENTS = 300
#: The most failures a run page lists (the newest; the rest are counted).
MAX_FAILURES = 100
#: The most charts of each kind (aggregated, per site) a run page draws; sites choose
#: their metrics' names, so a run may carry thousands (the rest are named in a note).
MAX_CHARTS = 24
#: The most points of one chart's line: a longer run is drawn every k-th round (the last
#: always), so a 10,000-round run makes a page of kilobytes, not tens of megabytes.
MAX_POINTS = 500
#: The most rounds the replies table shows (the newest).
MAX_REPLY_ROUNDS = 20
#: The most properties the sites page shows of one site, and the most characters of each
#: name and value (a site chooses them when it connects).
MAX_PROPERTIES = 60
MAX_TEXT = 300


def when(seconds: float) -> str:
    """A timestamp as ``2026-12-06 14:03:09 UTC`` ("" for none)."""
    if not seconds:
        return ""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def summary_of(run: RunSummary) -> dict[str, Any]:
    """The run's summary JSON as a dict (empty when unreadable)."""
    try:
        data = json.loads(run.summary_json or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True, slots=True)
class RunRow:
    """One line of the runs list."""

    run_id: str
    status: str
    owner: str
    created: str
    done: int
    total: int
    kind: str

    @property
    def percent(self) -> int:
        """Rounds done, in per cent of the planned rounds (0 when none are planned)."""
        return round(100 * self.done / self.total) if self.total else 0


def run_row(run: RunSummary) -> RunRow:
    """The runs list's line for ``run``."""
    summary = summary_of(run)
    kind = f"analysis: {summary['analysis']}" if "analysis" in summary else "training"
    if "strategy" in summary:
        kind = f"training: {summary['strategy']}"
    return RunRow(
        run_id=run.run_id,
        status=run.status,
        owner=run.owner,
        created=when(run.created_at),
        done=min(run.completed_rounds, run.total_rounds) if run.total_rounds else 0,
        total=run.total_rounds,
        kind=kind,
    )


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart of the page: its heading and its ``data-chart`` spec."""

    title: str
    spec: str
    note: str = ""


@dataclass(slots=True)
class RunView:
    """Everything the run page shows (see :func:`run_view`)."""

    row: RunRow
    error: str
    summary: dict[str, Any]
    failures: list[EventInfo]
    events: list[EventInfo]
    metric_charts: list[Chart]
    site_charts: list[Chart]
    sites: list[str]
    rounds: list[int]
    replies: dict[str, dict[int, list[tuple[str, str]]]]
    privacy: dict[str, Any] | None
    privacy_chart: Chart | None
    contributions: dict[str, Any] | None
    contribution_chart: Chart | None
    analysis_error: str = ""
    failures_total: int = 0
    charts_left: list[str] = field(default_factory=list)
    rounds_total: int = 0
    analysis_charts: list[Chart] = field(default_factory=list)
    analysis_table: tuple[list[str], list[list[str]]] | None = None
    examples: dict[str, str] = field(default_factory=dict)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _train_metrics(record: RoundRecord) -> Mapping[str, float]:
    return record.train_metrics


def _eval_metrics(record: RoundRecord) -> Mapping[str, float]:
    return record.eval_metrics


def thin(items: Sequence[Any], most: int = MAX_POINTS) -> list[Any]:
    """``items`` if there are at most ``most``, else every k-th of them and the last (a
    chart of a long run keeps its shape and its end)."""
    if len(items) <= most:
        return list(items)
    step = -(-len(items) // (most - 1))
    return [*items[: len(items) - 1 : step], items[-1]]


def metric_charts(records: Sequence[RoundRecord], left: list[str] | None = None) -> list[Chart]:
    """One line chart per aggregated metric (training, then evaluation) over the rounds;
    past :data:`MAX_CHARTS` the names of those not drawn go to ``left``."""
    records = thin(records)
    rounds = [r.round for r in records]
    charts: list[Chart] = []
    phases: tuple[tuple[str, Callable[[RoundRecord], Mapping[str, float]]], ...] = (
        ("training", _train_metrics),
        ("evaluation", _eval_metrics),
    )
    for phase, values_of in phases:
        names = sorted({k for r in records for k in values_of(r)})
        for name in names:
            if name.startswith(PRIVATE_METRICS):  # DP bookkeeping: the privacy section's
                continue
            series = [_finite(values_of(r).get(name)) for r in records]
            if all(v is None for v in series):
                continue
            if len(charts) >= MAX_CHARTS:
                if left is not None:
                    left.append(f"{name} ({phase})")
                continue
            charts.append(
                Chart(
                    f"{name} ({phase}, aggregated)",
                    chart("line", rounds, {name: series}, x_label="round", y_label=name),
                )
            )
    return charts


def site_metric_charts(
    records: Sequence[RoundRecord], left: list[str] | None = None
) -> list[Chart]:
    """One chart per evaluation metric with a line per site (rounds that were evaluated);
    past :data:`MAX_CHARTS` the names of those not drawn go to ``left``."""
    evaluated = thin([r for r in records if r.node_eval_metrics])
    if not evaluated:
        return []
    rounds = [r.round for r in evaluated]
    sites = sorted({s for r in evaluated for s in r.node_eval_metrics})
    names = sorted({k for r in evaluated for m in r.node_eval_metrics.values() for k in m})
    charts = []
    if left is not None:
        left += [f"{name} (per site)" for name in names[MAX_CHARTS:]]
    for name in names[:MAX_CHARTS]:
        series = {
            site: [_finite(r.node_eval_metrics.get(site, {}).get(name)) for r in evaluated]
            for site in sites
        }
        charts.append(
            Chart(
                f"{name} per site (evaluation)",
                chart("line", rounds, series, x_label="round", y_label=name),
            )
        )
    return charts


def replies_table(
    events: Iterable[EventInfo], sites: Iterable[str] = ()
) -> tuple[list[str], list[int], dict[str, dict[int, list[tuple[str, str]]]]]:
    """Per site and round, what became of its reply, as (label, reason) pairs: ``train
    accepted``, robust aggregation's decision (``update accepted|rejected|clipped|
    downweighted``, with its weight and reason), or the problem (``no reply``, ``reply
    rejected`` …, with the reason given)."""
    cells: dict[str, dict[int, list[tuple[str, str]]]] = {s: {} for s in sites}
    rounds: set[int] = set()
    for e in events:
        if not e.node_id or e.round <= 0:
            continue
        label, reason = None, ""
        if e.kind.endswith("_reply") and e.message == "accepted":
            label = f"{e.kind.removesuffix('_reply')} accepted"
        elif e.kind.startswith(DECISION_PREFIX):
            label, reason = _decision(e)
        elif e.kind in FAILURE_EVENTS:
            label, reason = e.kind.replace("_", " "), e.message
        if label is None:
            continue
        rounds.add(e.round)
        cell = cells.setdefault(e.node_id, {}).setdefault(e.round, [])
        if all(label != have for have, _ in cell):
            cell.append((label, reason))
    return sorted(cells), sorted(rounds), cells


def _decision(event: EventInfo) -> tuple[str, str]:
    """The label and reason of an ``update_<action>`` event (its message is the decision's
    JSON: weight, score, reason)."""
    label = f"update {event.kind.removeprefix(DECISION_PREFIX)}"
    try:
        decision = json.loads(event.message)
    except ValueError:
        return label, event.message
    if not isinstance(decision, dict):
        return label, event.message
    weight = _finite(decision.get("weight"))
    if weight is not None and event.kind != f"{DECISION_PREFIX}accepted":
        label = f"{label} (weight {weight:.2g})"
    return label, str(decision.get("reason", ""))


def privacy_chart(events: Iterable[EventInfo]) -> Chart | None:
    """ε each site reported having spent so far, over the rounds (its ``privacy_spent``
    events), or None when no site reported any."""
    spent: dict[str, dict[int, float]] = {}
    for e in events:
        if e.kind != PRIVACY_EVENT or not e.node_id:
            continue
        figures = site_spend(RunEvent(round=e.round, kind=e.kind, message=e.message))
        if figures is not None and _finite(figures["epsilon"]) is not None:
            spent.setdefault(e.node_id, {})[e.round] = float(figures["epsilon"])
    if not spent:
        return None
    rounds = thin(sorted({r for by_round in spent.values() for r in by_round}))
    series = {site: [spent[site].get(r) for r in rounds] for site in sorted(spent)}
    return Chart(
        "privacy spend per site (ε so far in the job, as each site reported it)",
        chart("line", rounds, series, x_label="round", y_label="ε"),
    )


def contributions_of(events: Iterable[EventInfo]) -> tuple[dict[str, Any] | None, Chart | None]:
    """The run's measured contributions (its last ``contributions`` event) and a bar
    chart of the sites' shares, or (None, None)."""
    texts = [e.message for e in events if e.kind == CONTRIBUTIONS_EVENT]
    if not texts:
        return None, None
    try:
        record = json.loads(texts[-1])
    except ValueError:
        return None, None
    if not isinstance(record, dict):
        return None, None
    shares = record.get("shares")
    if not isinstance(shares, dict) or not shares:
        return record, None
    sites = sorted(str(s) for s in shares)
    values = [_finite(shares[s]) for s in sites]
    return record, Chart(
        "contribution share per site",
        chart("bar", sites, {"share": values}, x_label="site", y_label="share"),
    )


def km_charts(result: KaplanMeierResult) -> list[Chart]:
    """The Kaplan–Meier curves as one stepped chart, each curve evaluated on an even time
    grid up to its last released time (nothing the disclosure rules withheld is drawn)."""
    last = max((c.tail_after or 0.0 for c in result.curves), default=0.0)
    if last <= 0:
        return []
    grid = [last * i / (KM_POINTS - 1) for i in range(KM_POINTS)]
    series: dict[str, list[float | None]] = {}
    for curve in result.curves:
        name = curve.shown_level
        if curve.tail_after is None:
            continue
        values: list[float | None] = []
        times = [float(t) for t in curve.times]
        estimate = [float(v) for v in curve.estimate]
        j, current = 0, 1.0
        for t in grid:
            while j < len(times) and times[j] <= t:
                current = estimate[j]
                j += 1
            values.append(current if t <= curve.tail_after else None)
        series[name] = values
    if not series:
        return []
    level = round(100 * (1 - result.alpha))
    return [
        Chart(
            "Kaplan–Meier survival",
            chart(
                "stepped",
                [f"{t:.4g}" for t in grid],
                series,
                x_label="time",
                y_label="survival probability",
            ),
            note=f"{result.records} records at {result.sites} sites; {level}% confidence "
            "intervals are in the table below.",
        )
    ]


def analysis_view(text: str) -> tuple[list[Chart], tuple[list[str], list[list[str]]] | None]:
    """Charts and table of an analysis result (its JSON)."""
    result: Result = result_from_json(text)
    charts = km_charts(result) if isinstance(result, KaplanMeierResult) else []
    table = getattr(result, "table", None)
    rows = table() if callable(table) else None
    return charts, rows


def run_view(
    run: RunSummary,
    events: Sequence[EventInfo],
    records: Sequence[RoundRecord],
    *,
    analysis: str | None = None,
    analysis_error: str = "",
) -> RunView:
    """The run page's content."""
    summary = summary_of(run)
    sites, rounds, cells = replies_table(events)
    privacy = summary.get("privacy") if isinstance(summary.get("privacy"), dict) else None
    contributions, contribution_chart = contributions_of(events)
    failures = [e for e in events if e.kind in FAILURE_EVENTS]
    left: list[str] = []
    view = RunView(
        row=run_row(run),
        error=run.error,
        summary=summary,
        failures=failures[-MAX_FAILURES:],
        failures_total=len(failures),
        events=list(events)[-MAX_EVENTS:],
        metric_charts=metric_charts(records, left),
        site_charts=site_metric_charts(records, left),
        charts_left=left,
        sites=sites,
        rounds=rounds[-MAX_REPLY_ROUNDS:],
        rounds_total=len(rounds),
        replies=cells,
        privacy=privacy,
        privacy_chart=privacy_chart(events),
        contributions=contributions,
        contribution_chart=contribution_chart,
        analysis_error=analysis_error,
    )
    if analysis is not None:
        try:
            view.analysis_charts, view.analysis_table = analysis_view(analysis)
        except BiofedError as exc:
            view.analysis_error = str(exc)
    return view


@dataclass(frozen=True, slots=True)
class SiteRow:
    """One line of the connected sites' page."""

    name: str
    status: str
    last_seen: str
    ago: str
    properties: list[tuple[str, str]]


def site_rows(nodes: Iterable[NodeSummary], now: float) -> list[SiteRow]:
    """The sites' page lines, by name."""
    rows = []
    for node in sorted(nodes, key=lambda n: n.node_id):
        try:
            props = json.loads(node.properties_json or "{}")
        except ValueError:
            props = {}
        if not isinstance(props, dict):
            props = {}
        pairs = [
            (k[:MAX_TEXT], v[:MAX_TEXT])
            for k, v in sorted((str(k), str(v)) for k, v in props.items())
        ]
        if len(pairs) > MAX_PROPERTIES:  # a site says what it likes when it connects
            pairs = [*pairs[:MAX_PROPERTIES], ("…", f"{len(pairs) - MAX_PROPERTIES} more")]
        seconds = max(0, int(now - node.last_seen)) if node.last_seen else None
        rows.append(
            SiteRow(
                name=node.node_id,
                status=node.status,
                last_seen=when(node.last_seen),
                ago="" if seconds is None else _ago(seconds),
                properties=pairs,
            )
        )
    return rows


def _ago(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def audit_counts(lines: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per run, how many entries of each event the coordinator's log holds for it."""
    counts: dict[str, dict[str, int]] = {}
    for entry in lines:
        data = entry.get("data")
        event = entry.get("event")
        if not isinstance(data, Mapping) or not isinstance(event, str):
            continue
        run_id = data.get("run_id")
        if isinstance(run_id, str):
            by_event = counts.setdefault(run_id, {})
            by_event[event] = by_event.get(event, 0) + 1
    return counts


def examples_of(nodes: Iterable[NodeSummary], dataset: str) -> dict[str, str]:
    """Site → the number of examples of ``dataset`` it reported when it connected."""
    key = f"dataset.{dataset}.examples"
    out = {}
    for node in nodes:
        try:
            props = json.loads(node.properties_json or "{}")
        except ValueError:
            continue
        if isinstance(props, dict) and key in props:
            out[node.node_id] = str(props[key])
    return out
