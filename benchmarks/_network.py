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


# -- the floor: the same bytes through bare mTLS gRPC streams, no biofed on either side -------

_RAW_CHUNK = 2 * 1024 * 1024


def _raw_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", 16 << 20),
        ("grpc.max_receive_message_length", 16 << 20),
    ]


class RawServer:
    """An mTLS gRPC server with two raw-bytes methods: Down streams ``nbytes`` to the caller,
    Up consumes what the caller streams."""

    def __init__(self, bench: Bench, nbytes: int) -> None:
        from concurrent import futures

        import grpc

        from biofed.transport.grpc._tls import server_credentials

        chunk = b"\x01" * _RAW_CHUNK
        count = -(-nbytes // _RAW_CHUNK)

        def down(request: bytes, context: object):  # type: ignore[no-untyped-def]
            for _ in range(count):
                yield chunk

        def up(requests, context):  # type: ignore[no-untyped-def]
            total = 0
            for part in requests:
                total += len(part)
            return total.to_bytes(8, "little")

        self.port = free_port()
        kit = load_kit(bench.consortium.kit_directory("coordinator"))
        self.server = grpc.server(futures.ThreadPoolExecutor(16), options=_raw_options())
        handler = grpc.method_handlers_generic_handler(
            "bench.Raw",
            {
                "Down": grpc.unary_stream_rpc_method_handler(down),
                "Up": grpc.stream_unary_rpc_method_handler(up),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_secure_port(f"127.0.0.1:{self.port}", server_credentials(tls_of(kit)))
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0.5)


def raw_floor(bench: Bench, nbytes: int) -> float:
    """Seconds for every node process to download then upload ``nbytes`` over bare mTLS gRPC
    streams, all nodes at once: the same traffic as a round, with no biofed work."""
    server = RawServer(bench, nbytes)
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    sys.argv[0],
                    "--raw-client",
                    str(bench.consortium.kit_directory(s)),
                    "--target",
                    f"127.0.0.1:{server.port}",
                    "--bytes",
                    str(nbytes),
                ],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
            for s in bench.sites
        ]
        for p in procs:  # each client says "ready" once connected; then all start together
            assert p.stdout is not None
            if p.stdout.readline().strip() != b"ready":
                raise RuntimeError("a raw client failed to start")
        t0 = time.perf_counter()
        for p in procs:
            p.send_signal(__import__("signal").SIGUSR1)
        for p in procs:
            if p.wait(timeout=600) != 0:
                raise RuntimeError("a raw client failed")
        return time.perf_counter() - t0
    finally:
        server.stop()


def raw_client_if_asked() -> bool:
    """``--raw-client KIT --target ADDR --bytes N``: download then upload N bytes."""
    if "--raw-client" not in sys.argv:
        return False
    import signal

    import grpc

    from biofed.transport.grpc._tls import channel_credentials

    p = argparse.ArgumentParser()
    p.add_argument("--raw-client")
    p.add_argument("--target")
    p.add_argument("--bytes", type=int)
    args, _ = p.parse_known_args()
    go = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *a: go.set())
    kit = load_kit(args.raw_client)
    channel = grpc.secure_channel(
        args.target, channel_credentials(tls_of(kit)), options=_raw_options()
    )
    grpc.channel_ready_future(channel).result(timeout=30)
    down = channel.unary_stream("/bench.Raw/Down")
    up = channel.stream_unary("/bench.Raw/Up")
    print("ready", flush=True)
    if not go.wait(120):
        raise SystemExit("no start signal")
    received = bytearray(args.bytes + _RAW_CHUNK)
    offset = 0
    for part in down(b""):
        received[offset : offset + len(part)] = part
        offset += len(part)
    view = memoryview(received)
    up(bytes(view[i : i + _RAW_CHUNK]) for i in range(0, args.bytes, _RAW_CHUNK))
    return True
