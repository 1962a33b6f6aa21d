"""The ``biofed`` command: one Typer app, one module per command group.

Start-up is the budget of every command (``biofed --help`` ≤ 0.5 s): Typer builds every
command's options when the app starts, so the command modules import nothing of the SDK at
the top (each command imports what it uses), and they do without ``from __future__ import
annotations``: Typer would ``eval`` each string annotation twice, the largest part of our own
start-up; evaluated once at import they cost almost nothing. ``tests/test_fast_start.py``
guards the imports, ``benchmarks/start_time.py`` measures the time.

Help is click's plain layout (``rich_markup_mode=None``): help texts quote job-file sections
such as ``[run]``, which Rich markup would swallow, and Rich's option panel cuts long flag
names at 80 columns where click wraps the description instead.
"""

from typing import Annotated

import typer

from biofed.cli import (
    _agreement,
    _analyze,
    _audit,
    _budget,
    _dashboard,
    _dashboard_site,
    _demo,
    _open_data,
    _privacy,
    _provision,
    _report,
    _run,
    _servers,
    _simulate,
    _sites,
    _task,
)

app = typer.Typer(
    name="biofed",
    help="Federated learning and analytics on sensitive biomedical data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.command("simulate")(_simulate.simulate_command)
app.command("demo")(_demo.demo_command)
app.add_typer(_provision.app, name="provision")
app.add_typer(_servers.coordinator_app, name="coordinator")
app.add_typer(_servers.node_app, name="node")
app.add_typer(_run.app, name="run")
app.command("sites")(_sites.sites_command)
app.add_typer(_open_data.app, name="datasets")
app.add_typer(_agreement.app, name="agreement")
app.add_typer(_audit.app, name="audit")
app.add_typer(_task.app, name="task")
app.add_typer(_privacy.app, name="privacy")
app.add_typer(_report.app, name="report")
app.add_typer(_analyze.app, name="analyze")
app.add_typer(_dashboard.app, name="dashboard")
_servers.node_app.command("review")(_task.review_command)
_servers.node_app.command("approve")(_task.approve_command)
_servers.node_app.command("revoke")(_task.revoke_command)
_servers.node_app.command("approvals")(_task.approvals_command)
_servers.node_app.command("budget")(_budget.budget_command)
_servers.node_app.command("budget-cap")(_budget.budget_cap_command)
_servers.node_app.command("dashboard")(_dashboard_site.node_dashboard_command)


def _version(value: bool) -> None:
    """Print ``biofed X.Y.Z`` (the installed distribution's version) and stop."""
    if value:
        from importlib.metadata import version

        typer.echo(f"biofed {version('biofed')}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            help="Print biofed's version and exit.",
        ),
    ] = False,
) -> None:
    """biofed: the model travels to the data; only approved results travel back."""
