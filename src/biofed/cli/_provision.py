"""``biofed provision``: the consortium CA and one certificate kit per participant."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from biofed.cli._output import Format, FormatOption, emit, print_json

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


def kits_table(title: str, kits: "list[Kit]") -> Table:
    """The kits just issued: folder, role, name and certificate fingerprint (whole)."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("kit folder", "role", "name", "fingerprint"):
        table.add_column(column)
    for kit in kits:
        table.add_row(escape(str(kit.directory)), kit.role, escape(kit.name), kit.fingerprint)
    return table


def _kit_dict(kit: "Kit") -> dict[str, str]:
    return {
        "kit_folder": str(kit.directory),
        "role": kit.role,
        "name": kit.name,
        "fingerprint": kit.fingerprint,
    }


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
    format: FormatOption = Format.table,
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
        data = {
            "consortium": fed.name,
            "coordinator": fed.coordinator,
            "ca": str(fed.ca.directory),
            "kits": [_kit_dict(kit) for kit in kits],
        }
        emit(format, data, kits_table(escape(title), kits))
        err.print(
            f"[bold yellow]warning:[/] {escape(str(fed.ca.directory))} holds the CA's private "
            "key: move it offline; it is needed only to add, re-issue or revoke participants."
        )
        err.print(
            "Hand each kit folder to its participant over a secure channel; each holds a "
            "private key (key.pem, mode 0600)."
        )


def _add(out: Path, name: str, role: str, valid_days: int, replace: bool, fmt: Format) -> None:
    from biofed.identity import Consortium

    with _errors() as err:
        fed = Consortium.load(out)
        kit = fed.add(name, role, valid_days=valid_days, replace=replace)
        emit(fmt, _kit_dict(kit), kits_table(escape(f"consortium {fed.name!r}"), [kit]))
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
    format: FormatOption = Format.table,
) -> None:
    """Issue a certificate kit to a new site."""
    _add(out, name, "site", valid_days, replace, format)


@app.command("add-researcher")
def add_researcher_command(
    name: Annotated[str, typer.Argument(help="The new researcher's name.")],
    out: OutOption,
    valid_days: ValidDays = 365,
    replace: Replace = False,
    format: FormatOption = Format.table,
) -> None:
    """Issue a certificate kit to a new researcher."""
    _add(out, name, "researcher", valid_days, replace, format)


@app.command("add-admin")
def add_admin_command(
    name: Annotated[str, typer.Argument(help="The new administrator's name.")],
    out: OutOption,
    valid_days: ValidDays = 365,
    replace: Replace = False,
    format: FormatOption = Format.table,
) -> None:
    """Issue a certificate kit to another administrator (sees and may cancel every run)."""
    _add(out, name, "admin", valid_days, replace, format)


@app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(help="The participant to revoke.")],
    out: OutOption,
    format: FormatOption = Format.table,
) -> None:
    """Revoke a participant's certificates and re-sign the CRL."""
    fmt = format
    from biofed.identity import Consortium

    with _errors() as err:
        fed = Consortium.load(out)
        serials = fed.revoke(name)
        if not serials:
            err.print(f"{escape(repr(name))} has no unrevoked certificate: nothing to do.")
            if fmt is Format.json:
                print_json({"name": name, "revoked_serials": []})
            return
        crl = fed.ca.directory / "crl.pem"
        emit(
            fmt,
            {"name": name, "revoked_serials": [f"{s:x}" for s in serials]},
            f"revoked {escape(repr(name))}: serial {', '.join(f'{s:x}' for s in serials)}",
        )
        local = fed.directory / "coordinator" / "crl.pem"
        done = f" ({escape(str(local))} is updated)" if local.is_file() else ""
        err.print(
            f"[yellow]note:[/] copy the new {escape(str(crl))} into the running coordinator's "
            f"kit folder{done}: peers are refused only once the coordinator has it."
        )


def _row(cert: "IssuedCertificate") -> tuple[str, str, str, str, str]:
    return (
        escape(cert.name),
        cert.role,
        cert.fingerprint,
        f"{cert.not_after:%Y-%m-%d}",
        "[red]yes[/]" if cert.revoked else "no",
    )


@app.command("list")
def list_command(
    out: OutOption,
    format: FormatOption = Format.table,
) -> None:
    """List every certificate the consortium CA issued."""
    from biofed.identity import Consortium

    with _errors():
        fed = Consortium.load(out)
        certificates = fed.participants()
        table = Table(title=f"consortium {fed.name!r}", box=box.SIMPLE_HEAD, pad_edge=False)
        for column in ("name", "role", "fingerprint", "expires", "revoked"):
            table.add_column(column)
        for cert in certificates:
            table.add_row(*_row(cert))
        emit(format, [cert.to_dict() for cert in certificates], table)
