"""``biofed sites``: the sites the coordinator knows, when each was last seen, what it offers."""

import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from biofed.cli._common import call
from biofed.cli._output import Format, FormatOption, emit
from biofed.cli._run import CoordinatorOpt, KitOpt, control_client

if TYPE_CHECKING:
    from biofed.transport.grpc import ControlClient, NodeSummary


def _datasets(node: "NodeSummary") -> dict[str, int]:
    """Dataset name → examples, from the node's registry properties."""
    try:
        properties = json.loads(node.properties_json or "{}")
    except ValueError:
        return {}
    found: dict[str, int] = {}
    for key, value in properties.items():
        if key.startswith("dataset.") and key.endswith(".examples"):
            found[key[len("dataset.") : -len(".examples")]] = int(value)
    return dict(sorted(found.items()))


def _as_dict(node: "NodeSummary") -> dict[str, Any]:
    return {
        "site": node.node_id,
        "status": node.status,
        "last_seen": node.last_seen,
        "datasets": _datasets(node),
    }


def _wait(client: "ControlClient", count: int, timeout: float) -> "list[NodeSummary]":
    """Poll until ``count`` sites are online (bounded by ``timeout`` seconds)."""
    from biofed.core import ConfigurationError, TransportError

    deadline = time.monotonic() + timeout
    while True:
        try:
            nodes = client.list_nodes()
        except TransportError as exc:  # not listening yet: try again until the deadline
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"no answer from the coordinator within {timeout:g} s: {exc}"
                ) from None
            time.sleep(0.2)
            continue
        online = [n for n in nodes if n.status == "online"]
        if len(online) >= count:
            return nodes
        if time.monotonic() > deadline:
            names = ", ".join(n.node_id for n in online) or "none"
            raise ConfigurationError(
                f"{len(online)} of {count} sites online after {timeout:g} s (online: {names})"
            )
        time.sleep(0.2)


def sites_command(
    kit: KitOpt = None,
    coordinator: CoordinatorOpt = None,
    wait: Annotated[
        int,
        typer.Option("--wait", min=0, metavar="N", help="First wait until N sites are online."),
    ] = 0,
    timeout: Annotated[float, typer.Option(min=0.0, help="Seconds --wait waits at most.")] = 60.0,
    format: FormatOption = Format.table,
) -> None:
    """The sites the coordinator knows: status, last seen, datasets offered (examples)."""
    with control_client(kit, coordinator) as client:
        nodes = call(lambda: _wait(client, wait, timeout) if wait else client.list_nodes())
    emit(format, [_as_dict(n) for n in nodes], sites_table(nodes, time.time()))


def sites_table(nodes: "list[NodeSummary]", now: float) -> Table:
    """The sites, their status, when last seen (relative to ``now``) and datasets."""
    table = Table(title="sites")
    for col in ("site", "status", "last seen"):
        table.add_column(col)
    table.add_column("datasets (examples)", overflow="fold")  # a list: wraps between items
    for node in sorted(nodes, key=lambda n: n.node_id):
        seen = dt.datetime.fromtimestamp(node.last_seen, dt.timezone.utc)
        ago = max(0.0, now - node.last_seen)
        datasets = ", ".join(f"{k} ({v})" for k, v in _datasets(node).items()) or "—"
        style = "green" if node.status == "online" else "yellow"
        table.add_row(
            node.node_id,
            f"[{style}]{node.status}[/]",
            f"{seen:%Y-%m-%d %H:%M:%S} UTC ({ago:.0f} s ago)",
            datasets,
        )
    return table
