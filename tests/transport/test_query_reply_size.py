"""A query instruction carries no model to size its reply by: its answer (a Cox Newton pass
on 39 covariates is ~3 MB per site) may still come back over the real mTLS hub, while a
reply to an instruction without a query stays bounded by the model it was sent."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import RoundDirectives

EMPTY = ParameterSet({})
ANSWER = np.zeros(400_000)  # 3.2 MB of float64: beyond 4 x an empty payload + 1 MiB


def big_answer(inst: Instruction) -> Reply:
    return Reply(
        run_id=inst.run_id,
        round=inst.round,
        node_id=inst.node_id,
        kind=inst.kind,
        parameters=ParameterSet({"s2": ANSWER}),
        num_examples=10,
    )


def test_a_query_answer_beyond_a_model_sized_limit_comes_back(
    grpc_federation: Callable[..., object],
) -> None:
    transport = grpc_federation(["a"], big_answer).transport  # type: ignore[attr-defined]
    query = RoundDirectives(query_request='{"step": "newton"}')
    transport.send(
        Instruction(
            run_id="r", round=1, node_id="a", kind=MessageKind.QUERY, parameters=EMPTY,
            directives=query,
        )
    )  # fmt: skip
    reply = transport.receive(timeout=20.0)
    assert reply is not None
    assert reply.error is None
    assert reply.parameters is not None
    assert reply.parameters["s2"].shape == ANSWER.shape
    # the same bytes answering an instruction with no query: refused (model-sized bound)
    transport.send(
        Instruction(run_id="r", round=2, node_id="a", kind=MessageKind.EVALUATE, parameters=EMPTY)
    )
    reply = transport.receive(timeout=20.0)
    assert reply is not None
    assert reply.error is not None
    assert "exceeds the limit" in reply.error
