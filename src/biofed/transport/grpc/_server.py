"""The coordinator's gRPC endpoint: NodeService and ControlService over mTLS."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import TypeVar

import grpc

from biofed.core import BiofedError, PayloadError, TransportError
from biofed.transport.grpc._control import ControlHandler, RunSummary
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc
from biofed.transport.grpc._hub import DatasetDeclaration, NodeHub, Session
from biofed.transport.grpc._serde import (
    CHUNK_BYTES,
    CHUNK_WINDOW,
    Reassembler,
    blob_manifest,
    chunks,
    error_reply,
    reply_from_wire,
)
from biofed.transport.grpc._tls import (
    SERVER_OPTIONS,
    Authenticator,
    Peer,
    TlsConfig,
    abort,
    authenticate,
    server_credentials,
)

_NODE_ROLES = frozenset({"site"})
_MAX_UPLOADS_PER_NODE = 4
T = TypeVar("T")
_CONTROL_ROLES = frozenset({"researcher", "admin"})


def _require(context: grpc.ServicerContext, peer: Peer, roles: frozenset[str]) -> None:
    if peer.role not in roles:
        context.abort(
            grpc.StatusCode.PERMISSION_DENIED,
            f"policy: {peer.name!r} has role {peer.role!r}; this call needs {sorted(roles)}",
        )


class _ByteBudget:
    """Bounds the bytes of replies held by the coordinator: from the start of their
    reassembly until the run's engine has folded them (it asks for the next reply).

    Uploads wait (in HTTP/2 flow control: the coordinator stops reading) until their declared
    size fits the budget; one reply is always admitted, however large, so a model bigger than
    the budget moves one reply at a time. Small replies never wait for each other.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, nbytes: int) -> Callable[[], None]:
        """Wait for room for ``nbytes``; returns the (idempotent) release."""
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or self.used + nbytes <= self.limit)
            self.used += nbytes
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._cond:
                self.used -= nbytes
                self._cond.notify_all()

        return release


class _IdleGuard:
    """Cancels an RPC whose peer sends nothing for ``timeout`` seconds.

    Security notes
    --------------
    Threat: a site with a valid certificate opens many uploads and sends nothing, holding
    every server thread (a slow-loris attack) so researchers and other sites are starved.
    Every node-facing stream must make progress, or it is cancelled.
    """

    def __init__(self, context: grpc.ServicerContext, timeout: float) -> None:
        self._context = context
        self._timeout = timeout
        self._last = time.monotonic()
        self._done = threading.Event()
        threading.Thread(target=self._run, name="biofed-idle-guard", daemon=True).start()

    def kick(self) -> None:
        """The peer made progress."""
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._done.wait(min(1.0, self._timeout / 4)):
            if time.monotonic() - self._last > self._timeout:
                self._context.cancel()  # type: ignore[no-untyped-call]
                return

    def close(self) -> None:
        """The RPC is over."""
        self._done.set()

    def watch(self, messages: Iterator[T]) -> Iterator[T]:
        """``messages``, kicking the guard at each one."""
        for message in messages:
            self.kick()
            yield message


class _NodeServicer(pb_grpc.NodeServiceServicer):
    def __init__(
        self,
        hub: NodeHub,
        authenticator: Authenticator,
        ping_interval: float,
        upload_budget_bytes: int,
        idle_timeout: float,
        control: ControlHandler | None = None,
    ) -> None:
        self.control = control
        self.hub = hub
        self.authenticator = authenticator
        self.ping_interval = ping_interval
        self.upload_budget = _ByteBudget(upload_budget_bytes)
        self.idle_timeout = idle_timeout
        self._uploads: dict[str, int] = {}
        self._uploads_lock = threading.Lock()

    def Connect(  # noqa: N802 - gRPC method name
        self, request_iterator: Iterator[pb.NodeMessage], context: grpc.ServicerContext
    ) -> Iterator[pb.ServerMessage]:
        peer = authenticate(context, self.authenticator)
        _require(context, peer, _NODE_ROLES)
        guard = _IdleGuard(context, self.idle_timeout)
        try:
            first = next(request_iterator, None)
        finally:
            guard.close()
        if first is None or not first.HasField("hello"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "protocol: a session starts with hello")
        hello = first.hello
        datasets = [
            DatasetDeclaration(
                name=d.name, num_examples=int(d.num_examples), num_features=int(d.num_features)
            )
            for d in hello.datasets
        ]
        session = self.hub.open_session(peer.name, hello.session_id or "anonymous", datasets)
        context.add_callback(lambda: self.hub.close_session(session))
        reader = threading.Thread(
            target=self._read_session,
            args=(request_iterator, peer, session),
            name=f"biofed-session-{peer.name}",
            daemon=True,
        )
        reader.start()
        try:
            yield pb.ServerMessage(ping=pb.Ping(time=self.hub.clock()))  # welcome: session open
            while context.is_active() and not session.closed.is_set():
                try:
                    item = session.outbox.get(timeout=self.ping_interval)
                except queue.Empty:
                    yield pb.ServerMessage(ping=pb.Ping(time=self.hub.clock()))
                    continue
                if item is None:
                    return
                if isinstance(item, pb.ServerMessage):  # control: a run's cancellation
                    yield item
                    continue
                header, payload = item
                if payload.size <= CHUNK_BYTES:  # one message: header with the payload inline
                    header.inline_payload = payload.to_bytes()
                    yield pb.ServerMessage(instruction=header)
                    continue
                yield pb.ServerMessage(instruction=header)
                for chunk in chunks(header.transfer_id, payload):
                    if not self._take_credit(session, context):
                        return
                    yield pb.ServerMessage(chunk=chunk)
        finally:
            self.hub.close_session(session)

    def _take_credit(self, session: Session, context: grpc.ServicerContext) -> bool:
        """Wait until the node has room for one more chunk (False: the session ended)."""
        while not session.credits.acquire(timeout=self.ping_interval):
            if session.closed.is_set() or not context.is_active():
                return False
        return not session.closed.is_set()

    def _read_session(
        self, request_iterator: Iterator[pb.NodeMessage], peer: Peer, session: Session
    ) -> None:
        """Replies that arrive inline on a node's session stream."""
        try:
            for message in request_iterator:
                kind = message.WhichOneof("body")
                if kind == "reply":
                    self._accept(peer, message.reply, None)
                elif kind == "credit":
                    for _ in range(min(int(message.credit), CHUNK_WINDOW)):
                        session.credits.release()
                else:
                    self.hub.wire_error("unknown", 0, peer.name, "a second hello on one session")
        except grpc.RpcError:
            pass  # the stream ended; the Connect handler closes the session
        finally:
            self.hub.close_session(session)

    def SendReply(  # noqa: N802
        self, request_iterator: Iterator[pb.ReplyChunk], context: grpc.ServicerContext
    ) -> pb.Ack:
        peer = authenticate(context, self.authenticator)
        _require(context, peer, _NODE_ROLES)
        with self._uploads_lock:
            if self._uploads.get(peer.name, 0) >= _MAX_UPLOADS_PER_NODE:
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"protocol: at most {_MAX_UPLOADS_PER_NODE} uploads at once per node",
                )
            self._uploads[peer.name] = self._uploads.get(peer.name, 0) + 1
        guard = _IdleGuard(context, self.idle_timeout)
        try:
            messages = guard.watch(request_iterator)
            first = next(messages, None)
            if first is None or not first.HasField("header"):
                return pb.Ack(accepted=False, message="payload: a reply must start with its header")
            return self._accept(peer, first.header, messages)
        finally:
            guard.close()
            with self._uploads_lock:
                self._uploads[peer.name] -= 1

    def _accept(
        self, peer: Peer, header: pb.ReplyHeader, rest: Iterator[pb.ReplyChunk] | None
    ) -> pb.Ack:
        """Check one reply against the instruction it answers, reassemble, decode, deliver.

        ``rest`` holds the chunks of a streamed upload; ``None`` means the payload is inline.
        """
        claimed = False
        try:
            outstanding = self.hub.claim(
                header.transfer_id, peer.name, header.run_id, header.round, header.kind
            )
            claimed = True
            release = self.upload_budget.acquire(int(header.total_bytes))
            try:
                assembler = Reassembler(
                    header.transfer_id,
                    blob_manifest(header.blobs),
                    int(header.total_bytes),
                    max_bytes=outstanding.expected_bytes,
                )
                if rest is None:
                    assembler.add(
                        pb.Chunk(
                            transfer_id=header.transfer_id, offset=0, data=header.inline_payload
                        )
                    )
                else:
                    if header.inline_payload:
                        raise PayloadError("a streamed reply may not also carry an inline payload")
                    for message in rest:
                        if not message.HasField("chunk"):
                            raise PayloadError("a second header arrived inside one reply")
                        assembler.add(message.chunk)
                reply = reply_from_wire(
                    header, assembler.finish(), peer.name, max_bytes=outstanding.expected_bytes
                )
            except BaseException:
                release()
                raise
        except BiofedError as exc:
            self._refuse(header, peer.name, str(exc), claimed=claimed)
            return pb.Ack(accepted=False, message=f"{exc.code}: {exc}")
        self.hub.deliver(reply, release)
        return pb.Ack(accepted=True)

    def _refuse(self, header: pb.ReplyHeader, node_id: str, message: str, *, claimed: bool) -> None:
        if claimed:  # the run awaits this node: let its engine record the refusal
            try:
                self.hub.deliver(error_reply(header, node_id, message))
                return
            except BiofedError:
                pass
        self.hub.wire_error(header.run_id, header.round, node_id, message)

    def FetchBundle(  # noqa: N802
        self, request: pb.BundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        peer = authenticate(context, self.authenticator)
        _require(context, peer, _NODE_ROLES)
        if self.control is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "this coordinator distributes no bundles")
        try:
            data = self.control.bundle(peer, request.digest)
        except (BiofedError, LookupError) as exc:
            abort(context, exc)
        yield from chunks(request.digest, data)

    def Heartbeat(  # noqa: N802
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.HeartbeatResponse:
        peer = authenticate(context, self.authenticator)
        _require(context, peer, _NODE_ROLES)
        if not self.hub.heartbeat(peer.name, request.session_id):
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "protocol: unknown session")
        return pb.HeartbeatResponse(interval_s=self.hub.heartbeat_interval)


def _run_info(summary: RunSummary) -> pb.RunInfo:
    return pb.RunInfo(
        run_id=summary.run_id,
        status=summary.status,
        owner=summary.owner,
        completed_rounds=summary.completed_rounds,
        total_rounds=summary.total_rounds,
        error=summary.error,
        summary_json=summary.summary_json,
        created_at=summary.created_at,
        updated_at=summary.updated_at,
    )


class _ControlServicer(pb_grpc.ControlServiceServicer):
    def __init__(self, handler: ControlHandler, authenticator: Authenticator) -> None:
        self.handler = handler
        self.authenticator = authenticator

    def _peer(self, context: grpc.ServicerContext) -> Peer:
        peer = authenticate(context, self.authenticator)
        _require(context, peer, _CONTROL_ROLES)
        return peer

    def _answer(self, context: grpc.ServicerContext, fn: Callable[[Peer], T]) -> T:
        """Authenticate the caller, run ``fn`` for them, map biofed errors to statuses."""
        peer = self._peer(context)
        try:
            return fn(peer)
        except (BiofedError, LookupError) as exc:
            abort(context, exc)

    def SubmitRun(self, request: pb.SubmitRunRequest, context: grpc.ServicerContext) -> pb.RunInfo:  # noqa: N802
        return _run_info(
            self._answer(
                context,
                lambda p: self.handler.submit_run(
                    p,
                    request.spec_json,
                    request.bundle,
                    request.agreement,
                    dict(request.certificates),
                ),
            )
        )

    def GetRun(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunInfo:  # noqa: N802
        return _run_info(self._answer(context, lambda p: self.handler.get_run(p, request.run_id)))

    def ListRuns(  # noqa: N802
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        runs = self._answer(context, self.handler.list_runs)
        return pb.ListRunsResponse(runs=[_run_info(r) for r in runs])

    def WatchRun(  # noqa: N802
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunEvent]:
        peer = self._peer(context)
        try:
            events = self.handler.watch_run(
                peer, request.run_id, int(request.after_seq), request.follow, context.is_active
            )
            for e in events:
                yield pb.RunEvent(
                    seq=e.seq,
                    time=e.time,
                    round=e.round,
                    kind=e.kind,
                    node_id=e.node_id,
                    message=e.message,
                )
        except (BiofedError, LookupError) as exc:
            abort(context, exc)

    def CancelRun(self, request: pb.RunRequest, context: grpc.ServicerContext) -> pb.RunInfo:  # noqa: N802
        return _run_info(
            self._answer(context, lambda p: self.handler.cancel_run(p, request.run_id))
        )

    def DownloadResult(  # noqa: N802
        self, request: pb.RunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        data = self._answer(context, lambda p: self.handler.run_result(p, request.run_id))
        yield from chunks(request.run_id, data)

    def ListNodes(  # noqa: N802
        self, request: pb.ListNodesRequest, context: grpc.ServicerContext
    ) -> pb.ListNodesResponse:
        nodes = self._answer(context, self.handler.list_nodes)
        return pb.ListNodesResponse(
            nodes=[
                pb.NodeStatus(
                    node_id=n.node_id,
                    status=n.status,
                    last_seen=n.last_seen,
                    properties_json=n.properties_json,
                )
                for n in nodes
            ]
        )


class CoordinatorServer:
    """The coordinator's mTLS gRPC server.

    Parameters
    ----------
    address:
        ``host:port`` to listen on (port 0 picks a free one; see :attr:`port`).
    tls:
        The coordinator's certificate, key and the consortium CA.
    authenticator:
        Maps a verified client certificate to a :class:`Peer` (and refuses revoked ones).
    hub:
        The node sessions.
    control:
        Answers the researchers' control RPCs (``None``: NodeService only).
    max_workers:
        Threads serving RPCs (each connected node holds one for its stream).
    ping_interval:
        Seconds between keep-alive pings on idle node streams.
    upload_budget_bytes:
        Bytes of replies reassembled at once (larger uploads go one at a time): bounds the
        coordinator's memory to about the model, the running aggregate and this budget.
    idle_timeout:
        A node-facing stream that sends nothing for this long is cancelled (and a node may
        hold at most four uploads at once), so no site can starve the server's threads.
    """

    def __init__(
        self,
        address: str,
        tls: TlsConfig,
        authenticator: Authenticator,
        hub: NodeHub,
        *,
        control: ControlHandler | None = None,
        max_workers: int = 256,
        ping_interval: float = 5.0,
        upload_budget_bytes: int = 256 * 1024 * 1024,
        idle_timeout: float = 30.0,
    ) -> None:
        self.hub = hub
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="biofed-rpc"),
            options=SERVER_OPTIONS,
            maximum_concurrent_rpcs=max_workers * 4,
        )
        pb_grpc.add_NodeServiceServicer_to_server(
            _NodeServicer(
                hub, authenticator, ping_interval, upload_budget_bytes, idle_timeout, control
            ),
            self._server,
        )
        if control is not None:
            pb_grpc.add_ControlServiceServicer_to_server(
                _ControlServicer(control, authenticator), self._server
            )
        try:
            self.port = self._server.add_secure_port(address, server_credentials(tls))
        except RuntimeError as exc:
            raise TransportError(f"cannot listen on {address}: {exc}") from exc
        if self.port == 0:
            raise TransportError(f"cannot listen on {address} (address in use?)")
        self._sweeper = threading.Thread(target=self._sweep, name="biofed-sweeper", daemon=True)
        self._stopping = threading.Event()

    def start(self) -> CoordinatorServer:
        """Start serving (returns at once)."""
        self._server.start()
        self._sweeper.start()
        return self

    def _sweep(self) -> None:
        while not self._stopping.wait(self.hub.heartbeat_interval / 2):
            self.hub.sweep()

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving; open streams are cancelled after ``grace`` seconds."""
        self._stopping.set()
        for session in self.hub.sessions():
            self.hub.close_session(session)
        self._server.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops."""
        self._server.wait_for_termination()
