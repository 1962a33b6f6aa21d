"""Fixtures for transport tests: a provisioned consortium and a live mTLS gRPC federation."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from biofed.coordinator import KitAuthenticator, tls_of
from biofed.core import Instruction, Reply
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import (
    CoordinatorServer,
    DatasetDeclaration,
    NodeClient,
    NodeHub,
    RunTransport,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> tuple[Consortium, int]:
    port = free_port()
    root = tmp_path_factory.mktemp("consortium") / "c"
    sites = ["a", "b", "c", "d"]
    c = Consortium.create(
        root, consortium="test", coordinator=f"127.0.0.1:{port}", sites=sites, researchers=["r"]
    )
    return c, port


@dataclass
class Federation:
    hub: NodeHub
    server: CoordinatorServer
    transport: RunTransport
    stops: dict[str, threading.Event]


def echo(inst: Instruction) -> Reply:
    return Reply(
        run_id=inst.run_id,
        round=inst.round,
        node_id=inst.node_id,
        kind=inst.kind,
        parameters=inst.parameters,
        num_examples=1,
    )


@pytest.fixture
def grpc_federation(
    consortium: tuple[Consortium, int],
) -> Iterator[Callable[[list[str], Callable[[Instruction], Reply]], Federation]]:
    c, _ = consortium
    started: list[Federation] = []

    def start(nodes: list[str], handler: Callable[[Instruction], Reply] = echo) -> Federation:
        port = free_port()
        kit = load_kit(c.kit_directory("coordinator"))
        hub = NodeHub(heartbeat_interval=0.5)
        server = CoordinatorServer(
            f"127.0.0.1:{port}", tls_of(kit), KitAuthenticator(kit), hub
        ).start()
        stops = {}
        for name in nodes:
            node_kit = load_kit(c.kit_directory(name))
            client = NodeClient(
                f"127.0.0.1:{port}",
                tls_of(node_kit),
                node_id=name,
                handler=handler,
                datasets=[DatasetDeclaration(name="ds", num_examples=10, num_features=3)],
            )
            stops[name] = threading.Event()
            threading.Thread(target=client.run, args=(stops[name],), daemon=True).start()
        transport = hub.transport_for("r", "ds")
        deadline = time.monotonic() + 20
        while len(transport.available_nodes()) < len(nodes):
            assert time.monotonic() < deadline, "nodes did not connect"
            time.sleep(0.02)
        federation = Federation(hub=hub, server=server, transport=transport, stops=stops)
        started.append(federation)
        return federation

    yield start
    for f in started:
        for stop in f.stops.values():
            stop.set()
        f.transport.close()
        f.server.stop(grace=0.2)
