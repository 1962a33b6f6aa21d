"""The one place that converts between wire messages (biofed.v1) and core types.

A payload is a concatenation of safetensors blobs — ``parameters`` first, then one
``extras/<key>`` blob per extra — described by a manifest of (name, size) in the header.
Payloads travel as chunks of :data:`CHUNK_BYTES` (or inline in the header when they fit one
chunk) and are reassembled into one preallocated buffer.

Security notes
--------------
Threat: a peer (or a man in the middle that somehow got past mTLS) sends a truncated,
oversized, out-of-order or malformed chunk stream, hoping to exhaust memory or make the
receiver accept corrupted arrays. The header's declared size is checked against a limit
before any buffer is allocated; chunks must arrive in order with no gap or overlap; the total
must match exactly; every blob is decoded by the safetensors codec, which refuses anything
but plain numeric arrays (no pickle, no code). Any failure raises
:class:`~biofed.core.PayloadError` naming what was wrong, never echoing the data. Integrity
and authenticity of every byte come from TLS 1.2+/1.3 AEAD records (AES-GCM or
ChaCha20-Poly1305, RFC 8446 §5.2) on the mutually authenticated channel; an application-level
SHA-256 on top measured at 200 MB/s here, the transfer's bottleneck, and protected nothing
TLS does not.

An instruction's typed sections travel in the header's one flat scalar map
(``config_json``): the job section and the round's directives as prefixed keys beside the
task's own keys (:func:`_wire_config` / :func:`_sections_from_wire`, with the key names of
:mod:`biofed.core.sections`), so the bytes are those of every earlier biofed.v1 peer. A study
job's spec (with its digest), its fitted preprocessing and a preprocessing pass's summary
request are JSON strings in that same map (``study.spec``, ``study.digest``,
``preprocessing``, ``summary.request``); a SUMMARISE instruction carries an empty model and
its reply the summary's arrays as its parameters, so the schema needs no new field.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from biofed.core import (
    ConfigurationError,
    Instruction,
    MessageKind,
    ParameterSet,
    PayloadError,
    Reply,
    Scalar,
    decode_parameters,
    encode_segments,
)
from biofed.core.sections import JobSection, RoundDirectives, flat_sections, split_flat
from biofed.transport.grpc._gen import federation_pb2 as pb

#: Bytes of payload per chunk message (well under gRPC's 4 MiB default message limit).
CHUNK_BYTES = 2 * 1024 * 1024
#: Chunks the coordinator may have sent to a node beyond those the node acknowledged
#: (credit-based flow control: what either side buffers stays under 8 x 2 MiB per node).
CHUNK_WINDOW = 8
_PARAMETERS = "parameters"
_EXTRAS = "extras/"


def new_transfer_id() -> str:
    """A fresh random id for one instruction and its reply."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class Payload:
    """Encoded arrays ready to stream: segments (views of the arrays' own memory, no copy),
    their manifest and digest."""

    segments: tuple[memoryview, ...]
    blobs: tuple[tuple[str, int], ...]

    @property
    def size(self) -> int:
        """Total bytes."""
        return sum(s.nbytes for s in self.segments)

    def to_bytes(self) -> bytes:
        """The payload as one bytes object (a copy: for small payloads and tests)."""
        return b"".join(self.segments)


def pack(parameters: ParameterSet | None, extras: Mapping[str, ParameterSet]) -> Payload:
    """Encode parameters and extras into one payload without copying array data."""
    parts: list[tuple[str, list[memoryview]]] = []
    if parameters is not None:
        parts.append((_PARAMETERS, encode_segments(parameters)))
    for key, value in extras.items():
        if "/" in key:
            raise ConfigurationError(f"extras key {key!r} may not contain '/'")
        parts.append((_EXTRAS + key, encode_segments(value)))
    return Payload(
        segments=tuple(segment for _, blob in parts for segment in blob),
        blobs=tuple((name, sum(s.nbytes for s in blob)) for name, blob in parts),
    )


def chunks(
    transfer_id: str, payload: Payload | bytes, size: int = CHUNK_BYTES
) -> Iterator[pb.Chunk]:
    """The payload as chunk messages of ``size`` bytes (at least one message, so an empty
    payload is explicit). Only one chunk's copy exists at a time."""
    segments = payload.segments if isinstance(payload, Payload) else (memoryview(payload),)
    offset = 0
    pending: list[memoryview] = []
    pending_bytes = 0
    for segment in segments:
        view = segment if segment.format == "B" else segment.cast("B")
        while view.nbytes:
            take = min(size - pending_bytes, view.nbytes)
            pending.append(view[:take])
            pending_bytes += take
            view = view[take:]
            if pending_bytes == size:
                yield pb.Chunk(transfer_id=transfer_id, offset=offset, data=b"".join(pending))
                offset += pending_bytes
                pending, pending_bytes = [], 0
    if pending_bytes or offset == 0:
        yield pb.Chunk(transfer_id=transfer_id, offset=offset, data=b"".join(pending))


class Reassembler:
    """Collects one payload's chunks into a preallocated buffer, checking every step.

    Parameters
    ----------
    transfer_id:
        The transfer the chunks must name.
    blobs:
        The header's manifest: (name, size) pairs.
    total_bytes:
        The header's declared size.
    max_bytes:
        Refuse a declared size above this before allocating anything.
    """

    def __init__(
        self,
        transfer_id: str,
        blobs: Sequence[tuple[str, int]],
        total_bytes: int,
        *,
        max_bytes: int,
    ) -> None:
        if total_bytes > max_bytes:
            raise PayloadError(
                f"declared payload of {total_bytes} bytes exceeds the limit of {max_bytes}"
            )
        if sum(size for _, size in blobs) != total_bytes:
            raise PayloadError("payload manifest does not add up to the declared size")
        names = [name for name, _ in blobs]
        if len(set(names)) != len(names):
            raise PayloadError("payload manifest names a blob twice")
        self.transfer_id = transfer_id
        self.blobs = tuple(blobs)
        self.total = total_bytes
        self._buffer = bytearray(total_bytes)
        self._filled = 0

    @property
    def complete(self) -> bool:
        """True once every declared byte arrived."""
        return self._filled == self.total

    def add(self, chunk: pb.Chunk) -> None:
        """Place one chunk; it must continue exactly where the previous one ended."""
        if chunk.transfer_id != self.transfer_id:
            raise PayloadError("chunk belongs to another transfer")
        if chunk.offset != self._filled:
            raise PayloadError(
                f"chunk at offset {chunk.offset} arrived, expected offset {self._filled} "
                "(chunks out of order, missing or repeated)"
            )
        end = self._filled + len(chunk.data)
        if end > self.total:
            raise PayloadError(f"chunks exceed the declared payload size of {self.total} bytes")
        self._buffer[self._filled : end] = chunk.data
        self._filled = end

    def finish(self) -> dict[str, memoryview]:
        """Check completeness; return each blob as a view into the buffer."""
        if not self.complete:
            raise PayloadError(
                f"payload truncated: {self._filled} of {self.total} declared bytes arrived"
            )
        view = memoryview(self._buffer)
        out: dict[str, memoryview] = {}
        offset = 0
        for name, size in self.blobs:
            out[name] = view[offset : offset + size]
            offset += size
        return out


def _split(
    blobs: Mapping[str, memoryview], *, max_bytes: int
) -> tuple[ParameterSet | None, dict[str, ParameterSet]]:
    parameters: ParameterSet | None = None
    extras: dict[str, ParameterSet] = {}
    for name, blob in blobs.items():
        decoded = decode_parameters(blob, max_bytes=max_bytes)
        if name == _PARAMETERS:
            parameters = decoded
        elif name.startswith(_EXTRAS) and len(name) > len(_EXTRAS):
            extras[name[len(_EXTRAS) :]] = decoded
        else:
            raise PayloadError(f"payload has an unknown blob {name!r}")
    return parameters, extras


def _config_json(config: Mapping[str, Scalar]) -> str:
    for value in config.values():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError("config values must be finite numbers")
    return json.dumps(dict(config), sort_keys=True)


def _config_from_json(text: str) -> dict[str, Scalar]:
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise PayloadError("instruction config is not valid JSON") from exc
    if not isinstance(value, dict):
        raise PayloadError("instruction config is not a JSON object")
    return value


def _wire_config(inst: Instruction) -> dict[str, Scalar]:
    """The instruction's sections and task config as the wire's one flat map."""
    return {**inst.task_config, **flat_sections(inst.job, inst.directives)}


def _sections_from_wire(
    config: Mapping[str, Scalar],
) -> tuple[JobSection, RoundDirectives, dict[str, Scalar]]:
    """The job section, the round's directives and the task's config of a wire map."""
    job, directives, task = split_flat(config)
    return JobSection(**job), RoundDirectives(**directives), task


_KINDS = frozenset(k.value for k in MessageKind)


def _kind(text: str) -> MessageKind:
    try:
        return MessageKind(text)
    except ValueError:
        raise PayloadError(f"unknown message kind {text!r}") from None


# -- instructions ----------------------------------------------------------------------------


def instruction_header(
    inst: Instruction, transfer_id: str, payload: Payload
) -> pb.InstructionHeader:
    """The wire header announcing ``inst`` (its arrays travel as ``payload``)."""
    return pb.InstructionHeader(
        transfer_id=transfer_id,
        run_id=inst.run_id,
        round=inst.round,
        kind=inst.kind.value,
        config_json=_config_json(_wire_config(inst)),
        blobs=[pb.BlobInfo(name=n, size=s) for n, s in payload.blobs],
        total_bytes=payload.size,
        audit_head=inst.audit_head,
    )


def instruction_from_wire(
    header: pb.InstructionHeader, blobs: Mapping[str, memoryview], node_id: str, *, max_bytes: int
) -> Instruction:
    """Rebuild an Instruction on the node; ``node_id`` is the node's own identity."""
    parameters, extras = _split(blobs, max_bytes=max_bytes)
    if parameters is None:
        raise PayloadError("instruction carries no parameters")
    job, directives, task_config = _sections_from_wire(_config_from_json(header.config_json))
    return Instruction(
        run_id=header.run_id,
        round=header.round,
        node_id=node_id,
        kind=_kind(header.kind),
        parameters=parameters,
        job=job,
        directives=directives,
        config=task_config,
        extras=extras,
        audit_head=header.audit_head,
    )


def blob_manifest(items: Sequence[pb.BlobInfo]) -> list[tuple[str, int]]:
    """(name, size) pairs of a header's manifest."""
    return [(b.name, int(b.size)) for b in items]


# -- replies ---------------------------------------------------------------------------------


def reply_header(reply: Reply, transfer_id: str, payload: Payload) -> pb.ReplyHeader:
    """The wire header of ``reply`` (its arrays travel as ``payload``)."""
    return pb.ReplyHeader(
        transfer_id=transfer_id,
        run_id=reply.run_id,
        round=reply.round,
        kind=reply.kind.value,
        num_examples=reply.num_examples,
        metrics=dict(reply.metrics),
        error=reply.error or "",
        blobs=[pb.BlobInfo(name=n, size=s) for n, s in payload.blobs],
        total_bytes=payload.size,
        audit_head=reply.audit_head,
    )


def reply_from_wire(
    header: pb.ReplyHeader, blobs: Mapping[str, memoryview], node_id: str, *, max_bytes: int
) -> Reply:
    """Rebuild a Reply on the coordinator; ``node_id`` comes from the peer's certificate."""
    parameters, extras = _split(blobs, max_bytes=max_bytes)
    try:
        return Reply(
            run_id=header.run_id,
            round=header.round,
            node_id=node_id,
            kind=_kind(header.kind),
            parameters=parameters,
            num_examples=header.num_examples,
            metrics=dict(header.metrics),
            extras=extras,
            error=header.error or None,
            audit_head=header.audit_head,
        )
    except ConfigurationError as exc:
        raise PayloadError(f"malformed reply header: {exc}") from exc


def error_reply(header: pb.ReplyHeader, node_id: str, message: str) -> Reply:
    """A reply standing for a refused upload, so the engine records why (no arrays)."""
    return Reply(
        run_id=header.run_id or "unknown",
        round=header.round,
        node_id=node_id,
        kind=_kind(header.kind) if header.kind in _KINDS else MessageKind.TRAIN,
        error=f"payload: {message}",
    )
