"""``biofed node dashboard``: serve the site operator's web dashboard until SIGINT/SIGTERM."""

from pathlib import Path
from typing import Annotated

import typer

from biofed.cli._common import clean_errors, err, stop_on_signals
from biofed.cli._dashboard import SITE_URL

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
    from biofed.core import ConfigurationError
    from biofed.web import TlsFiles, is_loopback, parse_listen, serve_dashboard, site_dashboard

    stop = stop_on_signals()
    with clean_errors():
        app = site_dashboard(kit, config)
        host, _ = parse_listen(listen)
        if not (is_loopback(host) or remote):
            raise ConfigurationError(
                f"the site dashboard listens on loopback unless --remote allows {host}"
            )
        tls = None if is_loopback(host) else TlsFiles(kit / "cert.pem", kit / "key.pem")
        running = serve_dashboard(app, listen, tls=tls, allow_remote=remote)
    url_hint = "" if running.url == SITE_URL else f" --url {running.url}"
    err.print(f"site dashboard on {running.url}")
    err.print(f"log in with a link from: biofed dashboard link --kit {kit}{url_hint}")
    try:
        stop.wait()
    finally:
        err.print("site dashboard stopping")
        running.stop()
