"""``biofed node dashboard``: serve the site operator's web dashboard until SIGINT/SIGTERM."""

from pathlib import Path
from typing import Annotated

import typer

from biofed.cli._common import clean_errors, err, stop_on_signals
from biofed.cli._dashboard import SITE_URL, login_hint

#: Where the site dashboard listens by default (``biofed dashboard link`` assumes it).
DEFAULT_LISTEN = SITE_URL.removeprefix("http://")


def node_dashboard_command(
    kit: Annotated[Path, typer.Option(help="This site's kit folder.")],
    config: Annotated[Path, typer.Option(help="The node's node.toml (it must set up governance).")],
    listen: Annotated[
        str, typer.Option(help="host:port to listen on (loopback unless --remote).")
    ] = DEFAULT_LISTEN,
    remote: Annotated[
        bool,
        typer.Option(
            "--remote",
            help="Allow an address off loopback; then the dashboard serves HTTPS with the "
            "kit's certificate and key.",
        ),
    ] = False,
) -> None:
    """Serve this site's dashboard: bundles to review, approvals, agreements, the privacy
    ledger and the audit log. Log in with the link `biofed dashboard link --kit KIT` prints."""
    from biofed.web import serve_kit_dashboard, site_dashboard

    stop = stop_on_signals()
    with clean_errors():
        app = site_dashboard(kit, config)
        running = serve_kit_dashboard(app, listen, kit, allow_remote=remote, remote_flag="--remote")
    err.print(f"site dashboard on {running.url}")
    err.print(login_hint(running.url, SITE_URL, str(kit)))
    try:
        stop.wait()
    finally:
        err.print("site dashboard stopping")
        running.stop()
