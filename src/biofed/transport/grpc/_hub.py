"""The coordinator's side of the node connections: sessions, routing, and per-run transports.

Nodes dial out and hold a ``Connect`` stream open; the hub keeps one session per node
identity (a reconnecting node replaces its old session), queues instructions on it, matches
uploaded replies to the instructions they answer, and hands each run a
:class:`RunTransport` — the :class:`~biofed.transport.Transport` its round engine drives.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from biofed.core import (
    Instruction,
    NodeInfo,
    ParameterSet,
    ProtocolError,
    Reply,
    TransportError,
    check_id,
)
from biofed.transport._base import Transport
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._serde import (
    CHUNK_WINDOW,
    Payload,
    instruction_header,
    new_transfer_id,
    pack,
)

NodeEvent = Literal["connected", "reconnected", "disconnected", "lost"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetDeclaration:
    """A dataset a node says it holds (name, size, columns)."""

    name: str
    num_examples: int
    num_features: int


@dataclass(slots=True, kw_only=True)
class Session:
    """One connected node process."""

    node_id: str
    session_id: str
    datasets: tuple[DatasetDeclaration, ...]
    last_seen: float
    #: What the session's stream sends next: an instruction with its payload, a control
    #: message (a run's cancellation), or None to end the stream.
    outbox: queue.Queue[tuple[pb.InstructionHeader, Payload] | pb.ServerMessage | None] = field(
        default_factory=queue.Queue
    )
    closed: threading.Event = field(default_factory=threading.Event)
    credits: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(CHUNK_WINDOW))


@dataclass(frozen=True, slots=True, kw_only=True)
class Outstanding:
    """An instruction sent and not yet answered."""

    node_id: str
    run_id: str
    round: int
    kind: str
    expected_bytes: int


#: Largest reply to a query instruction (which carries no model to size it by): an
#: answer's float64 arrays (``biofed.analytics.MAX_ANSWER_VALUES``, 2^24 values) and headroom.
QUERY_REPLY_BYTES = 8 * (1 << 24) + (1 << 20)


class NodeHub:
    """Sessions of connected nodes and the replies they upload.

    Parameters
    ----------
    heartbeat_interval:
        Seconds between a node's heartbeats (told to nodes).
    missed_heartbeats:
        A node silent for this many intervals is marked lost and leaves ``available``.
    on_node_event:
        Called with (node_id, event) on connect, reconnect, disconnect and loss.
    on_wire_error:
        Called with (run_id, round, node_id, message) when an upload is refused before
        it reaches a run (unknown or replayed transfer, malformed stream…).
    clock:
        Monotonic clock (injected for tests).
    """

    def __init__(
        self,
        *,
        heartbeat_interval: float = 2.0,
        missed_heartbeats: int = 3,
        on_node_event: Callable[[str, NodeEvent], None] | None = None,
        on_wire_error: Callable[[str, int, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.missed_heartbeats = missed_heartbeats
        self._on_node_event = on_node_event or (lambda node, event: None)
        self._on_wire_error = on_wire_error or (lambda run, rnd, node, msg: None)
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._lost: set[str] = set()
        self._outstanding: dict[str, Outstanding] = {}
        self._runs: dict[str, RunTransport] = {}

    # -- sessions -----------------------------------------------------------------------
    def open_session(
        self, node_id: str, session_id: str, datasets: Sequence[DatasetDeclaration]
    ) -> Session:
        """Register a node's new stream, replacing (and closing) any older one."""
        check_id(node_id, what="node id")
        session = Session(
            node_id=node_id,
            session_id=session_id,
            datasets=tuple(datasets),
            last_seen=self.clock(),
        )
        with self._lock:
            old = self._sessions.get(node_id)
            self._sessions[node_id] = session
            self._lost.discard(node_id)
        if old is not None:
            self._close(old)
        self._on_node_event(node_id, "reconnected" if old else "connected")
        return session

    def close_session(self, session: Session) -> None:
        """The node's stream ended (crash, network cut, shutdown)."""
        with self._lock:
            current = self._sessions.get(session.node_id) is session
            if current:
                del self._sessions[session.node_id]
        self._close(session)
        if current:
            self._on_node_event(session.node_id, "disconnected")

    def _close(self, session: Session) -> None:
        session.closed.set()
        session.outbox.put(None)

    def heartbeat(self, node_id: str, session_id: str) -> bool:
        """Record a heartbeat; False if the session is unknown (the node should reconnect)."""
        with self._lock:
            session = self._sessions.get(node_id)
            if session is None or session.session_id != session_id:
                return False
            session.last_seen = self.clock()
            revived = node_id in self._lost
            self._lost.discard(node_id)
        if revived:
            self._on_node_event(node_id, "reconnected")
        return True

    def sweep(self) -> None:
        """Mark nodes lost after missed heartbeats (call periodically)."""
        limit = self.heartbeat_interval * self.missed_heartbeats
        now = self.clock()
        newly_lost = []
        with self._lock:
            for node_id, session in self._sessions.items():
                if now - session.last_seen > limit and node_id not in self._lost:
                    self._lost.add(node_id)
                    newly_lost.append(node_id)
        for node_id in newly_lost:
            self._on_node_event(node_id, "lost")

    def sessions(self) -> list[Session]:
        """Live sessions (lost ones excluded)."""
        with self._lock:
            return [s for n, s in self._sessions.items() if n not in self._lost]

    # -- runs ------------------------------------------------------------------------------
    def transport_for(self, run_id: str, dataset: str) -> RunTransport:
        """The transport a run's engine uses: nodes that declare ``dataset``."""
        with self._lock:
            if run_id in self._runs:
                raise ProtocolError(f"run {run_id!r} already has a transport")
            transport = RunTransport(self, run_id, dataset)
            self._runs[run_id] = transport
            return transport

    def _release(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)
            for tid in [t for t, o in self._outstanding.items() if o.run_id == run_id]:
                del self._outstanding[tid]

    def cancel_run(self, run_id: str) -> int:
        """Tell every connected node that ``run_id`` is cancelled: instructions of the run
        still queued here are dropped, its outstanding transfers are forgotten (a late reply
        is refused), and each node gets a ``cancel_run`` message to drop what it holds.
        Returns the number of queued instructions dropped here."""
        with self._lock:
            sessions = list(self._sessions.values())
            for tid in [t for t, o in self._outstanding.items() if o.run_id == run_id]:
                del self._outstanding[tid]
            transport = self._runs.get(run_id)
        dropped = 0
        for session in sessions:
            with session.outbox.mutex:
                kept = [
                    item
                    for item in session.outbox.queue
                    if not (isinstance(item, tuple) and item[0].run_id == run_id)
                ]
                dropped += len(session.outbox.queue) - len(kept)
                session.outbox.queue.clear()
                session.outbox.queue.extend(kept)
            session.outbox.put(pb.ServerMessage(cancel_run=pb.RunCancelled(run_id=run_id)))
        if transport is not None:
            transport.cancel()
        return dropped

    def dispatch(self, instruction: Instruction, payload: Payload, expected_bytes: int) -> None:
        """Queue an instruction on its node's session."""
        with self._lock:
            session = self._sessions.get(instruction.node_id)
            if session is None or instruction.node_id in self._lost:
                raise TransportError(f"node {instruction.node_id!r} is not connected")
            transfer_id = new_transfer_id()
            self._outstanding[transfer_id] = Outstanding(
                node_id=instruction.node_id,
                run_id=instruction.run_id,
                round=instruction.round,
                kind=instruction.kind.value,
                expected_bytes=expected_bytes,
            )
        session.outbox.put((instruction_header(instruction, transfer_id, payload), payload))

    def claim(
        self, transfer_id: str, node_id: str, run_id: str, round_: int, kind: str
    ) -> Outstanding:
        """Take the instruction an upload answers; each transfer is answerable once, and only
        by a reply whose header matches it (a mismatched one leaves it outstanding)."""
        with self._lock:
            outstanding = self._outstanding.get(transfer_id)
            if outstanding is None:
                raise ProtocolError("reply to an unknown, expired or already answered instruction")
            if outstanding.node_id != node_id:
                raise ProtocolError("reply to an instruction sent to another node")
            if (run_id, round_, kind) != (outstanding.run_id, outstanding.round, outstanding.kind):
                raise ProtocolError("reply header does not match the instruction it answers")
            del self._outstanding[transfer_id]
            return outstanding

    def deliver(self, reply: Reply, release: Callable[[], None] = lambda: None) -> None:
        """Route a decoded reply to its run's transport; ``release`` frees the memory budget
        it holds once the run has folded it."""
        with self._lock:
            transport = self._runs.get(reply.run_id)
        if transport is None:
            release()
            self.wire_error(reply.run_id, reply.round, reply.node_id, "reply for no active run")
            return
        transport._replies.put((reply, release))

    def wire_error(self, run_id: str, round_: int, node_id: str, message: str) -> None:
        """Report an upload refused before it reached a run."""
        self._on_wire_error(run_id, round_, node_id, message)


class RunTransport(Transport):
    """One run's view of the hub (what its round engine drives)."""

    def __init__(self, hub: NodeHub, run_id: str, dataset: str) -> None:
        self._hub = hub
        self.run_id = run_id
        self.dataset = dataset
        self._replies: queue.Queue[tuple[Reply, Callable[[], None]] | None] = queue.Queue()
        self._cancelled = False
        self._held: Callable[[], None] = lambda: None
        self._pending = 0
        self._payload_cache: tuple[tuple[str, ...], tuple[ParameterSet, ...], Payload] | None = None
        self._closed = False

    def available_nodes(self) -> Sequence[NodeInfo]:
        nodes = []
        for session in self._hub.sessions():
            for ds in session.datasets:
                if ds.name == self.dataset:
                    nodes.append(NodeInfo(node_id=session.node_id, num_examples=ds.num_examples))
        return sorted(nodes, key=lambda n: n.node_id)

    def _payload(self, instruction: Instruction) -> Payload:
        # Broadcast: encode the same parameters once per round for every node. The cache
        # holds the very objects it was built from and matches them by identity, so
        # per-node extras (secure aggregation's messages) never reach the wrong node, and a
        # freed object's reused id cannot match.
        names = tuple(sorted(instruction.extras))
        objects = (instruction.parameters, *(instruction.extras[n] for n in names))
        cached = self._payload_cache
        if not (
            cached is not None
            and cached[0] == names
            and len(cached[1]) == len(objects)
            and all(x is y for x, y in zip(cached[1], objects, strict=True))
        ):
            cached = (names, objects, pack(instruction.parameters, instruction.extras))
            self._payload_cache = cached
        return cached[2]

    def cancel(self) -> None:
        """The run is cancelled: refuse further sends, wake a waiting :meth:`receive`."""
        self._cancelled = True
        self._pending = 0
        self._replies.put(None)

    def send(self, instruction: Instruction) -> None:
        if self._closed or self._cancelled:
            raise TransportError("transport is closed" if self._closed else "run cancelled")
        if instruction.run_id != self.run_id:
            raise TransportError(f"this transport carries run {self.run_id!r} only")
        payload = self._payload(instruction)
        # A reply carries at most the model plus same-shaped extras: bound uploads by that.
        expected = 4 * payload.size + (1 << 20)
        if instruction.directives.query_request is not None:  # an answer: not model-sized
            expected = max(expected, QUERY_REPLY_BYTES)
        self._hub.dispatch(instruction, payload, expected)
        self._pending += 1

    def receive(self, timeout: float | None = None) -> Reply | None:
        self._payload_cache = None  # every instruction of the round is queued by now
        self._held()  # the engine has folded the previous reply: free its memory budget
        self._held = lambda: None
        if self._pending <= 0:
            return None
        try:
            item = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is None:  # cancelled
            return None
        reply, release = item
        self._held = release
        self._pending -= 1
        return reply

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._payload_cache = None
            self._held()
            while not self._replies.empty():
                item = self._replies.get_nowait()
                if item is not None:
                    item[1]()
            self._hub._release(self.run_id)
