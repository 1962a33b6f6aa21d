"""Instructions and replies framed as bytes: exact round trips, and every damaged frame is
refused with one clear PayloadError (a worker's pipe is not trusted blindly)."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import Instruction, MessageKind, ParameterSet, PayloadError, Reply
from biofed.transport.grpc import (
    decode_instruction,
    decode_reply,
    encode_instruction,
    encode_reply,
)

HEAD = "7:" + "ab" * 32


def _params(n: int = 50) -> ParameterSet:
    return ParameterSet(
        {"w": np.linspace(-1, 1, n, dtype=np.float32), "b": np.array([0.1, 0.2], np.float64)}
    )


def _instruction() -> Instruction:
    return Instruction(
        run_id="run-1",
        round=4,
        node_id="site-b.2",
        kind=MessageKind.TRAIN,
        parameters=_params(),
        config={"dataset": "d", "lr": 0.1, "local_steps": 3, "flag": True},
        extras={"scaffold.server_control": _params(5)},
        audit_head=HEAD,
    )


def _reply(**over: object) -> Reply:
    base: dict[str, object] = {
        "run_id": "run-1",
        "round": 4,
        "node_id": "site-a",
        "kind": MessageKind.TRAIN,
        "parameters": _params(),
        "num_examples": 17,
        "metrics": {"loss": 0.25, "auc": 0.75},
        "extras": {"scaffold.control_delta": _params(3)},
        "audit_head": HEAD,
    }
    base.update(over)
    return Reply(**base)  # type: ignore[arg-type]


def _same(a: ParameterSet | None, b: ParameterSet | None) -> bool:
    if a is None or b is None:
        return a is b
    return list(a.keys()) == list(b.keys()) and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


def test_instruction_round_trip_is_exact() -> None:
    inst = _instruction()
    back = decode_instruction(encode_instruction(inst))
    assert (back.run_id, back.round, back.node_id, back.kind) == ("run-1", 4, "site-b.2", inst.kind)
    assert dict(back.config) == dict(inst.config)
    assert type(back.config["local_steps"]) is int
    assert back.config["flag"] is True
    assert back.audit_head == HEAD
    assert _same(back.parameters, inst.parameters)
    assert _same(back.extras["scaffold.server_control"], inst.extras["scaffold.server_control"])


@pytest.mark.parametrize(
    "reply",
    [
        _reply(),
        _reply(parameters=None, extras={}, kind=MessageKind.EVALUATE),
        _reply(parameters=None, extras={}, metrics={}, num_examples=0, error="task: boom"),
    ],
    ids=["train", "evaluate", "error"],
)
def test_reply_round_trip_is_exact(reply: Reply) -> None:
    back = decode_reply(encode_reply(reply))
    fields = ("run_id", "round", "node_id", "kind", "num_examples", "error", "audit_head")
    assert [getattr(back, f) for f in fields] == [getattr(reply, f) for f in fields]
    assert dict(back.metrics) == dict(reply.metrics)
    assert _same(back.parameters, reply.parameters)
    assert set(back.extras) == set(reply.extras)
    assert all(_same(back.extras[k], reply.extras[k]) for k in reply.extras)


def test_every_truncation_is_refused() -> None:
    frame = encode_instruction(_instruction())
    for cut in range(len(frame)):
        with pytest.raises(PayloadError):
            decode_instruction(frame[:cut])


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(PayloadError, match="payload bytes"):
        decode_reply(encode_reply(_reply()) + b"\x00")


def test_a_reply_is_not_an_instruction() -> None:
    with pytest.raises(PayloadError, match="wrong magic"):
        decode_instruction(encode_reply(_reply()))
    with pytest.raises(PayloadError, match="wrong magic"):
        decode_reply(encode_instruction(_instruction()))


def test_payload_over_the_limit_is_refused_before_decoding() -> None:
    frame = encode_reply(_reply())
    with pytest.raises(PayloadError, match="exceeds the limit"):
        decode_reply(frame, max_bytes=16)


def test_corrupted_header_is_refused() -> None:
    frame = bytearray(encode_instruction(_instruction()))
    name_len = int.from_bytes(frame[4:8], "big")
    start = 8 + name_len + 4
    frame[start : start + 8] = b"\xff" * 8
    with pytest.raises(PayloadError):
        decode_instruction(bytes(frame))


def test_corrupted_array_bytes_are_refused() -> None:
    frame = bytearray(encode_reply(_reply()))
    # the payload starts with the parameters' safetensors header length: make it absurd
    name_len = int.from_bytes(frame[4:8], "big")
    head_len = int.from_bytes(frame[8 + name_len : 12 + name_len], "big")
    payload = 12 + name_len + head_len
    frame[payload : payload + 8] = (2**40).to_bytes(8, "little")
    with pytest.raises(PayloadError):
        decode_reply(bytes(frame))


def test_bad_ids_in_a_frame_are_a_payload_error() -> None:
    frame = bytearray(encode_reply(_reply()))
    frame[8:14] = b"\x00bad!!"  # the node id "site-a" becomes invalid
    with pytest.raises(PayloadError, match="malformed reply header"):
        decode_reply(bytes(frame))
