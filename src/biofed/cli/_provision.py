"""``biofed provision``: the consortium CA and one certificate kit per participant."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from biofed.identity import IssuedCertificate, Kit

app = typer.Typer(
    name="provision",
    help="Make the consortium CA and a certificate kit for every participant.",
    no_args_is_help=True,
    add_completion=False,
)

_OUT_HELP = "The consortium folder that `biofed provision init --out` created."
OutOption = Annotated[Path, typer.Option("--out", help=_OUT_HELP)]
ValidDays = Annotated[int, typer.Option(min=1, help="Days the new certificate is valid.")]
Replace = Annotated[
    bool, typer.Option(help="Re-issue an existing participant; its old certificate is revoked.")
]


@contextmanager
def _errors() -> Iterator[Console]:
    """Turn biofed and file-system errors into one red line and exit code 2."""
    from biofed.core import BiofedError

    err = Console(stderr=True, soft_wrap=True)
    try:
        yield err
    except (BiofedError, OSError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=2) from exc


def _names(text: str | None, option: str) -> list[str]:
    from biofed.core import ConfigurationError

    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    if text is not None and not names:
        raise ConfigurationError(f"{option} needs comma-separated names, got {text!r}")
    return names


def _kits_table(title: str, kits: "list[Kit]") -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("kit folder", "role", "name", "fingerprint"):
        table.add_column(column, no_wrap=True)
    for kit in kits:
        table.add_row(str(kit.directory), kit.role, kit.name, kit.fingerprint[:16] + "…")
    return table


@app.command("init")
def init_command(
    consortium: Annotated[str, typer.Option(help="Consortium name (the certificates' O).")],
    coordinator: Annotated[
        str, typer.Option(help="HOST[:PORT] that participants dial (default port 7443).")
    ],
    sites: Annotated[str, typer.Option(help="Comma-separated site names: a,b,c.")],
    out: Annotated[Path, typer.Option("--out", help="New (or empty) consortium folder.")],
    researchers: Annotated[
        str | None, typer.Option(help="Comma-separated researcher names.")
    ] = None,
    admin: Annotated[
        str,
        typer.Option(help="Name of the administrator's kit (sees and may cancel every run)."),
    ] = "admin",
    valid_days: ValidDays = 365,
) -> None:
    """Create the CA and kits for the coordinator, every site, researcher and the admin."""
    from biofed.identity import Consortium, load_kit

    with _errors() as err:
        fed = Consortium.create(
            out,
            consortium=consortium,
            coordinator=coordinator,
            sites=_names(sites, "--sites"),
            researchers=_names(researchers, "--researchers"),
            admin=admin,
            valid_days=valid_days,
        )
        kits = [load_kit(fed.kit_directory(c.name)) for c in fed.participants()]
        title = f"consortium {fed.name!r} · coordinator {fed.coordinator}"
        Console(soft_wrap=True).print(_kits_table(title, kits))
        err.print(
            f"[bold yellow]warning:[/] {escape(str(fed.ca.directory))} holds the CA's private "
            "key: move it offline; it is needed only to add, re-issue or revoke participants."
        )
        err.print(
            "Hand each kit folder to its participant over a secure channel; each holds a "
            "private key (key.pem, mode 0600)."
        )


def _add(out: Path, name: str, role: str, valid_days: int, replace: bool) -> None:
    from biofed.identity import Consortium

    with _errors() as err:
        fed = Consortium.load(out)
        kit = fed.add(name, role, valid_days=valid_days, replace=replace)
        Console(soft_wrap=True).print(_kits_table(f"consortium {fed.name!r}", [kit]))
        if replace:
            crl = escape(str(fed.ca.directory / "crl.pem"))
            err.print(
                f"[yellow]note:[/] earlier certificates of {escape(repr(name))} are revoked; "
                f"copy the new {crl} to the coordinator's kit."
            )


@app.command("add-site")
def add_site_command(
    name: Annotated[str, typer.Argument(help="The new site's name.")],
    out: OutOption,
    valid_days: ValidDays = 365,
    replace: Replace = False,
) -> None:
    """Issue a certificate kit to a new site."""
    _add(out, name, "site", valid_days, replace)


@app.command("add-researcher")
def add_researcher_command(
    name: Annotated[str, typer.Argument(help="The new researcher's name.")],
    out: OutOption,
    valid_days: ValidDays = 365,
    replace: Replace = False,
) -> None:
    """Issue a certificate kit to a new researcher."""
    _add(out, name, "researcher", valid_days, replace)


@app.command("add-admin")
def add_admin_command(
    name: Annotated[str, typer.Argument(help="The new administrator's name.")],
    out: OutOption,
    valid_days: ValidDays = 365,
    replace: Replace = False,
) -> None:
    """Issue a certificate kit to another administrator (sees and may cancel every run)."""
    _add(out, name, "admin", valid_days, replace)


@app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(help="The participant to revoke.")],
    out: OutOption,
) -> None:
    """Revoke a participant's certificates and re-sign the CRL."""
    from biofed.identity import Consortium

    with _errors() as err:
        fed = Consortium.load(out)
        serials = fed.revoke(name)
        if not serials:
            err.print(f"{escape(repr(name))} has no unrevoked certificate: nothing to do.")
            return
        crl = fed.ca.directory / "crl.pem"
        Console(soft_wrap=True).print(
            f"revoked {escape(repr(name))}: serial {', '.join(f'{s:x}' for s in serials)}"
        )
        local = fed.directory / "coordinator" / "crl.pem"
        done = f" ({escape(str(local))} is updated)" if local.is_file() else ""
        err.print(
            f"[yellow]note:[/] copy the new {escape(str(crl))} into the running coordinator's "
            f"kit folder{done}: peers are refused only once the coordinator has it."
        )


def _row(cert: "IssuedCertificate") -> tuple[str, str, str, str, str]:
    return (
        cert.name,
        cert.role,
        cert.fingerprint[:16] + "…",
        f"{cert.not_after:%Y-%m-%d}",
        "[red]yes[/]" if cert.revoked else "no",
    )


@app.command("list")
def list_command(
    out: OutOption,
    format: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List every certificate the consortium CA issued."""
    from biofed.core import ConfigurationError
    from biofed.identity import Consortium

    with _errors():
        if format not in ("table", "json"):
            raise ConfigurationError(f"--format must be table or json, got {format!r}")
        fed = Consortium.load(out)
        certificates = fed.participants()
        if format == "json":
            print(json.dumps([cert.to_dict() for cert in certificates]))
            return
        table = Table(title=f"consortium {fed.name!r}", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "role", "fingerprint", "expires", "revoked"):
            table.add_column(column, no_wrap=True)
        for cert in certificates:
            table.add_row(*_row(cert))
        Console(soft_wrap=True).print(table)
