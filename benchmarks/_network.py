"""Shared scaffolding for the network benchmarks: a provisioned consortium, an in-process
coordinator (hub + mTLS server), and node *processes* that answer instantly (no training)."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from biofed.coordinator import KitAuthenticator, tls_of
from biofed.core import Instruction, Reply
from biofed.identity import Consortium, load_kit
from biofed.transport.grpc import CoordinatorServer, DatasetDeclaration, NodeClient, NodeHub


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bench:
    """A consortium with ``n`` sites, its coordinator in this process, nodes as processes."""

    def __init__(self, n: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="biofed-bench-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.sites = [f"site-{i:02d}" for i in range(n)]
        self.consortium = Consortium.create(
            self.tmp / "c", consortium="bench", coordinator=self.address, sites=self.sites
        )
        kit = load_kit(self.consortium.kit_directory("coordinator"))
        self.hub = NodeHub(heartbeat_interval=1.0)
        self.server = CoordinatorServer(
            self.address, tls_of(kit), KitAuthenticator(kit), self.hub
        ).start()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_nodes(self, script: str) -> None:
        for site in self.sites:
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        script,
                        "--serve-node",
                        str(self.consortium.kit_directory(site)),
                        "--target",
                        self.address,
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )

    def transport(self, run_id: str):  # type: ignore[no-untyped-def]
        transport = self.hub.transport_for(run_id, "bench")
        deadline = time.monotonic() + 60
        while len(transport.available_nodes()) < len(self.sites):
            if time.monotonic() > deadline:
                raise RuntimeError("nodes did not connect")
            time.sleep(0.05)
        return transport

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.server.stop(grace=0.5)
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)


def echo(inst: Instruction) -> Reply:
    """No training: answer with the parameters received."""
    return Reply(
        run_id=inst.run_id,
        round=inst.round,
        node_id=inst.node_id,
        kind=inst.kind,
        parameters=inst.parameters if inst.kind.value == "train" else None,
        num_examples=100,
        metrics={"score": 0.5},
    )


def serve_node_if_asked() -> bool:
    """When run as ``--serve-node KIT --target ADDR``: be an echoing node until terminated."""
    if "--serve-node" not in sys.argv:
        return False
    p = argparse.ArgumentParser()
    p.add_argument("--serve-node")
    p.add_argument("--target")
    args, _ = p.parse_known_args()
    import signal

    kit = load_kit(args.serve_node)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    client = NodeClient(
        args.target,
        tls_of(kit),
        node_id=kit.name,
        handler=echo,
        datasets=[DatasetDeclaration(name="bench", num_examples=100, num_features=1)],
    )
    client.run(stop)
    return True
