"""``biofed task …`` (pack and show task bundles) and the node operator's bundle review,
approval and revocation commands (``biofed node review / approve / revoke / approvals``)."""

import getpass
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from biofed.cli._common import call, err
from biofed.cli._output import Format, FormatOption, emit

if TYPE_CHECKING:
    from biofed.governance import Approval, ApprovalStore, Bundle

app = typer.Typer(help="Package task code as bundles named by their digest.", no_args_is_help=True)
node_bundle_app = typer.Typer(
    help="Review, approve and revoke task bundles at this site.", no_args_is_help=True
)

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
    format: FormatOption = Format.table,
) -> None:
    """Pack a task directory into a bundle; prints its digest."""
    from biofed.governance import pack_bundle

    target = out_file or directory.resolve().with_name(directory.resolve().name + ".bundle.zip")
    info = call(lambda: pack_bundle(directory, target))
    data = {
        "bundle": str(target),
        "digest": info.digest,
        "files": len(info.files),
        "bytes": info.size,
    }
    emit(
        format,
        data,
        f"packed {len(info.files)} file(s) into {escape(str(target))} ({info.size} bytes)",
        f"digest {info.digest}",
    )


@app.command("show")
def show_command(
    bundle: BundleArg,
    format: FormatOption = Format.table,
) -> None:
    """Show a bundle's digest and files (the archive is fully validated first)."""
    from biofed.governance import read_bundle

    loaded: Bundle = call(lambda: read_bundle(bundle))
    files = {p: len(b) for p, b in loaded.files.items()}
    emit(format, {"digest": loaded.digest, "files": files}, *bundle_view(loaded.digest, files))


def bundle_view(digest: str, files: dict[str, int]) -> list[str | Table]:
    """What ``task show`` prints: the digest, then each file and its size."""
    table = Table("file", "bytes")
    for path, size in files.items():
        table.add_row(escape(path), str(size))
    return [f"digest {digest}", table]


@node_bundle_app.command("review")
def review_command(bundle: BundleArg, format: FormatOption = Format.table) -> None:
    """Print a bundle's digest and its full source for a human to read before approving."""
    from biofed.governance import read_bundle

    loaded: Bundle = call(lambda: read_bundle(bundle))
    if format is Format.json:
        emit(format, {"digest": loaded.digest, "listing": loaded.source_listing()})
        return
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
        err.print(
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
    format: FormatOption = Format.table,
) -> None:
    """Approve a bundle digest at this site (recorded as bundle.approved in its audit log)."""
    who = by or getpass.getuser()
    approval = call(lambda: _store(store, kit).approve(digest, by=who, note=note))
    emit(format, _approval_dict(approval), f"approved {approval.digest} by {escape(approval.by)}")


def _approval_dict(a: "Approval") -> dict[str, str]:
    return {"digest": a.digest, "by": a.by, "note": a.note, "approved_at": a.approved_at}


@node_bundle_app.command("revoke")
def revoke_command(
    digest: DigestArg, store: StoreOpt, kit: KitOpt = None, format: FormatOption = Format.table
) -> None:
    """Withdraw this site's approval of a bundle digest (recorded as bundle.revoked)."""
    call(lambda: _store(store, kit).revoke(digest))
    emit(format, {"digest": digest, "revoked": True}, f"revoked {digest}")


@node_bundle_app.command("approvals")
def approvals_command(
    store: StoreOpt,
    format: FormatOption = Format.table,
) -> None:
    """List the bundle digests approved at this site."""
    from biofed.governance import ApprovalStore

    approvals = call(lambda: ApprovalStore(store).list())
    emit(format, [_approval_dict(a) for a in approvals], approvals_table(approvals))


def approvals_table(approvals: "Sequence[Approval]") -> Table:
    """The approved digests (whole), who approved each, when and why."""
    table = Table("digest", "by", "approved at", title="approved bundles")
    table.add_column("note", overflow="fold")  # prose: wraps between words
    for a in approvals:
        table.add_row(a.digest, escape(a.by), a.approved_at, escape(a.note))
    return table
