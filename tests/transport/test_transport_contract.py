"""Contract suite for Transport implementations (the gRPC transport joins it later)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from biofed.core import Instruction, MessageKind, ParameterSet, Reply, TransportError
from biofed.transport import InMemoryTransport, Transport


def echo(inst: Instruction) -> Reply:
    return Reply(
        run_id=inst.run_id,
        round=inst.round,
        node_id=inst.node_id,
        kind=inst.kind,
        parameters=inst.parameters,
        num_examples=1,
    )


def make_inmemory(nodes: list[str]) -> Transport:
    return InMemoryTransport({n: echo for n in nodes})


@pytest.fixture(params=["inmemory", "grpc"])
def transport(request: pytest.FixtureRequest) -> Iterator[Transport]:
    if request.param == "inmemory":
        t: Transport = make_inmemory(["a", "b", "c"])
    else:
        t = request.getfixturevalue("grpc_federation")(["a", "b", "c"]).transport
    yield t
    t.close()


def inst(node: str, rnd: int = 1) -> Instruction:
    return Instruction(
        run_id="r",
        round=rnd,
        node_id=node,
        kind=MessageKind.TRAIN,
        parameters=ParameterSet({"w": np.arange(3, dtype=np.float32)}),
    )


def test_lists_nodes(transport: Transport) -> None:
    assert sorted(n.node_id for n in transport.available_nodes()) == ["a", "b", "c"]


def test_every_sent_instruction_gets_its_reply(transport: Transport) -> None:
    for node in ("a", "b", "c"):
        transport.send(inst(node))
    replies = [transport.receive(timeout=5.0) for _ in range(3)]
    assert sorted(r.node_id for r in replies if r) == ["a", "b", "c"]
    for r in replies:
        assert r is not None
        assert r.parameters is not None
        np.testing.assert_array_equal(r.parameters["w"], [0, 1, 2])


def test_receive_with_nothing_outstanding_returns_none(transport: Transport) -> None:
    assert transport.receive(timeout=0.05) is None


def test_unknown_node_is_a_transport_error(transport: Transport) -> None:
    with pytest.raises(TransportError):
        transport.send(inst("nobody"))


def test_send_after_close_fails(transport: Transport) -> None:
    transport.close()
    with pytest.raises(TransportError):
        transport.send(inst("a"))


def test_inmemory_offline_nodes_disappear() -> None:
    t = InMemoryTransport({"a": echo, "b": echo})
    t.set_online("b", False)
    assert [n.node_id for n in t.available_nodes()] == ["a"]
    with pytest.raises(TransportError):
        t.send(inst("b"))
    t.set_online("b", True)
    t.send(inst("b"))
    assert t.receive() is not None
