"""``biofed dashboard link``: a short-lived, single-use login link for a dashboard."""

from pathlib import Path
from typing import Annotated

import typer

from biofed.cli._common import clean_errors, kit_option
from biofed.cli._output import Format, FormatOption, print_json

app = typer.Typer(
    help="Log in to the coordinator's or a site's web dashboard.", no_args_is_help=True
)

#: Where ``biofed coordinator start --dashboard`` and ``biofed node dashboard`` listen by default.
COORDINATOR_URL = "http://127.0.0.1:8765"
SITE_URL = "http://127.0.0.1:8766"


def login_hint(url: str, default_url: str, kit: str) -> str:
    """The line a server prints to say how to log in to its dashboard at ``url``."""
    where = "" if url == default_url else f" --url {url}"
    return f"log in with a link from: biofed dashboard link --kit {kit}{where}"


@app.command("link")
def link_command(
    kit: Annotated[
        Path | None, typer.Option(help="Your participant kit folder (default: BIOFED_KIT).")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help=f"The dashboard's address (default: {COORDINATOR_URL} for a researcher or "
            f"admin, {SITE_URL} for a site)."
        ),
    ] = None,
    seconds: Annotated[
        int, typer.Option(help="How long the link stays valid (at most 600 s); it works once.")
    ] = 300,
    format: FormatOption = Format.table,
) -> None:
    """Print a login link signed with your kit's key: open it in a browser within its time.

    A researcher's or admin's kit logs in to the coordinator's dashboard, a site's kit to
    that site's own. Anyone holding the link can use it once until it expires: keep it to
    yourself.
    """
    import time

    from biofed.identity import load_kit
    from biofed.web import audience_of, login_url, make_login_token

    with clean_errors():
        participant = load_kit(kit_option(kit))
        token = make_login_token(participant, seconds=seconds)
        base = url or (SITE_URL if participant.role == "site" else COORDINATOR_URL)
        link = login_url(base, token)
    expires = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
    if format is Format.json:
        print_json({"url": link, "audience": audience_of(participant), "expires_in": seconds})
        return
    typer.echo(link)
    typer.echo(f"(valid once, until {expires}, for {participant.name})", err=True)
