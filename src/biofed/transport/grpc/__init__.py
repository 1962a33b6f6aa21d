"""biofed.transport.grpc: the networked transport (gRPC over mutual TLS).

The generated protobuf code lives in ``_gen`` and nothing outside this package imports it;
``_serde`` is the one converter between wire and core types.
"""

from biofed.transport.grpc._bytes import (
    decode_instruction,
    decode_reply,
    encode_instruction,
    encode_reply,
)
from biofed.transport.grpc._client import ControlClient, InstructionHandler, NodeClient, RunNotFound
from biofed.transport.grpc._control import ControlHandler, EventInfo, NodeSummary, RunSummary
from biofed.transport.grpc._hub import DatasetDeclaration, NodeEvent, NodeHub, RunTransport
from biofed.transport.grpc._serde import CHUNK_BYTES
from biofed.transport.grpc._server import CoordinatorServer
from biofed.transport.grpc._tls import Authenticator, Peer, TlsConfig

__all__ = [
    "CHUNK_BYTES",
    "Authenticator",
    "ControlClient",
    "ControlHandler",
    "CoordinatorServer",
    "DatasetDeclaration",
    "EventInfo",
    "InstructionHandler",
    "NodeClient",
    "NodeEvent",
    "NodeHub",
    "NodeSummary",
    "Peer",
    "RunNotFound",
    "RunSummary",
    "RunTransport",
    "TlsConfig",
    "decode_instruction",
    "decode_reply",
    "encode_instruction",
    "encode_reply",
]
