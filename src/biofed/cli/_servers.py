"""``biofed coordinator start`` and ``biofed node start``: the long-running processes."""

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from biofed.cli import _datasets
from biofed.cli._common import clean_errors, err, stop_on_signals

if TYPE_CHECKING:
    from biofed.coordinator import Coordinator
    from biofed.web import RunningDashboard

coordinator_app = typer.Typer(help="Run the consortium's coordinator.", no_args_is_help=True)
node_app = typer.Typer(help="Run a site's node.", no_args_is_help=True)
node_app.add_typer(_datasets.app, name="dataset")


@coordinator_app.command("start")
def coordinator_start(
    kit: Annotated[Path, typer.Option(help="The coordinator's kit folder.")],
    listen: Annotated[
        str | None, typer.Option(help="host:port to listen on (default: kit.toml).")
    ] = None,
    state: Annotated[str | None, typer.Option(help="State store URL (default: kit.toml).")] = None,
    heartbeat: Annotated[float, typer.Option(help="Seconds between node heartbeats.")] = 2.0,
    dashboard: Annotated[
        str | None,
        typer.Option(
            help="Also serve the web dashboard on host:port (loopback unless "
            "--dashboard-remote; e.g. 127.0.0.1:8765).",
        ),
    ] = None,
    dashboard_remote: Annotated[
        bool,
        typer.Option(
            help="Let the dashboard listen off loopback, over HTTPS with the kit's "
            "cert.pem and key.pem.",
        ),
    ] = False,
) -> None:
    """Serve nodes and researchers over mTLS until SIGINT/SIGTERM; resume unfinished runs."""
    from biofed.coordinator import serve_coordinator

    stop = stop_on_signals()
    with clean_errors():
        running = serve_coordinator(kit, listen=listen, state=state, heartbeat_interval=heartbeat)
        try:
            web = _dashboard(running.coordinator, kit, dashboard, dashboard_remote)
        except BaseException:
            running.stop()
            raise
    err.print(f"coordinator listening on {running.address} (state: {state or 'kit.toml'})")
    if web is not None:
        from biofed.cli._dashboard import COORDINATOR_URL, login_hint

        err.print(f"dashboard on {web.url}; {login_hint(web.url, COORDINATOR_URL, 'YOUR_KIT')}")
    try:
        stop.wait()
    finally:
        err.print("coordinator stopping")
        if web is not None:
            web.stop()
        running.stop()


def _dashboard(
    coordinator: "Coordinator", kit: Path, listen: str | None, remote: bool
) -> "RunningDashboard | None":
    """The coordinator's dashboard served on ``listen`` (None: not asked for)."""
    if listen is None:
        return None
    from biofed.identity import load_kit
    from biofed.web import coordinator_dashboard, serve_kit_dashboard

    own = load_kit(kit)
    app = coordinator_dashboard(coordinator, own)
    return serve_kit_dashboard(
        app, listen, own.directory, allow_remote=remote, remote_flag="--dashboard-remote"
    )


@node_app.command("start")
def node_start(
    kit: Annotated[Path, typer.Option(help="This site's kit folder.")],
    config: Annotated[Path, typer.Option(help="node.toml listing the site's datasets.")],
    coordinator: Annotated[str | None, typer.Option(help="host:port (default: kit.toml).")] = None,
) -> None:
    """Dial out to the coordinator and serve instructions until SIGINT/SIGTERM."""
    from biofed.node import run_node

    stop = stop_on_signals()
    done = threading.Event()

    def status(message: str) -> None:
        err.print(f"node: {message}")

    with clean_errors():
        thread_error: list[BaseException] = []

        def target() -> None:
            try:
                run_node(kit, config, stop, coordinator=coordinator, on_status=status)
            except BaseException as exc:  # reported below, in the main thread
                thread_error.append(exc)
            finally:
                done.set()

        worker = threading.Thread(target=target, name="biofed-node", daemon=True)
        worker.start()
        while not done.wait(0.2):
            pass
        if thread_error:
            raise thread_error[0]
