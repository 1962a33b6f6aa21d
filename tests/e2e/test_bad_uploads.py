"""A malicious site with a legitimate certificate cannot break a run with bad uploads.

``mallory`` is a real site of the consortium (valid certificate, declares the run's dataset)
that speaks the wire by hand (:class:`RawNode`). Two honest sites run real nodes in threads.
In each test mallory answers its training instruction with one kind of bad upload. Each must be
refused — an ``Ack(accepted=False)`` or a ``reply_rejected`` event naming mallory — while the
round completes with the honest sites' replies, the run finishes, and the coordinator keeps
answering.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from biofed.core import ParameterSet, TransportError, encode_parameters
from biofed.transport.grpc import ControlClient, EventInfo
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc

from .conftest import (
    Federation,
    RawNode,
    Received,
    format_events,
    honest_evaluate_reply,
    honest_train_reply,
    job,
    raw_channel,
    reply_chunks,
    reply_header,
    wait_for,
    wait_terminal,
)

pytestmark = pytest.mark.slow

HONEST = ["center-0", "center-1"]
MALLORY = "mallory"


@dataclass
class _Federation:
    federation: Federation
    client: ControlClient
    mallory: RawNode


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, site_files: dict[str, Path]
) -> Iterator[_Federation]:
    federation = Federation(
        tmp_path_factory.mktemp("bad-uploads"), site_files, sites=HONEST, extra_sites=[MALLORY]
    )
    mallory: RawNode | None = None
    try:
        federation.start_coordinator()
        for site in HONEST:
            federation.start_node(site)
        mallory = RawNode(federation.address, federation.tls(MALLORY))
        client = federation.control()
        yield _Federation(federation=federation, client=client, mallory=mallory)
    finally:
        if mallory is not None:
            mallory.close()
        federation.close()


def _start(fed: _Federation, *, rounds: int = 1, round_timeout: float = 10.0) -> str:
    spec = job(rounds=rounds, min_nodes=3, min_replies=2, round_timeout=round_timeout)
    return fed.client.submit_run(spec.to_json()).run_id


def _finish(
    fed: _Federation, run_id: str, *, rounds: int = 1, evaluations: int | None = None
) -> list[EventInfo]:
    """Answer the remaining evaluations honestly, wait for the end, check that the honest
    sites carried every round, and return the run's events."""
    for _ in range(rounds if evaluations is None else evaluations):
        evaluate = fed.mallory.next_instruction(run_id, "evaluate")
        assert fed.mallory.upload(reply_chunks(honest_evaluate_reply(evaluate), b"")).accepted
    status = wait_terminal(fed.client, run_id, timeout=60)
    events = list(fed.client.watch_run(run_id))
    assert status == "finished", format_events(events)
    for r in range(1, rounds + 1):
        replied = {e.node_id for e in events if e.round == r and e.kind == "train_reply"}
        assert set(HONEST) <= replied, format_events(events)
        completed = [e for e in events if e.round == r and e.kind == "round_completed"]
        assert completed, format_events(events)
        assert completed[0].message.startswith(f"{len(replied)}/3 replies"), completed[0].message
    # The coordinator still answers.
    run = fed.client.get_run(run_id)
    assert run.completed_rounds == rounds
    assert run_id in {r.run_id for r in fed.client.list_runs()}
    return events


def _rejections(events: list[EventInfo]) -> list[EventInfo]:
    return [e for e in events if e.kind == "reply_rejected" and e.node_id == MALLORY]


def _model(received: Received) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in received.parameters().items()}


# -- uploads the wire itself must refuse (Ack accepted=False) ---------------------------------

_Upload = Callable[[Received], list[pb.ReplyChunk]]


def _truncated(received: Received) -> list[pb.ReplyChunk]:
    header, data = honest_train_reply(received)
    return reply_chunks(header, data)[:-2]  # the last two chunks never come


def _oversized(received: Received) -> list[pb.ReplyChunk]:
    size = 1 << 40  # a terabyte: must be refused before any buffer is allocated
    header = reply_header(received, b"", blobs=[("parameters", size)], total_bytes=size)
    return reply_chunks(header, b"\0" * 64)


def _out_of_order(received: Received) -> list[pb.ReplyChunk]:
    header, data = honest_train_reply(received)
    count = math.ceil(len(data) / 64)
    order = [1, 0, *range(2, count)]
    return reply_chunks(header, data, order=order)


def _repeated_chunk(received: Received) -> list[pb.ReplyChunk]:
    header, data = honest_train_reply(received)
    messages = reply_chunks(header, data)
    return [messages[0], messages[1], messages[1], *messages[2:]]


def _nan(received: Received) -> list[pb.ReplyChunk]:
    model = _model(received)
    name = next(iter(model))
    model[name].flat[0] = np.nan
    data = encode_parameters(ParameterSet(model))
    return reply_chunks(reply_header(received, data), data)


def _infinite(received: Received) -> list[pb.ReplyChunk]:
    model = _model(received)
    name = next(iter(model))
    model[name].flat[-1] = -np.inf
    data = encode_parameters(ParameterSet(model))
    return reply_chunks(reply_header(received, data), data)


def _not_safetensors(received: Received) -> list[pb.ReplyChunk]:
    data = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + bytes(100)
    return reply_chunks(reply_header(received, data), data)


def _unknown_blob(received: Received) -> list[pb.ReplyChunk]:
    _, data = honest_train_reply(received)
    header = reply_header(received, data, blobs=[("pickle", len(data))])
    return reply_chunks(header, data)


def _manifest_mismatch(received: Received) -> list[pb.ReplyChunk]:
    _, data = honest_train_reply(received)
    header = reply_header(received, data, blobs=[("parameters", len(data) - 10)])
    return reply_chunks(header, data)


def _second_header(received: Received) -> list[pb.ReplyChunk]:
    header, data = honest_train_reply(received)
    messages = reply_chunks(header, data)
    return [messages[0], messages[1], pb.ReplyChunk(header=header), *messages[2:]]


def _chunk_of_another_transfer(received: Received) -> list[pb.ReplyChunk]:
    header, data = honest_train_reply(received)
    messages = reply_chunks(header, data)
    messages[1].chunk.transfer_id = "f" * 32
    return messages


WIRE_REFUSALS: dict[str, tuple[_Upload, str]] = {
    "truncated": (_truncated, "truncated"),
    "oversized-declaration": (_oversized, "exceeds the limit"),
    "chunks-out-of-order": (_out_of_order, "out of order"),
    "chunk-repeated": (_repeated_chunk, "out of order"),
    "nan-values": (_nan, "NaN"),
    "infinite-values": (_infinite, "infinite"),
    "not-safetensors": (_not_safetensors, "not valid"),
    "unknown-blob": (_unknown_blob, "unknown blob"),
    "manifest-does-not-add-up": (_manifest_mismatch, "does not add up"),
    "second-header": (_second_header, "second header"),
    "chunk-of-another-transfer": (_chunk_of_another_transfer, "another transfer"),
}


@pytest.mark.parametrize("variant", list(WIRE_REFUSALS))
def test_malformed_upload_is_refused_and_the_run_goes_on(fed: _Federation, variant: str) -> None:
    build, reason = WIRE_REFUSALS[variant]
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    ack = fed.mallory.upload(build(train))
    assert not ack.accepted
    assert reason in ack.message, ack.message
    events = _finish(fed, run_id)
    rejected = _rejections(events)
    assert rejected, format_events(events)
    assert reason in rejected[0].message, format_events(events)
    assert all(e.node_id != MALLORY for e in events if e.kind == "train_reply")


# -- uploads that are well-formed on the wire but do not fit the model ------------------------


def _wrong_shape(received: Received) -> ParameterSet:
    model = _model(received)
    name = next(iter(model))
    model[name] = np.zeros(model[name].size + 1, dtype=model[name].dtype)
    return ParameterSet(model)


def _wrong_dtype(received: Received) -> ParameterSet:
    model = _model(received)
    name = next(iter(model))
    other = np.float32 if model[name].dtype == np.float64 else np.float64
    model[name] = model[name].astype(other)
    return ParameterSet(model)


def _extra_tensor(received: Received) -> ParameterSet:
    return ParameterSet({**_model(received), "backdoor": np.ones(4)})


def _missing_tensor(received: Received) -> ParameterSet:
    model = _model(received)
    if len(model) == 1:
        return ParameterSet({"renamed": next(iter(model.values()))})
    model.pop(next(iter(model)))
    return ParameterSet(model)


MODEL_REFUSALS: dict[str, tuple[Callable[[Received], ParameterSet], str]] = {
    "wrong-shape": (_wrong_shape, "shape"),
    "wrong-dtype": (_wrong_dtype, "dtype"),
    "extra-tensor": (_extra_tensor, "names do not match"),
    "missing-tensor": (_missing_tensor, "names do not match"),
}


@pytest.mark.parametrize("variant", list(MODEL_REFUSALS))
def test_update_that_does_not_fit_the_model_is_rejected(fed: _Federation, variant: str) -> None:
    build, reason = MODEL_REFUSALS[variant]
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    data = encode_parameters(build(train))
    fed.mallory.upload(reply_chunks(reply_header(train, data), data))  # the wire may take it…
    events = _finish(fed, run_id)
    rejected = _rejections(events)  # … but the engine must not fold it in
    assert rejected, format_events(events)
    assert reason in rejected[0].message, format_events(events)
    assert all(e.node_id != MALLORY for e in events if e.kind == "train_reply")


def test_training_reply_without_parameters_is_rejected(fed: _Federation) -> None:
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    fed.mallory.upload(reply_chunks(reply_header(train, b""), b""))
    events = _finish(fed, run_id)
    rejected = _rejections(events)
    assert rejected, format_events(events)
    assert "no parameters" in rejected[0].message


# -- metrics and example counts the coordinator must not believe -----------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1e308])
def test_non_finite_or_overflowing_metrics_are_refused(fed: _Federation, value: float) -> None:
    """A training reply whose metrics are NaN, ±Inf or so large that averaging overflows is
    refused like NaN parameters; the summary holds only the honest sites' finite metrics."""
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    header, data = honest_train_reply(train)
    header.metrics["train_loss"] = value
    fed.mallory.upload(reply_chunks(header, data))
    events = _finish(fed, run_id)
    rejected = _rejections(events)
    assert rejected, format_events(events)
    assert "metrics" in rejected[0].message, format_events(events)
    summary = json.loads(fed.client.get_run(run_id).summary_json)
    losses = summary["last_round"]["train_metrics"]
    assert all(v is not None and math.isfinite(v) and abs(v) < 1e6 for v in losses.values())


def test_evaluation_claiming_more_examples_than_declared_is_refused(fed: _Federation) -> None:
    """mallory declared 100 examples of the dataset at connect; an evaluation reply claiming
    101 would weigh it more than it is in the aggregate metrics: refused."""
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    header, data = honest_train_reply(train)
    assert fed.mallory.upload(reply_chunks(header, data)).accepted
    evaluate = fed.mallory.next_instruction(run_id, "evaluate")
    claim = honest_evaluate_reply(evaluate)
    claim.num_examples = 101
    fed.mallory.upload(reply_chunks(claim, b""))
    events = _finish(fed, run_id, evaluations=0)
    rejected = _rejections(events)
    assert rejected, format_events(events)
    assert "101 evaluation examples" in rejected[0].message, format_events(events)
    assert MALLORY not in json.loads(fed.client.get_run(run_id).summary_json)["evaluation"]["sites"]


# -- inline replies on the Connect stream (no Ack: the refusal shows in the events) -----------


def _inline_truncated(received: Received) -> pb.ReplyHeader:
    header, data = honest_train_reply(received)
    header.inline_payload = data[:-9]
    return header


def _inline_nan(received: Received) -> pb.ReplyHeader:
    (message, *chunks) = _nan(received)
    header = message.header
    header.inline_payload = b"".join(c.chunk.data for c in chunks)
    return header


INLINE_REFUSALS: dict[str, tuple[Callable[[Received], pb.ReplyHeader], str]] = {
    "inline-truncated": (_inline_truncated, "truncated"),
    "inline-nan-values": (_inline_nan, "NaN"),
}


@pytest.mark.parametrize("variant", list(INLINE_REFUSALS))
def test_malformed_inline_reply_is_rejected(fed: _Federation, variant: str) -> None:
    build, reason = INLINE_REFUSALS[variant]
    run_id = _start(fed)
    train = fed.mallory.next_instruction(run_id, "train")
    fed.mallory.send_inline(build(train))
    events = _finish(fed, run_id)
    rejected = _rejections(events)
    assert rejected, format_events(events)
    assert reason in rejected[0].message, format_events(events)


# -- replays and replies that answer something else ----------------------------------------


def test_replayed_reply_is_refused(fed: _Federation) -> None:
    """An accepted reply sent again (same transfer id) is refused; so is the old round's
    reply sent during the next round, and a run's reply replayed into another run."""
    run_id = _start(fed, rounds=2)
    first = fed.mallory.next_instruction(run_id, "train")
    header, data = honest_train_reply(first)
    assert fed.mallory.upload(reply_chunks(header, data)).accepted  # honest: accepted
    replay = fed.mallory.upload(reply_chunks(header, data))
    assert not replay.accepted
    assert "already answered" in replay.message, replay.message
    evaluate = fed.mallory.next_instruction(run_id, "evaluate")
    assert fed.mallory.upload(reply_chunks(honest_evaluate_reply(evaluate), b"")).accepted
    second = fed.mallory.next_instruction(run_id, "train")
    late = fed.mallory.upload(reply_chunks(header, data))  # round 1's reply during round 2
    assert not late.accepted
    assert "already answered" in late.message, late.message
    header2, data2 = honest_train_reply(second)
    assert fed.mallory.upload(reply_chunks(header2, data2)).accepted
    events = _finish(fed, run_id, rounds=2, evaluations=1)
    rejected = _rejections(events)
    assert len(rejected) >= 2, format_events(events)
    assert {e.node_id for e in events if e.kind == "train_reply" and e.round == 2} == {
        *HONEST,
        MALLORY,
    }
    # A reply of the finished run, replayed while another run waits for mallory.
    other = _start(fed)
    train = fed.mallory.next_instruction(other, "train")
    stale = fed.mallory.upload(reply_chunks(header2, data2))
    assert not stale.accepted
    assert "already answered" in stale.message or "unknown" in stale.message, stale.message
    honest, payload = honest_train_reply(train)
    assert fed.mallory.upload(reply_chunks(honest, payload)).accepted
    _finish(fed, other)


@pytest.mark.parametrize(
    ("variant", "fields"),
    [
        ("past-round", {"round": 0}),
        ("future-round", {"round": 2}),
        ("another-run", {"run_id": "another-run-0000"}),
        ("evaluate-for-train", {"kind": "evaluate"}),
    ],
)
def test_reply_that_does_not_match_its_instruction_is_refused(
    fed: _Federation, variant: str, fields: dict[str, object]
) -> None:
    """A reply whose header names another round, run or kind than the instruction whose
    transfer id it carries: refused, and the round completes with the honest replies."""
    run_id = _start(fed, round_timeout=3.0)
    train = fed.mallory.next_instruction(run_id, "train")
    _, data = honest_train_reply(train)
    ack = fed.mallory.upload(reply_chunks(reply_header(train, data, **fields), data))
    assert not ack.accepted
    assert "does not match" in ack.message, ack.message
    events = _finish(fed, run_id)
    assert _rejections(events), format_events(events)


# -- uploads that never finish ----------------------------------------------------------------

_STALLED_CALLS = 300  # more than the coordinator's RPC worker threads (256 by default)


def test_stalled_uploads_do_not_starve_the_coordinator(
    make_federation: Callable[..., Federation],
) -> None:
    """A site opens many uploads and never sends a byte on them (a slow-loris). The
    coordinator must go on answering everyone else."""
    federation = make_federation(sites=["center-0"], extra_sites=[MALLORY])
    federation.start_coordinator()
    client = federation.control(timeout=3.0)
    assert client.list_runs() == []
    release = threading.Event()

    def silent() -> Iterator[pb.ReplyChunk]:
        release.wait(60)
        return
        yield  # a generator that sends nothing until released

    channel = raw_channel(federation.address, federation.tls(MALLORY))
    stub = pb_grpc.NodeServiceStub(channel)
    calls = [stub.SendReply.future(silent(), timeout=60) for _ in range(_STALLED_CALLS)]
    try:
        time.sleep(1.0)  # let the coordinator pick them up
        started = time.monotonic()
        assert client.list_runs() == []  # DEADLINE_EXCEEDED (TransportError) while starved
        assert time.monotonic() - started < 3.0
    finally:
        release.set()
        for call in calls:
            call.cancel()
        channel.close()
    wait_for(lambda: _answers(client), timeout=20, what="the coordinator to recover")


def _answers(client: ControlClient) -> bool:
    try:
        client.list_runs()
    except TransportError:
        return False
    return True
