"""Fixtures for the end-to-end tests: a real consortium on loopback, over real mutual TLS.

A :class:`Federation` is one provisioned consortium folder (CA, coordinator kit, one kit per
site and researcher) whose sites ``center-0 …`` each hold their own region of Fed-TCGA-BRCA in
their kit folder, as the demo lays it out. Its helpers start an in-process coordinator, site
nodes as threads (``run_node`` with a stop event) or as processes (``python -m biofed …``),
and a researcher's :class:`~biofed.transport.grpc.ControlClient`. Everything started is
stopped when the fixture ends: threads by their stop event, processes by SIGTERM then SIGKILL.

:class:`RawNode` is a site that speaks the wire by hand through the generated stubs, with the
reply builders below it (:func:`reply_header`, :func:`reply_chunks`…): the tests use it to
act as a malicious or half-broken node.

Every wait is bounded (:func:`wait_for`) so that a regression fails a test instead of
hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from biofed.coordinator import JobSpec, RunningCoordinator, serve_coordinator, tls_of
from biofed.core import ParameterSet, decode_parameters, encode_parameters
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, Credentials, load_kit
from biofed.node import run_node
from biofed.transport.grpc import ControlClient, EventInfo, TlsConfig
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc

T = TypeVar("T")

DATASET = "tcga-brca"
NUM_FEATURES = 39
NODE_TOML = (
    "[datasets.tcga-brca]\n"
    'path = "data/tcga-brca.csv"\nformat = "csv"\nsplit_column = "split"\n'
    'targets = { event = "event", time = "time" }\n'
)
TERMINAL = frozenset({"finished", "finished_with_failures", "failed", "cancelled"})
#: Whether reply headers carry a payload SHA-256 (the wire schema may rely on TLS alone).


# -- small helpers ---------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def job(**run: Any) -> JobSpec:
    """A small FedAvg Cox-PH job on tcga-brca; ``run`` overrides ``[run]`` keys, ``train`` and
    ``strategy`` (dicts) override those tables."""
    train = {
        "batch_size": 8,
        "learning_rate": 0.01,
        "optimizer": "adam",
        "local_steps": 10,
        **run.pop("train", {}),
    }
    strategy = {"name": "fedavg", **run.pop("strategy", {})}
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "e2e",
                "dataset": DATASET,
                "rounds": 2,
                "seed": 7,
                "min_nodes": 2,
                "min_replies": 2,
                "round_timeout": 5.0,
                **run,
            },
            "task": {"name": "cox_ph", "num_features": NUM_FEATURES},
            "strategy": strategy,
            "train": train,
            "evaluate": {"split": "test"},
        }
    )


def tls_from(credentials: Credentials) -> TlsConfig:
    """The TLS material of freshly issued credentials (no kit folder needed)."""
    return TlsConfig(
        certificate_chain=credentials.cert_pem,
        private_key=credentials.key_pem,
        root_certificates=credentials.ca_pem,
    )


def raw_channel(address: str, tls: TlsConfig | None, *, root_pem: bytes | None = None) -> Any:
    """A plain ``grpc.secure_channel``: with ``tls`` it presents that certificate, without it
    it presents none (trusting ``root_pem``)."""
    if tls is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_pem)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_pem or tls.root_certificates,
            private_key=tls.private_key,
            certificate_chain=tls.certificate_chain,
        )
    return grpc.secure_channel(address, credentials)


def events_of(client: ControlClient, run_id: str) -> list[EventInfo]:
    """Every event of a run so far."""
    return list(client.watch_run(run_id))


def wait_terminal(client: ControlClient, run_id: str, *, timeout: float) -> str:
    """Wait until the run ends; return its final status."""

    def status() -> str | None:
        value = client.get_run(run_id).status
        return value if value in TERMINAL else None

    return wait_for(status, timeout=timeout, interval=0.1, what=f"run {run_id} to end")


def wait_online(client: ControlClient, names: Iterable[str], *, timeout: float = 20.0) -> None:
    """Wait until every node in ``names`` is online at the coordinator."""
    wanted = set(names)

    def online() -> bool:
        status = {n.node_id: n.status for n in client.list_nodes()}
        return all(status.get(name) == "online" for name in wanted)

    wait_for(online, timeout=timeout, what=f"nodes {sorted(wanted)} to be online")


def format_events(events: Iterable[EventInfo]) -> str:
    """Events as lines, for assertion messages."""
    return "\n".join(f"  r{e.round} {e.kind} {e.node_id} {e.message}" for e in events)


# -- site data -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def site_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One CSV per Fed-TCGA-BRCA centre (``center-0`` … ``center-5``), written once."""
    return write_site_files(load_tcga_brca(), tmp_path_factory.mktemp("tcga"), format="csv")


# -- the federation --------------------------------------------------------------------------


@dataclass
class Processes:
    """``python -m biofed …`` child processes with their logs; stopped at teardown."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``python -m biofed ARGS`` as ``name`` (a name may be reused once it exited)."""
        old = self.procs.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"process {name} is still running")
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "biofed", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` and reap it."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def log(self, name: str) -> str:
        """The log of ``name`` so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> dict[str, int]:
        """SIGTERM everything still running, SIGKILL what does not exit within 10 s."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        deadline = time.monotonic() + 10
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(timeout=10)
        return codes


class Federation:
    """A provisioned consortium on loopback and everything started on it (see the module)."""

    def __init__(
        self,
        root: Path,
        site_files: dict[str, Path],
        *,
        sites: Iterable[str],
        extra_sites: Iterable[str] = (),
        researchers: Iterable[str] = ("researcher",),
    ) -> None:
        self.root = root
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.data_sites = list(sites)
        self.consortium = Consortium.create(
            root / "consortium",
            consortium="biofed-e2e",
            coordinator=self.address,
            sites=[*self.data_sites, *extra_sites],
            researchers=list(researchers),
        )
        for site in self.data_sites:
            kit = self.kit(site)
            (kit / "data").mkdir()
            shutil.copyfile(site_files[site], kit / "data" / "tcga-brca.csv")
            (kit / "node.toml").write_text(NODE_TOML)
        self.processes = Processes(root / "logs")
        self._coordinators: list[RunningCoordinator] = []
        self._nodes: dict[str, tuple[threading.Event, threading.Thread]] = {}
        self._clients: list[ControlClient] = []
        self.node_status: dict[str, list[str]] = {}

    # -- paths and identities
    def kit(self, name: str) -> Path:
        """The kit folder of participant ``name``."""
        return self.consortium.kit_directory(name)

    def tls(self, name: str) -> TlsConfig:
        """The TLS material in ``name``'s kit."""
        return tls_of(load_kit(self.kit(name)))

    def state_url(self, label: str = "state") -> str:
        """A SQLite state URL inside the federation folder."""
        return f"sqlite:///{self.root / f'{label}.db'}"

    # -- coordinator
    def start_coordinator(
        self,
        *,
        state: str | None = None,
        heartbeat_interval: float = 1.0,
        node_wait: float = 30.0,
        **options: Any,
    ) -> RunningCoordinator:
        """Start the coordinator in this process (stopped at teardown).

        The heartbeat interval is 1 s, not shorter: a node sends its first heartbeat only
        after 2 s, and the coordinator marks a node lost after 3 silent intervals (see
        ``test_node_faults.test_healthy_node_is_never_reported_lost``).
        """
        running = serve_coordinator(
            self.kit("coordinator"),
            listen=self.address,
            state=state or self.state_url(),
            heartbeat_interval=heartbeat_interval,
            node_wait=node_wait,
            **options,
        )
        self._coordinators.append(running)
        return running

    def coordinator_process(self, *, state: str, name: str = "coordinator") -> Any:
        """Start the coordinator as a separate ``biofed coordinator start`` process."""
        return self.processes.start(
            name,
            "coordinator",
            "start",
            "--kit",
            str(self.kit("coordinator")),
            "--listen",
            self.address,
            "--state",
            state,
            "--heartbeat",
            "1.0",
        )

    # -- nodes
    def start_node(self, site: str) -> None:
        """Run ``site``'s node in a thread of this process (stopped at teardown)."""
        stop = threading.Event()
        log = self.node_status.setdefault(site, [])
        thread = threading.Thread(
            target=run_node,
            args=(self.kit(site), self.kit(site) / "node.toml", stop),
            kwargs={"on_status": log.append},
            name=f"e2e-node-{site}",
            daemon=True,
        )
        thread.start()
        self._nodes[site] = (stop, thread)

    def stop_node(self, site: str) -> None:
        """Stop ``site``'s node thread (bounded wait)."""
        stop, thread = self._nodes.pop(site)
        stop.set()
        thread.join(timeout=10)

    def node_process(self, site: str) -> Any:
        """Run ``site``'s node as a separate ``biofed node start`` process."""
        return self.processes.start(
            site,
            "node",
            "start",
            "--kit",
            str(self.kit(site)),
            "--config",
            str(self.kit(site) / "node.toml"),
        )

    # -- researcher
    def control(self, name: str = "researcher", *, timeout: float = 10.0) -> ControlClient:
        """A ControlClient with ``name``'s kit (closed at teardown)."""
        client = ControlClient(self.address, self.tls(name), timeout=timeout)
        self._clients.append(client)
        return client

    # -- teardown
    def close(self) -> None:
        """Stop every node, coordinator, process and client this federation started."""
        for site in list(self._nodes):
            self._nodes[site][0].set()
        for site in list(self._nodes):
            self.stop_node(site)
        for running in reversed(self._coordinators):
            running.stop()
        self._coordinators.clear()
        self.processes.stop_all()
        for client in self._clients:
            client.close()


@pytest.fixture
def make_federation(
    tmp_path: Path, site_files: dict[str, Path]
) -> Iterator[Callable[..., Federation]]:
    """Factory of :class:`Federation` in ``tmp_path``; everything started is stopped after."""
    made: list[Federation] = []

    def make(**kwargs: Any) -> Federation:
        federation = Federation(tmp_path / f"fed{len(made)}", site_files, **kwargs)
        made.append(federation)
        return federation

    try:
        yield make
    finally:
        for federation in made:
            federation.close()


# -- a hand-driven node (raw stubs): for malicious or half-broken peers -------------------------


def hello(session_id: str, datasets: Iterable[tuple[str, int, int]] = ()) -> pb.NodeMessage:
    """The first message of a Connect stream."""
    return pb.NodeMessage(
        hello=pb.ConnectRequest(
            session_id=session_id,
            datasets=[
                pb.DatasetInfo(name=n, num_examples=rows, num_features=cols)
                for n, rows, cols in datasets
            ],
        )
    )


@dataclass(frozen=True)
class Received:
    """An instruction as a raw node received it: header and reassembled payload."""

    header: pb.InstructionHeader
    payload: bytes

    @property
    def transfer_id(self) -> str:
        return str(self.header.transfer_id)

    @property
    def kind(self) -> str:
        return str(self.header.kind)

    def blob(self, name: str) -> bytes:
        """One blob of the payload, by its manifest name."""
        offset = 0
        for info in self.header.blobs:
            if info.name == name:
                return self.payload[offset : offset + info.size]
            offset += info.size
        raise KeyError(name)

    def parameters(self) -> ParameterSet:
        """The global model this instruction carries."""
        return decode_parameters(self.blob("parameters"))


class RawNode:
    """A site that speaks the wire by hand through the generated stubs.

    It opens ``Connect`` with a hello declaring its datasets, keeps its session alive with
    heartbeats, collects instructions (inline or chunked) into a queue, and uploads whatever
    messages a test builds, so a test can act as a malicious or broken node.
    """

    def __init__(
        self,
        address: str,
        tls: TlsConfig,
        *,
        datasets: Iterable[tuple[str, int, int]] = ((DATASET, 100, NUM_FEATURES),),
        heartbeat: float = 0.3,
    ) -> None:
        self.channel = raw_channel(address, tls)
        self.stub = pb_grpc.NodeServiceStub(self.channel)
        self.session_id = uuid.uuid4().hex
        self.instructions: queue.Queue[Received] = queue.Queue()
        self._outgoing: queue.Queue[pb.NodeMessage | None] = queue.Queue()
        self._outgoing.put(hello(self.session_id, datasets))
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.call = self.stub.Connect(self._requests())
        self._threads = [
            threading.Thread(target=self._read, name="e2e-raw-read", daemon=True),
            threading.Thread(
                target=self._beat, args=(heartbeat,), name="e2e-raw-beat", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()

    def _requests(self) -> Iterator[pb.NodeMessage]:
        while (message := self._outgoing.get()) is not None:
            yield message

    def _read(self) -> None:
        header: pb.InstructionHeader | None = None
        parts: list[bytes] = []
        try:
            for message in self.call:
                kind = message.WhichOneof("body")
                if kind == "instruction":
                    header, parts = message.instruction, []
                    if message.instruction.inline_payload:
                        parts.append(bytes(message.instruction.inline_payload))
                elif kind == "chunk":
                    parts.append(bytes(message.chunk.data))
                if header is not None and sum(map(len, parts)) >= header.total_bytes:
                    self.instructions.put(Received(header=header, payload=b"".join(parts)))
                    header, parts = None, []
        except grpc.RpcError as exc:
            if not self._stop.is_set():
                self.error = exc

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with contextlib.suppress(grpc.RpcError):
                self.stub.Heartbeat(pb.HeartbeatRequest(session_id=self.session_id), timeout=5)

    def next_instruction(self, run_id: str, kind: str, *, timeout: float = 20.0) -> Received:
        """The next instruction of ``run_id`` and ``kind`` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {kind} instruction of {run_id} within {timeout:.0f} s")
            try:
                item = self.instructions.get(timeout=remaining)
            except queue.Empty:
                continue
            if item.header.run_id == run_id and item.kind == kind:
                return item

    def upload(self, messages: Iterable[pb.ReplyChunk], *, timeout: float = 15.0) -> pb.Ack:
        """SendReply with exactly these messages; the coordinator's Ack."""
        return self.stub.SendReply(iter(list(messages)), timeout=timeout)

    def send_inline(self, header: pb.ReplyHeader) -> None:
        """A reply inline on the Connect stream (no Ack comes back for those)."""
        self._outgoing.put(pb.NodeMessage(reply=header))

    def close(self) -> None:
        """End the session and the channel (bounded)."""
        self._stop.set()
        self._outgoing.put(None)
        self.call.cancel()
        for thread in self._threads:
            thread.join(timeout=5)
        self.channel.close()


def reply_header(
    received: Received,
    data: bytes,
    *,
    blobs: Iterable[tuple[str, int]] | None = None,
    **fields: Any,
) -> pb.ReplyHeader:
    """A reply header answering ``received`` for payload ``data`` (one ``parameters`` blob
    unless ``blobs`` says otherwise); ``fields`` override any header field."""
    manifest = list(blobs) if blobs is not None else ([("parameters", len(data))] if data else [])
    values: dict[str, Any] = {
        "transfer_id": received.transfer_id,
        "run_id": received.header.run_id,
        "round": received.header.round,
        "kind": received.kind,
        "num_examples": 100,
        "blobs": [pb.BlobInfo(name=n, size=s) for n, s in manifest],
        "total_bytes": len(data),
    }
    values.update(fields)
    return pb.ReplyHeader(**values)


def reply_chunks(
    header: pb.ReplyHeader, data: bytes, *, size: int = 64, order: Iterable[int] | None = None
) -> list[pb.ReplyChunk]:
    """The header then ``data`` in chunks of ``size`` bytes (in ``order`` if given)."""
    pieces = [
        pb.ReplyChunk(
            chunk=pb.Chunk(transfer_id=header.transfer_id, offset=o, data=data[o : o + size])
        )
        for o in range(0, len(data), size)
    ]
    if order is not None:
        pieces = [pieces[k] for k in order]
    return [pb.ReplyChunk(header=header), *pieces]


def honest_train_reply(received: Received) -> tuple[pb.ReplyHeader, bytes]:
    """A valid training reply: the global model sent back unchanged."""
    data = encode_parameters(received.parameters())
    return reply_header(received, data, metrics={"train_loss": 0.5}), data


def honest_evaluate_reply(received: Received) -> pb.ReplyHeader:
    """A valid evaluation reply (metrics only, no payload)."""
    return reply_header(received, b"", metrics={"c_index": 0.5})
