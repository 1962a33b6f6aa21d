"""Clients of the coordinator: the node's dial-out loop and the researchers' control client."""

from __future__ import annotations

import logging
import queue
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc

from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    PayloadError,
    PolicyViolation,
    ProtocolError,
    Reply,
    TransportError,
)
from biofed.transport.grpc._control import EventInfo, NodeSummary, RunSummary
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc
from biofed.transport.grpc._hub import DatasetDeclaration
from biofed.transport.grpc._serde import (
    CHUNK_BYTES,
    Reassembler,
    blob_manifest,
    chunks,
    instruction_from_wire,
    pack,
    reply_header,
)
from biofed.transport.grpc._tls import TlsConfig, secure_channel

_log = logging.getLogger("biofed.node")
T = TypeVar("T")

#: Handles one instruction at the site and returns the reply to upload.
InstructionHandler = Callable[[Instruction], Reply]


class NodeClient:
    """A node's connection to the coordinator: dial out, take instructions, upload replies.

    Reconnects after any failure with exponential backoff and jitter, sends heartbeats,
    and handles instructions on worker threads so pings keep flowing during long local
    training: each run has its own worker (instructions of one run in order, one at a time),
    at most ``max_parallel_runs`` of them busy at once, so one run's slow round does not
    stall another's. A ``cancel_run`` message from the coordinator drops the run's queued
    instructions, and a reply the handler finishes for a cancelled run is not uploaded.

    Parameters
    ----------
    target:
        The coordinator's ``host:port``.
    tls:
        This node's certificate, key and the consortium CA.
    node_id:
        This node's name (as its certificate says; the coordinator checks the certificate).
    handler:
        Runs an instruction (the site runtime).
    datasets:
        Datasets this node declares.
    max_payload_bytes:
        Refuse instructions that declare more bytes than this.
    max_parallel_runs:
        How many runs' instructions the handler may work on at the same time (the handler
        must be safe to call concurrently for different runs).
    """

    def __init__(
        self,
        target: str,
        tls: TlsConfig,
        *,
        node_id: str,
        handler: InstructionHandler,
        datasets: Sequence[DatasetDeclaration],
        server_name: str | None = None,
        max_payload_bytes: int = 16 * 1024**3,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        on_status: Callable[[str], None] | None = None,
        max_parallel_runs: int = 4,
    ) -> None:
        if isinstance(max_parallel_runs, bool) or not isinstance(max_parallel_runs, int):
            raise ConfigurationError("max_parallel_runs must be an int")
        if max_parallel_runs < 1:
            raise ConfigurationError(f"max_parallel_runs must be >= 1, got {max_parallel_runs}")
        self.max_parallel_runs = max_parallel_runs
        self.target = target
        self.tls = tls
        self.node_id = node_id
        self.handler = handler
        self.datasets = tuple(datasets)
        self.server_name = server_name
        self.max_payload_bytes = max_payload_bytes
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._on_status = on_status or (lambda message: None)
        self._rng = random.Random()

    def fetch_bundle(self, digest: str, *, timeout: float = 60.0) -> bytes:
        """Download the task bundle ``digest`` from the coordinator (the caller verifies it)."""
        channel = secure_channel(self.target, self.tls, server_name=self.server_name)
        try:
            stub = pb_grpc.NodeServiceStub(channel)
            parts = stub.FetchBundle(pb.BundleRequest(digest=digest), timeout=timeout)
            return b"".join(c.data for c in parts)
        except grpc.RpcError as exc:
            raise TransportError(f"cannot fetch bundle {digest[:12]}…: {_details(exc)}") from None
        finally:
            channel.close()

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, reconnecting as needed."""
        delay = self.backoff_initial
        while not stop.is_set():
            connected = threading.Event()
            try:
                self._serve_once(stop, connected)
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                self._on_status(f"disconnected ({code.name if code else 'error'}): {_details(exc)}")
            except BiofedError as exc:
                self._on_status(f"connection dropped: {exc}")
            if connected.is_set():
                delay = self.backoff_initial
            if stop.wait(delay * (0.5 + self._rng.random())):
                break
            delay = min(delay * 2, self.backoff_max)

    def _serve_once(self, stop: threading.Event, connected: threading.Event) -> None:
        channel = secure_channel(self.target, self.tls, server_name=self.server_name)
        stub = pb_grpc.NodeServiceStub(channel)
        session_id = uuid.uuid4().hex
        request = pb.ConnectRequest(
            session_id=session_id,
            datasets=[
                pb.DatasetInfo(
                    name=d.name, num_examples=d.num_examples, num_features=d.num_features
                )
                for d in self.datasets
            ],
        )
        outgoing: queue.Queue[pb.NodeMessage | None] = queue.Queue()

        def requests() -> Iterator[pb.NodeMessage]:
            yield pb.NodeMessage(hello=request)
            while (message := outgoing.get()) is not None:
                yield message

        call = stub.Connect(requests())
        done = threading.Event()
        workers = _RunWorkers(
            self.handler,
            lambda reply, tid: self._upload(stub, reply, tid, outgoing),
            done,
            self._on_status,
            self.max_parallel_runs,
        )
        beat = threading.Thread(
            target=self._heartbeat,
            args=(stub, session_id, call, done, stop),
            name="biofed-node-heartbeat",
            daemon=True,
        )
        watcher = threading.Thread(target=_cancel_on, args=(stop, done, call), daemon=True)
        watcher.start()
        try:
            assembler: Reassembler | None = None
            header: pb.InstructionHeader | None = None
            for message in call:
                if not connected.is_set():
                    connected.set()
                    beat.start()
                    self._on_status(f"connected to {self.target}")
                kind = message.WhichOneof("body")
                if kind == "instruction":
                    header = message.instruction
                    assembler = Reassembler(
                        header.transfer_id,
                        blob_manifest(header.blobs),
                        int(header.total_bytes),
                        max_bytes=self.max_payload_bytes,
                    )
                    if header.inline_payload:
                        assembler.add(
                            pb.Chunk(
                                transfer_id=header.transfer_id,
                                offset=0,
                                data=header.inline_payload,
                            )
                        )
                elif kind == "chunk":
                    if assembler is None or header is None:
                        raise PayloadError("chunk without an instruction header")
                    assembler.add(message.chunk)
                    outgoing.put(pb.NodeMessage(credit=1))
                elif kind == "cancel_run":
                    workers.cancel(message.cancel_run.run_id)
                if assembler is not None and header is not None and assembler.complete:
                    instruction = instruction_from_wire(
                        header, assembler.finish(), self.node_id, max_bytes=self.max_payload_bytes
                    )
                    workers.submit(instruction, header.transfer_id)
                    assembler = header = None
                if kind == "ping" and not connected.is_set():
                    connected.set()
        finally:
            done.set()
            workers.close()
            outgoing.put(None)
            call.cancel()  # type: ignore[no-untyped-call]
            workers.join(timeout=1.0)
            channel.close()

    def _upload(
        self,
        stub: pb_grpc.NodeServiceStub,
        reply: Reply,
        transfer_id: str,
        outgoing: queue.Queue[pb.NodeMessage | None],
    ) -> None:
        payload = pack(reply.parameters, reply.extras)
        header = reply_header(reply, transfer_id, payload)
        if payload.size <= CHUNK_BYTES:  # small: inline on the session stream, no new call
            header.inline_payload = payload.to_bytes()
            outgoing.put(pb.NodeMessage(reply=header))
            return

        def messages() -> Iterator[pb.ReplyChunk]:
            yield pb.ReplyChunk(header=header)
            for chunk in chunks(transfer_id, payload):
                yield pb.ReplyChunk(chunk=chunk)

        ack = stub.SendReply(messages())
        if not ack.accepted:
            self._on_status(f"coordinator refused round {reply.round} reply: {ack.message}")

    def _heartbeat(
        self,
        stub: pb_grpc.NodeServiceStub,
        session_id: str,
        call: Any,
        done: threading.Event,
        stop: threading.Event,
    ) -> None:
        interval = 2.0
        wait = 0.0  # the first heartbeat goes at once: it tells us the coordinator's interval
        while not done.wait(wait) and not stop.is_set():
            try:
                response = stub.Heartbeat(
                    pb.HeartbeatRequest(session_id=session_id), timeout=interval
                )
                interval = max(0.05, float(response.interval_s) or interval)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:  # session replaced or lost
                    call.cancel()
                    return
            wait = interval


#: Cancelled run ids a node remembers (to refuse their late instructions and replies).
_CANCELLED_KEPT = 1024


class _RunWorkers:
    """One worker thread per run with queued work, at most ``limit`` handling at once.

    A run's instructions are handled in the order they arrived; different runs proceed
    independently. Workers exit when their run's queue is empty, so idle runs hold no
    thread.
    """

    def __init__(
        self,
        handler: InstructionHandler,
        upload: Callable[[Reply, str], None],
        done: threading.Event,
        on_status: Callable[[str], None],
        limit: int,
    ) -> None:
        self._handler = handler
        self._upload = upload
        self._done = done
        self._on_status = on_status
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._queues: dict[str, list[tuple[Instruction, str]]] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._cancelled: dict[str, None] = {}  # insertion-ordered set, bounded

    def submit(self, instruction: Instruction, transfer_id: str) -> None:
        run_id = instruction.run_id
        with self._lock:
            if run_id in self._cancelled or self._done.is_set():
                return
            self._queues.setdefault(run_id, []).append((instruction, transfer_id))
            if run_id not in self._threads:
                thread = threading.Thread(
                    target=self._work, args=(run_id,), name=f"biofed-node-run-{run_id}", daemon=True
                )
                self._threads[run_id] = thread
                thread.start()

    def cancel(self, run_id: str) -> None:
        """Drop the run's queued instructions; a reply finished later is not uploaded."""
        with self._lock:
            self._cancelled[run_id] = None
            while len(self._cancelled) > _CANCELLED_KEPT:
                del self._cancelled[next(iter(self._cancelled))]
            dropped = len(self._queues.pop(run_id, []))
        self._on_status(f"run {run_id} cancelled by the coordinator ({dropped} queued dropped)")

    def _is_live(self, run_id: str) -> bool:
        with self._lock:
            return run_id not in self._cancelled and not self._done.is_set()

    def _next(self, run_id: str) -> tuple[Instruction, str] | None:
        with self._lock:
            queued = self._queues.get(run_id)
            if not queued or self._done.is_set():
                self._queues.pop(run_id, None)
                self._threads.pop(run_id, None)
                return None
            return queued.pop(0)

    def _work(self, run_id: str) -> None:
        while (item := self._next(run_id)) is not None:
            instruction, transfer_id = item
            with self._slots:
                if not self._is_live(run_id):
                    continue
                reply = self._handler(instruction)
            if not self._is_live(run_id):
                continue  # cancelled (or disconnected) meanwhile: nothing is uploaded
            try:
                self._upload(reply, transfer_id)
            except grpc.RpcError as exc:
                self._on_status(f"reply upload failed: {_details(exc)}")

    def close(self) -> None:
        with self._lock:
            self._queues.clear()

    def join(self, timeout: float) -> None:
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout=timeout / max(1, len(threads)))


def _cancel_on(stop: threading.Event, done: threading.Event, call: Any) -> None:
    """Cancel the stream when the node is asked to stop (unblocks the reading loop)."""
    while not done.wait(0.2):
        if stop.is_set():
            call.cancel()
            return


def _details(exc: grpc.RpcError) -> str:
    details = exc.details() if hasattr(exc, "details") else None
    return str(details or exc)


_ERRORS: dict[grpc.StatusCode, type[BiofedError]] = {
    grpc.StatusCode.PERMISSION_DENIED: PolicyViolation,
    grpc.StatusCode.UNAUTHENTICATED: PolicyViolation,
    grpc.StatusCode.INVALID_ARGUMENT: ConfigurationError,
    grpc.StatusCode.FAILED_PRECONDITION: ProtocolError,
}


class RunNotFound(BiofedError, LookupError):
    """The coordinator has no such run."""

    code = "not_found"


class ControlClient:
    """A researcher's or operator's client of the coordinator's ControlService."""

    def __init__(
        self, target: str, tls: TlsConfig, *, server_name: str | None = None, timeout: float = 30.0
    ) -> None:
        self._channel = secure_channel(target, tls, server_name=server_name)
        self._stub = pb_grpc.ControlServiceStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                raise RunNotFound(_details(exc)) from None
            error = _ERRORS.get(code, TransportError)
            raise error(f"coordinator: {_details(exc)}") from None

    def submit_run(
        self,
        spec_json: str | bytes,
        bundle: bytes = b"",
        *,
        agreement: bytes = b"",
        certificates: Mapping[str, bytes] | None = None,
    ) -> RunSummary:
        """Submit a job (with the task bundle it names, if any, and the signed study
        agreement it names with its signers' certificates); returns the new run."""
        request = pb.SubmitRunRequest(
            spec_json=spec_json.encode() if isinstance(spec_json, str) else spec_json,
            bundle=bundle,
            agreement=agreement,
            certificates=dict(certificates or {}),
        )
        return _summary(self._call(lambda: self._stub.SubmitRun(request, timeout=self.timeout)))

    def get_run(self, run_id: str) -> RunSummary:
        """One run's status."""
        return _summary(
            self._call(
                lambda: self._stub.GetRun(pb.RunRequest(run_id=run_id), timeout=self.timeout)
            )
        )

    def list_runs(self) -> list[RunSummary]:
        """Every run the coordinator knows."""
        response = self._call(
            lambda: self._stub.ListRuns(pb.ListRunsRequest(), timeout=self.timeout)
        )
        return [_summary(r) for r in response.runs]

    def cancel_run(self, run_id: str) -> RunSummary:
        """Ask the coordinator to stop a run at once (its current round is abandoned)."""
        return _summary(
            self._call(
                lambda: self._stub.CancelRun(pb.RunRequest(run_id=run_id), timeout=self.timeout)
            )
        )

    def watch_run(
        self, run_id: str, *, after_seq: int = 0, follow: bool = False
    ) -> Iterator[EventInfo]:
        """A run's events; with ``follow``, until the run ends."""
        stream = self._call(
            lambda: self._stub.WatchRun(
                pb.WatchRunRequest(run_id=run_id, after_seq=after_seq, follow=follow)
            )
        )

        def events() -> Iterator[EventInfo]:
            for e in stream:
                yield EventInfo(
                    seq=e.seq,
                    time=e.time,
                    round=e.round,
                    kind=e.kind,
                    node_id=e.node_id,
                    message=e.message,
                )

        yield from self._call(lambda: list(events())) if not follow else self._follow(events())

    def _follow(self, events: Iterator[EventInfo]) -> Iterator[EventInfo]:
        while True:
            try:
                item = self._call(lambda: next(events, None))
            except TransportError:
                return
            if item is None:
                return
            yield item

    def download_result(self, run_id: str) -> bytes:
        """The final model of a finished run, as safetensors bytes."""

        def fetch() -> bytes:
            parts = [
                c.data
                for c in self._stub.DownloadResult(
                    pb.RunRequest(run_id=run_id), timeout=self.timeout
                )
            ]
            return b"".join(parts)

        return self._call(fetch)

    def list_nodes(self) -> list[NodeSummary]:
        """Nodes the coordinator knows, with their status."""
        response = self._call(
            lambda: self._stub.ListNodes(pb.ListNodesRequest(), timeout=self.timeout)
        )
        return [
            NodeSummary(
                node_id=n.node_id,
                status=n.status,
                last_seen=n.last_seen,
                properties_json=n.properties_json,
            )
            for n in response.nodes
        ]


def _summary(info: pb.RunInfo) -> RunSummary:
    return RunSummary(
        run_id=info.run_id,
        status=info.status,
        owner=info.owner,
        completed_rounds=info.completed_rounds,
        total_rounds=info.total_rounds,
        error=info.error,
        summary_json=info.summary_json or "{}",
        created_at=info.created_at,
        updated_at=info.updated_at,
    )
