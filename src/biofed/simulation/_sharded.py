"""The driver's side of a simulation whose virtual sites live in other processes.

Sites are dealt round-robin to shards (worker processes or Ray actors); instructions cross
to them as bytes (:func:`biofed.transport.grpc.encode_instruction`), replies come back the
same way. Two promises make a scaled-out simulation a faithful copy of the in-process one:

* **Order.** Replies are handed to the engine in the order their instructions were sent,
  whatever order the shards finish in: the engine folds replies as they come, and
  floating-point sums depend on order, so this is what makes every backend give the same
  model for the same seed, bit for bit. The price: a reply waits for those sent before it
  (a slow site holds back the replies behind it until it answers, its shard dies or the
  engine's deadline passes).
* **No hang.** A shard that dies (killed, out of memory, a site's code that exits) turns each
  instruction it had not answered into an error reply, and its sites leave
  :meth:`available_nodes`; the engine's ``min_replies`` and ``round_timeout`` decide the rest.
"""

from __future__ import annotations

import abc
import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    NodeInfo,
    Reply,
    TransportError,
)
from biofed.simulation._host import TAG_FAILED, TAG_REPLY
from biofed.simulation._sites import SiteRecipe
from biofed.transport import Transport


@dataclass(frozen=True, slots=True)
class _Sent:
    """What the driver remembers of an instruction until its reply is handed out."""

    run_id: str
    round: int
    node_id: str
    kind: MessageKind
    shard: int


def deal(recipes: Sequence[SiteRecipe], shards: int) -> list[list[SiteRecipe]]:
    """Recipes dealt round-robin to ``shards`` shards (so every shard works from the start of
    a round, whose instructions go out in site order)."""
    return [list(recipes[i::shards]) for i in range(shards)]


def check_recipes(recipes: Sequence[SiteRecipe]) -> None:
    """At least one recipe, no site twice.

    Raises
    ------
    ConfigurationError
        Naming the problem.
    """
    if not recipes:
        raise ConfigurationError("a simulation needs at least one site")
    seen: set[str] = set()
    for recipe in recipes:
        if not isinstance(recipe, SiteRecipe):
            raise ConfigurationError(f"sites must be SiteRecipe, got {type(recipe).__name__}")
        if recipe.node_id in seen:
            raise ConfigurationError(f"site {recipe.node_id!r} is listed twice")
        seen.add(recipe.node_id)


class ShardedTransport(Transport):
    """A :class:`~biofed.transport.Transport` to sites hosted by ``shards`` shards.

    Subclasses move bytes: :meth:`_submit` hands one instruction frame to a shard,
    :meth:`_collect` waits for results and reports them through :meth:`_arrive` and
    :meth:`_lost`.
    """

    def __init__(self, recipes: Sequence[SiteRecipe], shards: int) -> None:
        from biofed.transport.grpc import decode_reply, encode_instruction

        check_recipes(recipes)
        self._encode: Callable[[Instruction], bytes] = encode_instruction
        self._decode: Callable[[memoryview], Reply] = decode_reply
        self.shards = shards
        self._shard_of = {r.node_id: i % shards for i, r in enumerate(recipes)}
        self._info = [NodeInfo(node_id=r.node_id) for r in recipes]
        self._dead: dict[int, str] = {}
        self._order: collections.deque[int] = collections.deque()
        self._sent: dict[int, _Sent] = {}
        self._arrived: dict[int, Reply] = {}
        self._next_seq = 0
        self._closed = False

    # -- for subclasses ---------------------------------------------------------------
    @abc.abstractmethod
    def _submit(self, shard: int, seq: int, frame: bytes) -> None:
        """Hand instruction ``seq`` (an encoded frame) to ``shard`` without blocking."""

    @abc.abstractmethod
    def _collect(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds (``None``: until something happens) for results,
        and report each through :meth:`_arrive` or :meth:`_lost`."""

    @abc.abstractmethod
    def _shutdown(self) -> None:
        """Stop every shard and release its resources."""

    @abc.abstractmethod
    def worker_pids(self) -> list[int]:
        """Process ids of the shards still running (for resource reports and tests)."""

    def _refresh(self) -> None:
        """Notice shards that died while nothing was outstanding (cheap; optional)."""

    def _arrive(self, seq: int, result: memoryview) -> None:
        """A shard's tagged result for instruction ``seq``."""
        sent = self._sent.get(seq)
        if sent is None or seq in self._arrived:
            return  # the transport was closed meanwhile, or a duplicate
        tag = bytes(result[:1])
        if tag == TAG_REPLY:
            try:
                reply = self._decode(result[1:])
            except BiofedError as exc:
                reply = _error(sent, f"transport: undecodable reply from the site's worker: {exc}")
        elif tag == TAG_FAILED:
            reply = _error(sent, bytes(result[1:]).decode(errors="replace")[:500])
        else:
            reply = _error(sent, "transport: malformed result from the site's worker")
        self._arrived[seq] = reply

    def _lost(self, shard: int, why: str) -> None:
        """``shard`` is gone: its unanswered instructions become error replies."""
        if shard in self._dead:
            return
        self._dead[shard] = why
        for seq, sent in self._sent.items():
            if sent.shard == shard and seq not in self._arrived:
                self._arrived[seq] = _error(sent, f"transport: {why}")

    # -- Transport --------------------------------------------------------------------
    def available_nodes(self) -> Sequence[NodeInfo]:
        if not self._closed:
            self._refresh()
        return [i for i in self._info if self._shard_of[i.node_id] not in self._dead]

    def send(self, instruction: Instruction) -> None:
        if self._closed:
            raise TransportError("transport is closed")
        shard = self._shard_of.get(instruction.node_id)
        if shard is None:
            raise TransportError(f"node {instruction.node_id!r} is not connected")
        if shard in self._dead:
            raise TransportError(
                f"node {instruction.node_id!r} is not connected ({self._dead[shard]})"
            )
        frame = self._encode(instruction)
        seq = self._next_seq
        self._next_seq += 1
        self._sent[seq] = _Sent(
            instruction.run_id, instruction.round, instruction.node_id, instruction.kind, shard
        )
        self._order.append(seq)
        self._submit(shard, seq, frame)

    def receive(self, timeout: float | None = None) -> Reply | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._order and not self._closed:
            head = self._order[0]
            reply = self._arrived.pop(head, None)
            if reply is not None:
                self._order.popleft()
                del self._sent[head]
                return reply
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self._collect(remaining)
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._order.clear()
        self._sent.clear()
        self._arrived.clear()
        self._shutdown()


def _error(sent: _Sent, message: str) -> Reply:
    return Reply(
        run_id=sent.run_id, round=sent.round, node_id=sent.node_id, kind=sent.kind, error=message
    )
