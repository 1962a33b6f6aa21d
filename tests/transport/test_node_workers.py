"""A node serves several runs at once: one worker per run, a run's instructions in order,
one run's slow round never stalls another's, and a cancelled run uploads nothing more."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.transport.grpc._client import _RunWorkers


def _instruction(run_id: str, round_: int) -> Instruction:
    return Instruction(
        run_id=run_id,
        round=round_,
        node_id="site-a",
        kind=MessageKind.TRAIN,
        parameters=ParameterSet({"w": np.zeros(2, np.float32)}),
    )


def _reply(instruction: Instruction) -> Reply:
    return Reply(
        run_id=instruction.run_id,
        round=instruction.round,
        node_id="site-a",
        kind=instruction.kind,
        parameters=instruction.parameters,
        num_examples=1,
    )


def _wait(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class _Node:
    def __init__(self, limit: int = 4) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.handled: list[tuple[str, int]] = []
        self.uploaded: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.workers = _RunWorkers(self.handle, self.upload, self.done, lambda m: None, limit)

    def handle(self, instruction: Instruction) -> Reply:
        gate = self.gates.get(instruction.run_id)
        with self.lock:
            self.handled.append((instruction.run_id, instruction.round))
        if gate is not None:
            assert gate.wait(10)
        return _reply(instruction)

    def upload(self, reply: Reply, transfer_id: str) -> None:
        with self.lock:
            self.uploaded.append((reply.run_id, reply.round))


def test_a_slow_run_does_not_stall_another() -> None:
    node = _Node()
    node.gates["slow"] = threading.Event()
    node.workers.submit(_instruction("slow", 1), "t1")
    _wait(lambda: ("slow", 1) in node.handled)
    for r in (1, 2, 3):
        node.workers.submit(_instruction("fast", r), f"f{r}")
    _wait(lambda: len(node.uploaded) == 3)
    assert node.uploaded == [("fast", 1), ("fast", 2), ("fast", 3)]  # in order, not stalled
    node.gates["slow"].set()
    _wait(lambda: ("slow", 1) in node.uploaded)


def test_a_cancelled_run_drops_its_queue_and_uploads_nothing() -> None:
    node = _Node()
    node.gates["x"] = threading.Event()
    node.workers.submit(_instruction("x", 1), "t1")  # in flight
    _wait(lambda: ("x", 1) in node.handled)
    node.workers.submit(_instruction("x", 2), "t2")  # queued
    node.workers.cancel("x")
    node.workers.submit(_instruction("x", 3), "t3")  # arrives after the cancel
    node.gates["x"].set()
    node.workers.submit(_instruction("y", 1), "y1")
    _wait(lambda: ("y", 1) in node.uploaded)
    node.workers.join(timeout=5)
    assert node.handled.count(("x", 1)) == 1
    assert ("x", 2) not in node.handled
    assert ("x", 3) not in node.handled
    assert [u for u in node.uploaded if u[0] == "x"] == []


def test_at_most_limit_runs_are_handled_at_once() -> None:
    node = _Node(limit=2)
    for run in ("a", "b", "c"):
        node.gates[run] = threading.Event()
        node.workers.submit(_instruction(run, 1), run)
    _wait(lambda: len(node.handled) == 2)
    time.sleep(0.1)  # give the third run every chance to start (it must not)
    assert len(node.handled) == 2
    for gate in node.gates.values():
        gate.set()
    _wait(lambda: len(node.uploaded) == 3)
