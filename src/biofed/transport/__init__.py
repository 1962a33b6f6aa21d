"""biofed.transport: moving messages between the coordinator and nodes."""

from biofed.transport._base import Transport
from biofed.transport._inmemory import InMemoryTransport, NodeHandler

__all__ = ["InMemoryTransport", "NodeHandler", "Transport"]
