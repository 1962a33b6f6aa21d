"""A host of virtual sites: builds each site's real node on its first instruction.

One :class:`SiteHost` serves a shard of sites, in the simulation's own process, in a worker
process (:func:`worker_main`) or in a Ray actor. Between instructions it keeps each site's
:class:`~biofed.node.NodeApp` (its data, ledger, secure-aggregation sessions and SCAFFOLD
state) and nothing else: the instruction, the model it carried and the reply are dropped as
soon as the reply is on its way, so an idle site holds no model copy.
"""

from __future__ import annotations

import signal
import struct
from collections.abc import Sequence
from multiprocessing.connection import Connection

from biofed.core import BiofedError, Instruction, Reply
from biofed.node import NodeApp
from biofed.simulation._sites import SiteRecipe, build_node

#: Tags of the messages between the driver and a worker (first byte).
TAG_INSTRUCTION = b"I"  # driver → worker: seq, instruction frame
TAG_QUIT = b"Q"  # driver → worker: stop
TAG_READY = b"S"  # worker → driver: started
TAG_REPLY = b"R"  # reply frame
TAG_FAILED = b"X"  # the instruction could not be handled; UTF-8 reason follows
SEQ = struct.Struct(">Q")


def _error(instruction: Instruction, message: str) -> Reply:
    return Reply(
        run_id=instruction.run_id,
        round=instruction.round,
        node_id=instruction.node_id,
        kind=instruction.kind,
        error=message,
    )


class SiteHost:
    """Serves instructions for a shard of virtual sites, building each site lazily."""

    def __init__(self, recipes: Sequence[SiteRecipe]) -> None:
        self._recipes = {r.node_id: r for r in recipes}
        self._nodes: dict[str, NodeApp] = {}

    @property
    def loaded(self) -> int:
        """Sites whose node has been built."""
        return len(self._nodes)

    def handle(self, instruction: Instruction) -> Reply:
        """The site's reply (an error reply if the site cannot be built; never raises)."""
        node = self._nodes.get(instruction.node_id)
        if node is None:
            recipe = self._recipes.get(instruction.node_id)
            if recipe is None:
                return _error(instruction, f"transport: site {instruction.node_id!r} is not here")
            try:
                node = build_node(recipe)
            except BiofedError as exc:
                return _error(instruction, f"{exc.code}: site cannot start: {exc}")
            except Exception as exc:  # the recipe's loader is researcher code
                return _error(instruction, f"site: cannot start: {type(exc).__name__}: {exc}")
            self._nodes[instruction.node_id] = node
        return node.handle(instruction)

    def handle_frame(self, frame: bytes | memoryview) -> bytes:
        """An instruction frame in, a tagged reply frame (or failure) out."""
        from biofed.transport.grpc import decode_instruction, encode_reply

        try:
            instruction = decode_instruction(frame)
        except BiofedError as exc:
            return TAG_FAILED + f"{exc.code}: undecodable instruction: {exc}".encode()
        reply = self.handle(instruction)
        del instruction
        try:
            return TAG_REPLY + encode_reply(reply)
        except BiofedError as exc:
            return TAG_FAILED + f"{exc.code}: unencodable reply: {exc}".encode()

    def handle_frames(self, frames: Sequence[bytes]) -> list[bytes]:
        """:meth:`handle_frame` for each frame, in order (a Ray actor's batch)."""
        return [self.handle_frame(frame) for frame in frames]


def worker_main(inbox: Connection, outbox: Connection, recipes: Sequence[SiteRecipe]) -> None:
    """A worker process's loop: instructions in from ``inbox``, replies out to ``outbox``, one
    at a time in arrival order, until told to quit or the driver goes away (end of file)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import biofed.transport.grpc  # noqa: F401 - the codec, loaded before the worker says ready

    host = SiteHost(recipes)
    try:
        outbox.send_bytes(TAG_READY)
        while True:
            message = inbox.recv_bytes()
            if message[:1] != TAG_INSTRUCTION:
                return
            seq = message[1 : 1 + SEQ.size]
            out = host.handle_frame(memoryview(message)[1 + SEQ.size :])
            del message
            outbox.send_bytes(TAG_REPLY + seq + out)
            del out  # an idle worker holds no reply (nor model) copy
    except (EOFError, OSError):  # the driver closed the pipes or died: stop
        return
