"""``biofed audit``: verify a participant's audit log and reconcile logs with each other.

Exit codes: 0 the log(s) check out, 1 a log is bad, a certificate is refused or the logs
disagree, 2 a usage or configuration error (a file that cannot be read).
"""

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import RenderableType
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import clean_errors, err
from biofed.cli._output import Format, FormatOption, emit, fit, print_json

if TYPE_CHECKING:
    from biofed.governance import AnchorReport, ReconcileReport

app = typer.Typer(
    name="audit",
    help="Check tamper-evident audit logs (audit.jsonl) and reconcile them.",
    no_args_is_help=True,
    add_completion=False,
)

_CERT_HELP = "The writer's certificate (default: cert.pem next to the log)."
_CA_HELP = "The consortium CA certificate (default: ca.pem next to the log); prefer your own."


def _refused(exc: Exception) -> typer.Exit:
    err.print(f"[bold red]FAILED:[/] {escape(str(exc))}")
    return typer.Exit(code=1)


@app.command("verify")
def verify_command(
    log: Annotated[Path, typer.Argument(help="The audit log, e.g. site-a/audit.jsonl.")],
    cert: Annotated[Path | None, typer.Option("--cert", help=_CERT_HELP)] = None,
    ca: Annotated[Path | None, typer.Option("--ca", help=_CA_HELP)] = None,
    writer: Annotated[
        str | None, typer.Option("--writer", help="Whose log it must be (certificate name).")
    ] = None,
    against: Annotated[
        list[Path] | None,
        typer.Option(
            "--against",
            help="The other party's log (the coordinator's for a node's log, a node's for the "
            "coordinator's): LOG must still hold every head of it recorded there. Repeatable.",
        ),
    ] = None,
    expect_head: Annotated[
        list[str] | None,
        typer.Option(
            "--expect-head",
            help="A head LOG must hold ('SEQ:HASH' or 'HASH', as this command prints it). "
            "Repeatable.",
        ),
    ] = None,
    format: FormatOption = Format.table,
) -> None:
    """Check the chain, hashes and signatures of LOG; name the first bad entry.

    With --against or --expect-head, also report a LOG that ends before (or differs at) a
    head the other party recorded: a truncated or rewritten log.
    """
    from biofed.core import PolicyViolation
    from biofed.governance import AuditSource, check_against, check_expected_head, verify_log

    checks: list[AnchorReport] = []
    with clean_errors():
        source = AuditSource.beside(log, cert=cert, ca=ca)
        try:
            report = verify_log(source.path, source.cert_pem, source.ca_pem, writer=writer)
            peers = [check_against(source, AuditSource.beside(o, ca=ca)) for o in against or ()]
            checks += peers
            for head in expect_head or ():
                checks.append(check_expected_head(source, head))
        except PolicyViolation as exc:
            raise _refused(exc) from exc
    problems = [line for check in checks for line in check.problems]
    if format is Format.json:
        print_json(
            {
                "ok": report.ok and not problems,
                "log": dataclasses.asdict(report),
                "checks": [dataclasses.asdict(check) for check in checks],
                "problems": problems,
            }
        )
        if not report.ok or problems:
            raise typer.Exit(code=1)
        return
    if not report.ok:
        print(f"FAILED at entry {report.first_bad}: {report.reason}")
        print(f"({report.entries} entries before it verified; writer {report.writer})")
    for line in problems:
        print(f"FAILED: {line}")
    if not report.ok or problems:
        raise typer.Exit(code=1)
    print(f"OK: {report.entries} entries, written and signed by {report.writer}")
    for check in checks:
        latest = "" if check.latest is None else f", the furthest at entry {check.latest.seq}"
        print(f"holds the {check.anchors} head(s) recorded by {check.witness}{latest}")
        anchored = 0 if check.latest is None else check.latest.seq
        if check in peers and anchored < report.entries:
            print(
                f"  entries {anchored + 1}-{report.entries} came after the last head "
                f"{check.witness} recorded: their removal shows only against a head kept "
                "elsewhere (--expect-head with the head below)"
            )
    print(f"head {report.entries}:{report.head}" if report.entries else f"head {report.head}")


@app.command("reconcile")
def reconcile_command(
    coordinator_log: Annotated[Path, typer.Argument(help="The coordinator's audit log.")],
    node_logs: Annotated[list[Path], typer.Argument(help="One or more nodes' audit logs.")],
    ca: Annotated[Path | None, typer.Option("--ca", help="One CA for every log (pinned).")] = None,
    run_id: Annotated[str | None, typer.Option("--run", help="Only this run.")] = None,
    output: FormatOption = Format.table,
) -> None:
    """Match what each node says it sent with what the coordinator says it received."""
    from biofed.core import PolicyViolation
    from biofed.governance import AuditLogError, AuditSource, reconcile

    with clean_errors():
        sources = [AuditSource.beside(path, ca=ca) for path in [coordinator_log, *node_logs]]
        try:
            report = reconcile(sources[0], sources[1:], run_id=run_id)
        except (AuditLogError, PolicyViolation) as exc:
            raise _refused(exc) from exc
    emit(output, {"ok": report.ok, **dataclasses.asdict(report)}, *reconcile_view(report))
    if not report.ok:
        raise typer.Exit(code=1)


def reconcile_view(report: "ReconcileReport") -> list[RenderableType]:
    """What ``audit reconcile`` prints: one row per payload (digests whole), then findings."""
    table = Table(title=f"coordinator {report.coordinator}", box=box.SIMPLE_HEAD)
    for column in ("status", "run", "round", "node", "kind", "sent", "received"):
        table.add_column(column)

    def side(digest: str | None, size: int | None) -> str:
        return "-" if digest is None else f"{digest} ({size} B)"

    rows = [("ok", p.sent, p.sent, p.received) for p in report.matched]
    rows += [
        ("MISMATCH " + ",".join(p.differs), p.sent, p.sent, p.received) for p in report.mismatched
    ]
    for status, key, sent, got in rows:
        table.add_row(
            status,
            key.run_id,
            str(key.round),
            key.node_id,
            key.kind,
            side(sent.payload_sha256, sent.bytes),
            side(got.payload_sha256, got.bytes),
        )
    for item in report.sent_not_received:
        table.add_row(
            "NOT RECEIVED",
            item.run_id,
            str(item.round),
            item.node_id,
            item.kind,
            side(item.payload_sha256, item.bytes),
            "-",
        )
    for item in report.received_not_sent:
        table.add_row(
            "NOT SENT",
            item.run_id,
            str(item.round),
            item.node_id,
            item.kind,
            "-",
            side(item.payload_sha256, item.bytes),
        )
    shown: list[RenderableType] = [fit(table)]
    shown += [f"[red]invalid:[/] {escape(line)}" for line in report.invalid]
    shown += [f"[red]missing:[/] {escape(line)}" for line in report.missing]
    if report.unchecked_nodes:
        shown.append(f"no log given for: {', '.join(report.unchecked_nodes)}")
    problems = len(report.mismatched) + len(report.sent_not_received)
    problems += len(report.received_not_sent) + len(report.invalid) + len(report.missing)
    verdict = "OK" if report.ok else f"FAILED: {problems} problem(s)"
    shown.append(
        f"{verdict}; {len(report.matched)} payload(s) matched across {len(report.nodes)} node(s)"
    )
    return shown
