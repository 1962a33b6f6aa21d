"""Chunking and reassembly: every way a chunk stream can be wrong is refused clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biofed.core import Instruction, MessageKind, ParameterSet, PayloadError, Reply
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._serde import (
    Reassembler,
    chunks,
    instruction_from_wire,
    instruction_header,
    pack,
    reply_from_wire,
    reply_header,
)

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto_files() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _params(n: int = 1000) -> ParameterSet:
    return ParameterSet({"w": np.arange(n, dtype=np.float32), "b": np.ones(3, np.float64)})


def _assemble(payload_chunks: list[pb.Chunk], blobs, total: int, max_bytes: int = 10**8):  # type: ignore[no-untyped-def]
    r = Reassembler("t", blobs, total, max_bytes=max_bytes)
    for c in payload_chunks:
        r.add(c)
    return r.finish()


def test_instruction_round_trip_through_chunks() -> None:
    extras = {"scaffold.server_control": _params(10)}
    inst = Instruction(
        run_id="r",
        round=3,
        node_id="a",
        kind=MessageKind.TRAIN,
        parameters=_params(300_000),
        config={"lr": 0.1, "task": "cox_ph"},
        extras=extras,
    )
    payload = pack(inst.parameters, inst.extras)
    header = instruction_header(inst, "t", payload)
    parts = list(chunks("t", payload, size=100_000))
    assert len(parts) == -(-payload.size // 100_000)
    blobs = _assemble(parts, [(b.name, b.size) for b in header.blobs], payload.size)
    back = instruction_from_wire(header, blobs, "a", max_bytes=10**8)
    assert back.parameters == inst.parameters
    assert back.extras["scaffold.server_control"] == extras["scaffold.server_control"]
    assert dict(back.config) == {"lr": 0.1, "task": "cox_ph"}


def test_reply_node_id_comes_from_the_caller_not_the_message() -> None:
    reply = Reply(
        run_id="r",
        round=1,
        node_id="honest",
        kind="train",
        parameters=_params(),
        num_examples=5,
        metrics={"loss": 0.5},
    )
    payload = pack(reply.parameters, {})
    header = reply_header(reply, "t", payload)
    blobs = _assemble(
        list(chunks("t", payload)), [(b.name, b.size) for b in header.blobs], payload.size
    )
    back = reply_from_wire(header, blobs, "from-certificate", max_bytes=10**8)
    assert back.node_id == "from-certificate"
    assert back.parameters == reply.parameters
    assert back.metrics["loss"] == 0.5


def _stream() -> tuple[list[pb.Chunk], list[tuple[str, int]], int]:
    payload = pack(_params(100_000), {})
    return list(chunks("t", payload, size=50_000)), list(payload.blobs), payload.size


def test_truncated_stream_is_refused() -> None:
    parts, blobs, total = _stream()
    with pytest.raises(PayloadError, match="truncated"):
        _assemble(parts[:-1], blobs, total)


def test_out_of_order_missing_or_repeated_chunks_are_refused() -> None:
    parts, blobs, total = _stream()
    for broken in ([parts[1], parts[0], *parts[2:]], [parts[0], *parts[2:]], [parts[0], *parts]):
        with pytest.raises(PayloadError, match=r"out of order|expected offset"):
            _assemble(broken, blobs, total)


def test_oversized_declaration_is_refused_before_allocating() -> None:
    _, blobs, total = _stream()
    with pytest.raises(PayloadError, match="exceeds the limit"):
        Reassembler("t", [("parameters", 10**12)], 10**12, max_bytes=10**9)
    with pytest.raises(PayloadError, match="does not add up"):
        Reassembler("t", blobs, total + 1, max_bytes=10**9)


def test_chunks_beyond_the_declared_size_are_refused() -> None:
    parts, blobs, total = _stream()
    extra = pb.Chunk(transfer_id="t", offset=total, data=b"x")
    with pytest.raises(PayloadError, match="exceed"):
        _assemble([*parts, extra], blobs, total)


def test_chunk_of_another_transfer_is_refused() -> None:
    parts, blobs, total = _stream()
    parts[0] = pb.Chunk(transfer_id="other", offset=0, data=parts[0].data)
    with pytest.raises(PayloadError, match="another transfer"):
        _assemble(parts, blobs, total)


def test_corrupted_bytes_inside_a_blob_are_refused() -> None:
    parts, blobs, total = _stream()
    first = bytearray(parts[0].data)
    first[0:8] = (10**9).to_bytes(8, "little")  # safetensors header length now lies
    parts[0] = pb.Chunk(transfer_id="t", offset=0, data=bytes(first))
    assembled = _assemble(parts, blobs, total)
    header = pb.ReplyHeader(run_id="r", round=1, kind="train", num_examples=1)
    with pytest.raises(PayloadError):
        reply_from_wire(header, assembled, "a", max_bytes=10**8)


def test_unknown_blob_and_bad_kind_are_refused() -> None:
    payload = pack(_params(10), {})
    blob = memoryview(payload.to_bytes())
    with pytest.raises(PayloadError, match="unknown blob"):
        reply_from_wire(
            pb.ReplyHeader(run_id="r", round=1, kind="train"), {"evil": blob}, "a", max_bytes=10**6
        )
    with pytest.raises(PayloadError, match="unknown message kind"):
        reply_from_wire(
            pb.ReplyHeader(run_id="r", round=1, kind="steal"),
            {"parameters": blob},
            "a",
            max_bytes=10**6,
        )


def test_audit_heads_travel_both_ways_and_a_malformed_one_is_refused() -> None:
    head = "41:" + "a" * 64
    inst = Instruction(
        run_id="r",
        round=1,
        node_id="a",
        kind=MessageKind.TRAIN,
        parameters=_params(10),
        audit_head=head,
    )
    payload = pack(inst.parameters, {})
    header = instruction_header(inst, "t", payload)
    blobs = _assemble(list(chunks("t", payload)), list(payload.blobs), payload.size)
    assert instruction_from_wire(header, blobs, "a", max_bytes=10**8).audit_head == head
    reply = Reply(run_id="r", round=1, node_id="a", kind="evaluate", audit_head="7:" + "b" * 64)
    empty = pack(None, {})
    wire = reply_header(reply, "t", empty)
    assert reply_from_wire(wire, {}, "a", max_bytes=10**8).audit_head == reply.audit_head
    # a head that is not "<seq>:<64 hex>" never reaches the receiver's audit log
    wire.audit_head = "7:" + "b" * 64 + '","forged":"x'
    with pytest.raises(PayloadError, match="audit_head"):
        reply_from_wire(wire, {}, "a", max_bytes=10**8)
    assert (
        reply_from_wire(pb.ReplyHeader(run_id="r", kind="train"), {}, "a", max_bytes=1).audit_head
        == ""
    )
