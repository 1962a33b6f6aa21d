"""The transport interface: the round engine's only way to reach nodes.

A transport moves messages; it makes no decisions. The in-memory transport runs node
handlers in the same process; the gRPC transport (networked federation) implements the same
interface, and one contract suite runs against both.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from biofed.core import Instruction, NodeInfo, Reply


class Transport(abc.ABC):
    """Coordinator-side view of the nodes of a federation."""

    @abc.abstractmethod
    def available_nodes(self) -> Sequence[NodeInfo]:
        """A snapshot of the nodes that can take instructions now."""

    @abc.abstractmethod
    def send(self, instruction: Instruction) -> None:
        """Queue ``instruction`` for its node.

        Raises
        ------
        TransportError
            If the node is unknown or cannot be reached.
        """

    @abc.abstractmethod
    def receive(self, timeout: float | None = None) -> Reply | None:
        """The next reply from any node, or ``None`` if none arrives within ``timeout`` seconds
        (``None``: wait as long as replies are outstanding). Returns ``None`` at once when no
        reply is outstanding."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads; idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
