"""In-memory transport: nodes are handlers in this process (simulation and tests).

Messages are passed by reference: ParameterSets are immutable, so no copy is needed and a
broadcast of a large model to many virtual sites costs nothing. Handlers run lazily, in the
order their instructions were sent, when the engine asks for the next reply — deterministic
by construction.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence

from biofed.core import (
    ConfigurationError,
    Instruction,
    NodeInfo,
    Reply,
    TransportError,
)
from biofed.transport._base import Transport

#: A node as the in-memory transport sees it: instruction in, reply out (``None``: the node
#: went silent, as if it crashed or its reply was lost).
NodeHandler = Callable[[Instruction], "Reply | None"]


class InMemoryTransport(Transport):
    """Transport to node handlers living in this process.

    Parameters
    ----------
    nodes:
        Node id → handler.
    info:
        Optional :class:`NodeInfo` per node id (defaults to ``NodeInfo(node_id=…)``).
    """

    def __init__(
        self,
        nodes: Mapping[str, NodeHandler],
        *,
        info: Mapping[str, NodeInfo] | None = None,
    ) -> None:
        self._handlers = dict(nodes)
        self._info = {nid: (info or {}).get(nid) or NodeInfo(node_id=nid) for nid in nodes}
        for nid, node_info in self._info.items():
            if node_info.node_id != nid:
                raise ConfigurationError(f"NodeInfo for {nid!r} names {node_info.node_id!r}")
        self._pending: collections.deque[Instruction] = collections.deque()
        self._offline: set[str] = set()
        self._closed = False

    # Simulation controls -------------------------------------------------------------
    def set_online(self, node_id: str, online: bool) -> None:
        """Take a node offline (it disappears from ``available_nodes``) or back online."""
        if node_id not in self._handlers:
            raise TransportError(f"unknown node {node_id!r}")
        if online:
            self._offline.discard(node_id)
        else:
            self._offline.add(node_id)

    # Transport -----------------------------------------------------------------------
    def available_nodes(self) -> Sequence[NodeInfo]:
        return [info for nid, info in self._info.items() if nid not in self._offline]

    def send(self, instruction: Instruction) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        if instruction.node_id not in self._handlers or instruction.node_id in self._offline:
            raise TransportError(f"node {instruction.node_id!r} is not connected")
        self._pending.append(instruction)

    def receive(self, timeout: float | None = None) -> Reply | None:
        while self._pending:
            instruction = self._pending.popleft()
            reply = self._handlers[instruction.node_id](instruction)
            if reply is not None:
                return reply
        return None

    def close(self) -> None:
        self._pending.clear()
        self._closed = True
