"""``biofed run …``: what a researcher does with runs (submit, status, logs, cancel, result).

Every command dials the coordinator named in the kit's ``kit.toml`` unless ``--coordinator
HOST:PORT`` names another address; the coordinator's certificate is then still checked
against the consortium CA and the host name the kit records.
"""

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import RenderableType
from rich.table import Table

from biofed.cli._common import call, kit_option
from biofed.cli._output import Format, FormatOption, console, emit, fit, print_json
from biofed.cli._render import rounds_text, run_headline, status_text

if TYPE_CHECKING:
    from biofed.coordinator import RunSpec
    from biofed.transport.grpc import ControlClient, RunSummary

app = typer.Typer(help="Submit and follow runs on the coordinator.", no_args_is_help=True)

KitOpt = Annotated[Path | None, typer.Option("--kit", help="Your kit folder (or BIOFED_KIT).")]
CoordinatorOpt = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        metavar="HOST:PORT",
        help="The coordinator's address (default: the one in your kit.toml).",
    ),
]


def _host(address: str) -> str:
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _check_address(address: str) -> str:
    from biofed.core import ConfigurationError

    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigurationError(f"--coordinator must look like HOST:PORT, got {address!r}")
    return address.strip()


def control_client(kit: Path | None, coordinator: str | None = None) -> "ControlClient":
    """A ControlService client with the kit in ``--kit`` (or ``BIOFED_KIT``), dialling
    ``coordinator`` if given (TLS still expects the host name of the kit's coordinator)."""
    from biofed.coordinator import tls_of
    from biofed.identity import load_kit
    from biofed.transport.grpc import ControlClient

    loaded = call(lambda: load_kit(kit_option(kit)))
    if coordinator is None:
        return ControlClient(loaded.coordinator, tls_of(loaded))
    target = call(lambda: _check_address(coordinator))
    return ControlClient(target, tls_of(loaded), server_name=_host(loaded.coordinator))


def _as_dict(run: "RunSummary") -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "status": run.status,
        "owner": run.owner,
        "completed_rounds": run.completed_rounds,
        "total_rounds": run.total_rounds,
        "error": run.error or None,
        "summary": json.loads(run.summary_json or "{}"),
    }


@app.command("submit")
def submit(
    job: Annotated[Path, typer.Argument(help="job.toml")],
    kit: KitOpt = None,
    follow: Annotated[bool, typer.Option(help="Stream the run's events until it ends.")] = False,
    bundle: Annotated[
        Path | None, typer.Option(help="The task bundle the job names ([run] bundle).")
    ] = None,
    agreement: Annotated[
        Path | None,
        typer.Option(
            help="The signed study agreement to run under: sent with the job, it sets "
            "[run] agreement to its id, and the researchers it names may see the run."
        ),
    ] = None,
    certificates: Annotated[
        Path | None,
        typer.Option(
            help="Folder with the agreement's signers' certificates, as <name>/cert.pem or "
            "<name>.pem (default: the folder holding your kit, as provision init lays it out)."
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the new run id.")
    ] = False,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
) -> None:
    """Submit a job file (and its task bundle and study agreement); prints the new run id.
    An analysis job (``[analysis]``) runs a federated query: see ``biofed analyze``."""
    from biofed.coordinator import AnalysisJob, job_from_file

    spec = call(lambda: job_from_file(job))
    data = b""
    if bundle is not None:
        data = call(lambda: _read_bytes(bundle))
    signed, certs = b"", dict[str, bytes]()
    if agreement is not None:
        kit_dir = kit_option(kit)
        spec, signed, certs = call(
            lambda: _with_agreement(spec, agreement, certificates or kit_dir.resolve().parent)
        )
    with control_client(kit, coordinator) as client:
        run = call(
            lambda: client.submit_run(
                spec.to_json(), bundle=data, agreement=signed, certificates=certs
            )
        )
        if quiet:
            print(run.run_id)
        elif format is Format.json:
            print_json(_as_dict(run))
        else:
            what = (
                f"a {spec.query.kind} query"
                if isinstance(spec, AnalysisJob)
                else f"{spec.strategy}, {spec.rounds} rounds"
            )
            console().print(f"submitted [bold]{run.run_id}[/] ({what})")
        if follow:
            _follow(client, run.run_id, format)


def _with_agreement(
    spec: "RunSpec", file: Path, certificates: Path
) -> "tuple[RunSpec, bytes, dict[str, bytes]]":
    """The job under the agreement in ``file``, the file's bytes and its signers'
    certificates found in ``certificates`` (public material: the coordinator checks each
    against the consortium CA and the fingerprint the agreement lists)."""
    from biofed.core import ConfigurationError
    from biofed.governance import read_agreement

    data = _read_bytes(file)
    signed = read_agreement(file)
    agreement_id = signed.agreement.agreement_id
    if spec.agreement not in (None, agreement_id):
        raise ConfigurationError(
            f"the job names agreement {spec.agreement!r} ([run] agreement), but {file} is "
            f"agreement {agreement_id!r}"
        )
    certs: dict[str, bytes] = {}
    for party in signed.agreement.signers:
        for candidate in (
            certificates / party.name / "cert.pem",
            certificates / f"{party.name}.pem",
        ):
            if candidate.is_file():
                certs[party.name] = _read_bytes(candidate)
                break
    return dataclasses.replace(spec, agreement=agreement_id), data, certs


def _read_bytes(path: Path) -> bytes:
    from biofed.core import ConfigurationError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc


def _follow(client: "ControlClient", run_id: str, fmt: Format = Format.table) -> None:
    for event in client.watch_run(run_id, follow=True):
        if fmt is Format.json:  # one JSON document per line (JSON Lines) while it streams
            print_json(
                _event_dict(event.seq, event.round, event.kind, event.node_id, event.message)
            )
        else:
            _print_event(event.seq, event.round, event.kind, event.node_id, event.message)


def _event_dict(seq: int, rnd: int, kind: str, node: str, message: str) -> dict[str, object]:
    return {"seq": seq, "round": rnd, "kind": kind, "node": node or None, "message": message}


#: Run events whose message is a JSON document, shown by its size only.
_DOCUMENT_EVENTS = {
    "preprocessing_fitted": "the fitted preprocessing; it travels with the model's result",
    "data_summaries": "the sites' summaries; see `biofed report heterogeneity`",
}


def _print_event(seq: int, rnd: int, kind: str, node: str, message: str) -> None:
    who = f" {node}" if node else ""
    if kind in _DOCUMENT_EVENTS:
        message = f"{_DOCUMENT_EVENTS[kind]} ({len(message)} characters of JSON)"
    console().print(f"[dim]{seq:>5}[/] round {rnd:<3} [bold]{kind}[/]{who}: {message}")


@app.command("status")
def status(
    run_id: Annotated[str | None, typer.Argument(help="A run id; all runs if omitted.")] = None,
    kit: KitOpt = None,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
) -> None:
    """Status of one run or of all the runs you may see."""
    with control_client(kit, coordinator) as client:
        runs = [call(lambda: client.get_run(run_id))] if run_id else call(client.list_runs)
    data = [_as_dict(r) for r in runs] if run_id is None else _as_dict(runs[0])
    emit(format, data, *status_view(runs, one=run_id is not None))


def status_view(runs: "list[RunSummary]", *, one: bool) -> list[RenderableType]:
    """What ``run status`` prints: the runs table, and for one run its headline, problems,
    per-site evaluation and privacy spend."""
    from biofed.cli._render import privacy_renderables

    shown: list[RenderableType] = []
    table = Table(title="runs")
    for col in ("run", "status", "owner", "rounds", "metrics", "error"):
        table.add_column(col, overflow="fold" if col in ("metrics", "error") else "ellipsis")
    for r in runs:
        summary = json.loads(r.summary_json or "{}")
        metrics = summary.get("evaluation", {}).get("metrics", {})
        text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None)
        rounds = rounds_text(summary, r.completed_rounds, r.total_rounds)
        table.add_row(r.run_id, status_text(r.status), r.owner, rounds, text, r.error)
    summary = json.loads(runs[0].summary_json or "{}") if one and runs else {}
    headline = (
        run_headline(summary, runs[0].completed_rounds, runs[0].total_rounds) if summary else None
    )
    if headline:  # failed rounds are said before any metric
        shown.append(headline)
    shown.append(fit(table))
    for problem in summary.get("problems", []):
        shown.append(
            f"[yellow]round {problem['round']} {problem['node'] or ''} {problem['kind']}:[/] "
            f"{problem['message']}"
        )
    sites = summary.get("evaluation", {}).get("sites", {})
    if sites:
        per_site = Table(title="per-site evaluation")
        names = sorted({k for m in sites.values() for k in m})
        per_site.add_column("site")
        for n in names:
            per_site.add_column(n, justify="right")
        for site, m in sorted(sites.items()):
            per_site.add_row(
                site, *[f"{m.get(n):.4f}" if m.get(n) is not None else "—" for n in names]
            )
        shown.append(fit(per_site))
    if summary.get("privacy"):
        shown.extend(privacy_renderables(summary["privacy"]))
    return shown


@app.command("logs")
def logs(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    kit: KitOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming until the run ends.")
    ] = False,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
) -> None:
    """A run's event log (with ``--follow --format json``: one JSON document per event and
    line, as JSON Lines)."""
    with control_client(kit, coordinator) as client:
        if follow:
            call(lambda: _follow(client, run_id, format))
            return
        events = call(lambda: list(client.watch_run(run_id)))
    if format is Format.json:
        print_json([_event_dict(e.seq, e.round, e.kind, e.node_id, e.message) for e in events])
        return
    for e in events:
        _print_event(e.seq, e.round, e.kind, e.node_id, e.message)


@app.command("cancel")
def cancel(
    run_id: Annotated[str, typer.Argument()],
    kit: KitOpt = None,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
) -> None:
    """Stop a run at once: its current round is abandoned and the sites drop it."""
    with control_client(kit, coordinator) as client:
        run = call(lambda: client.cancel_run(run_id))
    emit(format, _as_dict(run), f"{run.run_id}: {run.status} (cancel requested)")


@app.command("result")
def result(
    run_id: Annotated[str, typer.Argument()],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write model.safetensors.")],
    kit: KitOpt = None,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
) -> None:
    """Download a finished run's model (safetensors)."""
    with control_client(kit, coordinator) as client:
        data = call(lambda: client.download_result(run_id))
    tmp = out_path.with_suffix(out_path.suffix + f".part{time.time_ns()}")
    tmp.write_bytes(data)
    tmp.replace(out_path)
    print(f"wrote {out_path} ({len(data)} bytes)", file=sys.stderr)
    if format is Format.json:
        print_json({"run_id": run_id, "path": str(out_path), "bytes": len(data)})


@app.command("contributions")
def contributions(
    run_id: Annotated[str, typer.Argument(help="The run.")],
    kit: KitOpt = None,
    coordinator: CoordinatorOpt = None,
    format: FormatOption = Format.table,
    chart: Annotated[
        Path | None, typer.Option("--chart", help="Also draw the totals as a PNG bar chart.")
    ] = None,
) -> None:
    """Each site's measured contribution to a run (a job with [contribution]): its value
    in every round, its total and its share; JSON holds each round's record too (every
    coalition's value, so a site can recompute its figure)."""
    from biofed.cli._contributions import (
        contributions_table,
        outcome_table,
        parse_outcome,
        parse_record,
        record_from_events,
        round_records,
        summary_lines,
        write_chart,
    )

    with control_client(kit, coordinator) as client:
        events = call(lambda: list(client.watch_run(run_id)))
    text, partial = call(
        lambda: record_from_events(run_id, [(e.round, e.kind, e.message) for e in events])
    )
    ledger, data = call(lambda: parse_record(text))
    outcome = call(lambda: parse_outcome(data))
    if chart is not None:
        call(lambda: write_chart(ledger, chart, title=f"contributions to {run_id}"))
        print(f"wrote {chart}", file=sys.stderr)
    rounds = round_records([(e.round, e.kind, e.message) for e in events])
    whole = {**data, "run_id": run_id, "partial": partial, "rounds": rounds}
    shown: list[RenderableType] = [contributions_table(ledger, title=f"contributions to {run_id}")]
    shown.extend(summary_lines(ledger, data, partial=partial))
    if outcome is not None:  # the study agreement's [incentives] applied to the ledger
        shown.append(outcome_table(outcome))
    emit(format, whole, *shown)
