"""``biofed task …`` (pack and show task bundles) and the node operator's bundle review,
approval and revocation commands (``biofed node review / approve / revoke / approvals``)."""

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import call

if TYPE_CHECKING:
    from biofed.governance import ApprovalStore, Bundle

app = typer.Typer(help="Package task code as bundles named by their digest.", no_args_is_help=True)
node_bundle_app = typer.Typer(
    help="Review, approve and revoke task bundles at this site.", no_args_is_help=True
)
out = Console()

StoreOpt = Annotated[
    Path, typer.Option("--store", help="The site's approvals file, e.g. NODE/approvals.json.")
]
DigestArg = Annotated[str, typer.Argument(help="The bundle's SHA-256 digest (64 hex characters).")]
BundleArg = Annotated[Path, typer.Argument(help="The bundle file.")]


@app.command("pack")
def pack_command(
    directory: Annotated[Path, typer.Argument(help="Task directory holding task.py.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Bundle file (default: DIR.bundle.zip).")
    ] = None,
) -> None:
    """Pack a task directory into a bundle; prints its digest."""
    from biofed.governance import pack_bundle

    target = out_file or directory.resolve().with_name(directory.resolve().name + ".bundle.zip")
    info = call(lambda: pack_bundle(directory, target))
    out.print(f"packed {len(info.files)} file(s) into {escape(str(target))} ({info.size} bytes)")
    out.print(f"digest {info.digest}", highlight=False)


@app.command("show")
def show_command(
    bundle: BundleArg,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Show a bundle's digest and files (the archive is fully validated first)."""
    from biofed.governance import read_bundle

    loaded: Bundle = call(lambda: read_bundle(bundle))
    if format == "json":
        files = {p: len(b) for p, b in loaded.files.items()}
        typer.echo(json.dumps({"digest": loaded.digest, "files": files}, indent=2))
        return
    out.print(f"digest {loaded.digest}", highlight=False)
    table = Table("file", "bytes")
    for path, data in loaded.files.items():
        table.add_row(escape(path), str(len(data)))
    out.print(table)


@node_bundle_app.command("review")
def review_command(bundle: BundleArg) -> None:
    """Print a bundle's digest and its full source for a human to read before approving."""
    from biofed.governance import read_bundle

    loaded: Bundle = call(lambda: read_bundle(bundle))
    # Plain output (no Rich markup or highlighting): the reviewer sees the exact bytes.
    typer.echo(loaded.source_listing())
    typer.echo(f"to approve this exact code: biofed node approve {loaded.digest} --store FILE")


KitOpt = Annotated[
    Path | None,
    typer.Option(
        "--kit",
        help="The site's kit, whose signed audit log records the decision (default: the "
        "folder of --store, when it is a kit).",
    ),
]


def _store(store: Path, kit: Path | None) -> "ApprovalStore":
    """The approvals file with the site's audit log: the log is what the node believes."""
    from biofed.core import ConfigurationError
    from biofed.governance import LOG_FILE, ApprovalStore, AuditLog, AuditSigner
    from biofed.identity import load_kit

    folder = kit or store.parent
    if not ((folder / "kit.toml").is_file() and (folder / "key.pem").is_file()):
        if kit is not None:
            raise ConfigurationError(f"{kit} is not a participant kit (no kit.toml and key.pem)")
        out.print(
            "[yellow]warning:[/] not recorded in a signed audit log (no kit next to the "
            "store; pass --kit): a governed node will not accept this approval"
        )
        return ApprovalStore(store)
    log = AuditLog(folder / LOG_FILE, AuditSigner.from_kit(load_kit(folder)))
    return ApprovalStore(store, audit=log)


@node_bundle_app.command("approve")
def approve_command(
    digest: DigestArg,
    store: StoreOpt,
    note: Annotated[str, typer.Option("--note", help="Why, ticket number…")] = "",
    by: Annotated[
        str | None, typer.Option("--by", help="Who approves (default: the OS user).")
    ] = None,
    kit: KitOpt = None,
) -> None:
    """Approve a bundle digest at this site (recorded as bundle.approved in its audit log)."""
    who = by or getpass.getuser()
    approval = call(lambda: _store(store, kit).approve(digest, by=who, note=note))
    out.print(f"approved {approval.digest} by {escape(approval.by)}", highlight=False)


@node_bundle_app.command("revoke")
def revoke_command(digest: DigestArg, store: StoreOpt, kit: KitOpt = None) -> None:
    """Withdraw this site's approval of a bundle digest (recorded as bundle.revoked)."""
    call(lambda: _store(store, kit).revoke(digest))
    out.print(f"revoked {digest}", highlight=False)


@node_bundle_app.command("approvals")
def approvals_command(
    store: StoreOpt,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List the bundle digests approved at this site."""
    from biofed.governance import ApprovalStore

    approvals = call(lambda: ApprovalStore(store).list())
    if format == "json":
        rows = [
            {"digest": a.digest, "by": a.by, "note": a.note, "approved_at": a.approved_at}
            for a in approvals
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("digest", "by", "approved at", "note")
    for a in approvals:
        table.add_row(a.digest, escape(a.by), a.approved_at, escape(a.note))
    out.print(table)
