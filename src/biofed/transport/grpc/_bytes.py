"""Instructions and replies as one bytes object each, in the wire form of :mod:`._serde`.

A simulation's worker processes and Ray actors exchange messages with the driver as bytes,
never as pickled dataclasses: the same header and payload the gRPC transport streams, framed
in one buffer, so a virtual site decodes exactly what a networked node decodes.

Frame (all integers unsigned, big-endian)::

    magic (4 bytes: b"BFI1" instruction, b"BFR1" reply)
    node id length (u32) | node id (UTF-8)
    header length (u32)  | header (InstructionHeader / ReplyHeader, protobuf)
    payload              | exactly header.total_bytes, described by header.blobs

Security notes
--------------
Threat: a corrupted or hostile buffer (a worker running researcher code that writes to its
pipe) makes the driver allocate huge buffers or accept malformed arrays. Decoding checks the
magic, every length against what is left of the buffer, the header's declared payload size
against ``max_bytes`` (default: the buffer's own length) before allocating, and the manifest
against the payload exactly (:class:`._serde.Reassembler`); arrays are decoded by the
safetensors codec (no pickle, no code). Any failure raises one
:class:`~biofed.core.PayloadError` naming the cause. Bytes are not authenticated: the frame
is for processes of one machine under one user, never for a network (that is gRPC over mTLS).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from biofed.core import ConfigurationError, Instruction, PayloadError, Reply
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._serde import (
    Payload,
    Reassembler,
    blob_manifest,
    instruction_from_wire,
    instruction_header,
    pack,
    reply_from_wire,
    reply_header,
)

__all__ = ["decode_instruction", "decode_reply", "encode_instruction", "encode_reply"]

_INSTRUCTION = b"BFI1"
_REPLY = b"BFR1"
_U32 = struct.Struct(">I")
#: Transfer id written in every framed header (a frame is one whole transfer).
_TRANSFER = "frame"

_H = TypeVar("_H", pb.InstructionHeader, pb.ReplyHeader)


def _frame(magic: bytes, node_id: str, header: Message, payload: Payload) -> bytes:
    name = node_id.encode()
    head = header.SerializeToString()
    return b"".join(
        [magic, _U32.pack(len(name)), name, _U32.pack(len(head)), head, *payload.segments]
    )


def encode_instruction(instruction: Instruction) -> bytes:
    """``instruction`` as one frame: its gRPC header and payload, and its node id."""
    payload = pack(instruction.parameters, instruction.extras)
    header = instruction_header(instruction, _TRANSFER, payload)
    return _frame(_INSTRUCTION, instruction.node_id, header, payload)


def encode_reply(reply: Reply) -> bytes:
    """``reply`` as one frame: its gRPC header and payload, and its node id."""
    payload = pack(reply.parameters, reply.extras)
    header = reply_header(reply, _TRANSFER, payload)
    return _frame(_REPLY, reply.node_id, header, payload)


def _read(view: memoryview, offset: int, what: str) -> tuple[memoryview, int]:
    if offset + _U32.size > len(view):
        raise PayloadError(f"frame truncated before the {what} length")
    (size,) = _U32.unpack_from(view, offset)
    offset += _U32.size
    if offset + size > len(view):
        raise PayloadError(f"frame truncated inside the {what} ({size} bytes declared)")
    return view[offset : offset + size], offset + size


def _unframe(
    data: bytes | bytearray | memoryview, magic: bytes, header: _H, what: str, max_bytes: int | None
) -> tuple[_H, str, Mapping[str, memoryview]]:
    view = memoryview(data).cast("B")
    if bytes(view[:4]) != magic:
        raise PayloadError(f"not an encoded {what} (wrong magic bytes)")
    name, offset = _read(view, 4, "node id")
    try:
        node_id = bytes(name).decode()
    except UnicodeDecodeError:
        raise PayloadError(f"the {what}'s node id is not UTF-8") from None
    head, offset = _read(view, offset, "header")
    try:
        header.ParseFromString(bytes(head))
    except DecodeError:
        raise PayloadError(f"the {what} header is not valid protobuf") from None
    payload = view[offset:]
    if header.total_bytes != len(payload):
        raise PayloadError(
            f"the {what} declares {header.total_bytes} payload bytes, the frame holds "
            f"{len(payload)}"
        )
    assembler = Reassembler(
        _TRANSFER,
        blob_manifest(header.blobs),
        header.total_bytes,
        max_bytes=len(view) if max_bytes is None else max_bytes,
    )
    assembler.add(pb.Chunk(transfer_id=_TRANSFER, offset=0, data=bytes(payload)))
    return header, node_id, assembler.finish()


def decode_instruction(
    data: bytes | bytearray | memoryview, *, max_bytes: int | None = None
) -> Instruction:
    """The instruction :func:`encode_instruction` framed.

    Raises
    ------
    PayloadError
        If ``data`` is not a whole, well-formed instruction frame, or its payload exceeds
        ``max_bytes`` (default: the frame's length).
    """
    header, node_id, blobs = _unframe(
        data, _INSTRUCTION, pb.InstructionHeader(), "instruction", max_bytes
    )
    limit = header.total_bytes if max_bytes is None else max_bytes
    try:
        return instruction_from_wire(header, blobs, node_id, max_bytes=limit)
    except ConfigurationError as exc:
        raise PayloadError(f"malformed instruction header: {exc}") from None


def decode_reply(data: bytes | bytearray | memoryview, *, max_bytes: int | None = None) -> Reply:
    """The reply :func:`encode_reply` framed.

    Raises
    ------
    PayloadError
        If ``data`` is not a whole, well-formed reply frame, or its payload exceeds
        ``max_bytes`` (default: the frame's length).
    """
    header, node_id, blobs = _unframe(data, _REPLY, pb.ReplyHeader(), "reply", max_bytes)
    limit = header.total_bytes if max_bytes is None else max_bytes
    try:
        return reply_from_wire(header, blobs, node_id, max_bytes=limit)
    except ConfigurationError as exc:
        raise PayloadError(f"malformed reply header: {exc}") from None
