"""Run a site's node process from its kit and ``node.toml``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from biofed.core import PolicyViolation
from biofed.identity import load_kit
from biofed.node._app import NodeApp
from biofed.node._config import NodeConfig
from biofed.transport.grpc import DatasetDeclaration, NodeClient, TlsConfig


def run_node(
    kit_dir: str | Path,
    config_path: str | Path,
    stop: threading.Event,
    *,
    coordinator: str | None = None,
    on_status: Callable[[str], None] | None = None,
) -> None:
    """Connect to the coordinator and serve instructions until ``stop`` is set.

    The node dials out (no inbound port), reconnects with backoff after any failure, and
    runs tasks only on the datasets its ``node.toml`` lists. If ``node.toml`` has a
    ``[governance]`` table, every instruction is checked against the site's own agreements,
    registry and approvals, and the node's audit log (signed with the kit's key) records it.
    """
    kit = load_kit(kit_dir)
    if kit.role != "site":
        raise PolicyViolation(f"kit {kit_dir} belongs to a {kit.role}, not a site")
    app = NodeApp(kit.name, NodeConfig.from_toml(config_path), kit=kit)
    tls = TlsConfig(
        certificate_chain=kit.cert_pem, private_key=kit.key_pem, root_certificates=kit.ca_pem
    )
    client = NodeClient(
        coordinator or kit.coordinator,
        tls,
        node_id=kit.name,
        handler=app.handle,
        datasets=[
            DatasetDeclaration(name=n, num_examples=rows, num_features=cols)
            for n, rows, cols in app.declarations()
        ],
        on_status=on_status,
    )
    app.fetch_bundle = client.fetch_bundle  # bundles the site approved come with the job
    client.run(stop)
