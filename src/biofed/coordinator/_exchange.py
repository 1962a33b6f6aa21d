"""The exchange: how a round talks to its nodes, and the two kinds of training round built on it.

The round engine (:mod:`biofed.coordinator._engine`) owns the loop; each phase of a round is
an *exchange*: send one instruction per selected node, then collect the replies until all are
in, the deadline passes or the run is cancelled, checking each one before it is used. The
engine publishes that capability as the :class:`Exchange` protocol, and a training round
is a :class:`TrainingRound`: a plain round (:class:`PlainRound`, one exchange folded into the
strategy's aggregate) or a secure round (:class:`~biofed.coordinator.SecureRound`, four
exchanges of SecAgg+). Neither knows the engine, and the engine knows neither's insides::

    RoundEngine ──builds──▶ NodeExchange (implements Exchange, over a Transport)
         │
         └──runs──▶ TrainingRound.train(exchange, …)   PlainRound | SecureRound

Every instruction is built by one function, :func:`build_instruction`.

Security notes
--------------
Threat: a node (or anyone on its path) sending a reply for another run, round, phase or node,
a replayed reply, a reply claiming more examples than its site declared (to weigh more in the
mean) or carrying non-finite metrics. :meth:`NodeExchange.exchange` refuses each before a
strategy or the secure-aggregation server sees it (the checks of Bonawitz et al. 2017, §3,
that the server only accepts messages from the parties of the current step).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from biofed.coordinator._records import RunCancelled, RunEvent
from biofed.core import (
    BiofedError,
    Instruction,
    MessageKind,
    NodeInfo,
    ParameterSet,
    ParameterSpec,
    ProtocolError,
    Reply,
    RoundFailed,
    Scalar,
    TransportError,
)
from biofed.core.sections import NO_JOB, JobSection
from biofed.strategies import AggregateResult, NodePlan, Strategy, StrategyState
from biofed.transport import Transport

#: Largest metric magnitude a reply may carry: anything larger is refused like a NaN, since
#: an example-weighted mean of it would overflow to ±Inf (e.g. -1e308 from a hostile site).
MAX_METRIC_ABS = 1e100

#: Longest wait on the transport between two looks at the cancel flag (seconds).
CANCEL_POLL_S = 0.1


def build_instruction(
    *,
    run_id: str,
    server_round: int,
    kind: MessageKind,
    parameters: ParameterSet,
    plan: NodePlan,
    seed: int,
    job: JobSection = NO_JOB,
    run_config: Mapping[str, Scalar] | None = None,
) -> Instruction:
    """The instruction for one node in one phase: the run's settings, the strategy's plan for
    the node (its keys win) and the run's seed (unless the plan sets one).

    The only place the coordinator builds an :class:`~biofed.core.Instruction`. ``job`` is
    the run's typed job section; ``run_config`` (flat keys, for callers written before the
    sections) is lifted into the sections by :class:`~biofed.core.Instruction`. A strategy's
    flat keys (``dp.clip_norm``, ``secagg.stage``…) become the round's directives.
    """
    config = {**(run_config or {}), **plan.config}
    config.setdefault("seed", seed)
    return Instruction(
        run_id=run_id,
        round=server_round,
        node_id=plan.node_id,
        kind=kind,
        parameters=parameters,
        job=job,
        config=config,
        extras=plan.extras,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Exchanged:
    """What an exchange ended with.

    Attributes
    ----------
    accepted:
        Replies that passed every check and were handed to ``accept``.
    rejected:
        Replies refused (wrong run/round/node, errors, late, refused by ``accept``).
    silent:
        Nodes that were sent an instruction and never answered in time.
    """

    accepted: int
    rejected: int
    silent: frozenset[str]


@runtime_checkable
class Exchange(Protocol):
    """One run's conversation with its nodes, as the round engine offers it to a round.

    A round sends through :meth:`exchange` only (it never holds the transport) and tells the
    operator what happened through :meth:`event`.
    """

    @property
    def run_id(self) -> str:
        """The run every instruction and reply belongs to."""
        ...

    def exchange(
        self,
        server_round: int,
        kind: MessageKind,
        parameters: ParameterSet,
        plans: Sequence[NodePlan],
        accept: Callable[[Reply], None],
        spec: ParameterSpec | None = None,
    ) -> Exchanged:
        """Send one instruction per plan (``parameters`` and the plan's config and extras),
        then hand each valid reply to ``accept`` as it arrives, until every node answered,
        the deadline passed or the run was cancelled.

        A reply is valid when it is for this run, round, phase and a node that was asked and
        has not answered, carries no error, finite metrics and at most the examples its node
        declared, and (with ``spec``) parameters of that layout. ``accept`` may refuse a reply
        by raising a :class:`~biofed.core.BiofedError`.

        Raises
        ------
        RunCancelled
            Once the run is cancelled (nothing more is sent, no reply is used).
        """
        ...

    def event(self, server_round: int, kind: str, message: str, node_id: str | None = None) -> None:
        """Record something the operator should know (a dropout, a refusal…)."""
        ...


class TrainingRound(Protocol):
    """How a round's training phase turns the strategy's plans into an aggregate."""

    def train(
        self,
        exchange: Exchange,
        server_round: int,
        params: ParameterSet,
        state: StrategyState,
        plans: list[NodePlan],
        num_nodes: int,
    ) -> AggregateResult:
        """Run the training phase over ``exchange`` and return the aggregate.

        Raises
        ------
        RoundFailed
            When the round produced no aggregate (the model stays as it was).
        RunCancelled
            Once the run is cancelled.
        """
        ...


class PlainRound:
    """A training round in the clear: one exchange, each reply folded into the strategy's
    aggregate as it arrives (so the coordinator holds one reply at a time).

    Parameters
    ----------
    strategy:
        Aggregates the replies.
    min_replies:
        Valid replies needed; fewer and the round fails.
    """

    def __init__(self, strategy: Strategy, *, min_replies: int = 1) -> None:
        self.strategy = strategy
        self.min_replies = min_replies

    def train(
        self,
        exchange: Exchange,
        server_round: int,
        params: ParameterSet,
        state: StrategyState,
        plans: list[NodePlan],
        num_nodes: int,
    ) -> AggregateResult:
        aggregator = self.strategy.begin_train_aggregation(server_round, params, state, num_nodes)
        done = exchange.exchange(
            server_round, MessageKind.TRAIN, params, plans, aggregator.add, params.spec
        )
        if done.accepted < self.min_replies:
            raise RoundFailed(
                f"{done.accepted} valid training replies, the run needs {self.min_replies}"
            )
        result = aggregator.finish()
        if not result.parameters.all_finite():
            raise RoundFailed("the aggregate contains NaN or infinite values")
        return result


class ExchangeListener(Protocol):
    """What the exchange reports as replies arrive (the engine's listener fits)."""

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None: ...


class NodeExchange:
    """The :class:`Exchange` over a :class:`~biofed.transport.Transport`, with deadline and
    cancel (the one the round engine builds).

    Parameters
    ----------
    transport:
        How to reach the nodes.
    run_id:
        The run (replies for another are refused).
    round_timeout:
        Seconds each exchange waits for replies; ``None`` waits for all.
    job, run_config, seed:
        What :func:`build_instruction` adds to every instruction: the run's typed job
        section (and, from callers written before the sections, flat run keys).
    listener:
        Told of every reply, accepted or not.
    on_event:
        Receives every event the exchange (or a round through it) records.
    clock:
        Monotonic clock in seconds.
    cancel:
        Set when the run is cancelled: nothing more is sent and the exchange raises
        :class:`RunCancelled` within :data:`CANCEL_POLL_S` seconds, even while it waits.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        run_id: str,
        round_timeout: float | None,
        run_config: Mapping[str, Scalar],
        seed: int,
        listener: ExchangeListener,
        job: JobSection = NO_JOB,
        on_event: Callable[[RunEvent], None],
        clock: Callable[[], float],
        cancel: threading.Event | None = None,
    ) -> None:
        self.transport = transport
        self._run_id = run_id
        self.round_timeout = round_timeout
        self.run_config = run_config
        self.job = job
        self.seed = seed
        self.listener = listener
        self.on_event = on_event
        self.clock = clock
        self.cancel = cancel
        self._declared: dict[str, int] = {}
        #: Training (or secure-aggregation) replies refused since :meth:`start_round`.
        self.rejected = 0

    @property
    def run_id(self) -> str:
        return self._run_id

    def start_round(self, nodes: Sequence[NodeInfo]) -> None:
        """A new round over ``nodes``: their declared example counts cap their replies'."""
        self._declared = {n.node_id: n.num_examples for n in nodes}
        self.rejected = 0

    def check_cancel(self) -> None:
        """Raise :class:`RunCancelled` once the run is cancelled."""
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled(f"run {self._run_id!r} was cancelled")

    def event(self, server_round: int, kind: str, message: str, node_id: str | None = None) -> None:
        self.on_event(RunEvent(round=server_round, kind=kind, message=message, node_id=node_id))

    def exchange(
        self,
        server_round: int,
        kind: MessageKind,
        parameters: ParameterSet,
        plans: Sequence[NodePlan],
        accept: Callable[[Reply], None],
        spec: ParameterSpec | None = None,
    ) -> Exchanged:
        outstanding: set[str] = set()
        for plan in plans:
            self.check_cancel()  # nothing more is sent once the run is cancelled
            instruction = build_instruction(
                run_id=self._run_id,
                server_round=server_round,
                kind=kind,
                parameters=parameters,
                plan=plan,
                run_config=self.run_config,
                job=self.job,
                seed=self.seed,
            )
            try:
                self.transport.send(instruction)
                outstanding.add(plan.node_id)
            except TransportError as exc:
                self.event(server_round, "send_failed", str(exc), plan.node_id)
        accepted = rejected = 0
        timeout = self.round_timeout
        deadline = None if timeout is None else self.clock() + timeout
        while outstanding:
            reply = self._receive(deadline)
            if reply is None:
                break
            if deadline is not None and self.clock() > deadline:
                self.event(server_round, "reply_late", "arrived after the deadline", reply.node_id)
                self.listener.on_reply(server_round, reply, False)
                rejected += 1
                break
            ok = self._check_reply(server_round, kind, reply, outstanding)
            if ok:
                outstanding.discard(reply.node_id)
                try:
                    if spec is not None and reply.parameters is not None:
                        spec.validate(reply.parameters, what=f"update from {reply.node_id}")
                    accept(reply)
                except BiofedError as exc:
                    self.event(server_round, "reply_rejected", str(exc), reply.node_id)
                    ok = False
            accepted += ok
            rejected += not ok
            self.listener.on_reply(server_round, reply, ok)
            # Drop the reply before waiting for the next: with large models, its arrays are
            # the transport's receive buffer, and the next reply's buffer must not coexist.
            del reply
        for node_id in sorted(outstanding):
            self.event(server_round, "no_reply", f"no {kind.value} reply in time", node_id)
        if kind is not MessageKind.EVALUATE:
            self.rejected += rejected
        return Exchanged(accepted=accepted, rejected=rejected, silent=frozenset(outstanding))

    def _receive(self, deadline: float | None) -> Reply | None:
        """The next reply, ``None`` at the deadline; wakes every :data:`CANCEL_POLL_S`
        seconds to look at the cancel flag when there is one."""
        while True:
            self.check_cancel()
            remaining = None if deadline is None else deadline - self.clock()
            if remaining is not None and remaining <= 0:
                return None
            if self.cancel is None:
                return self.transport.receive(timeout=remaining)
            wait = CANCEL_POLL_S if remaining is None else min(remaining, CANCEL_POLL_S)
            reply = self.transport.receive(timeout=wait)
            if reply is not None:
                self.check_cancel()  # a reply that arrives after the cancel is not used
                return reply

    def _check_reply(
        self, server_round: int, kind: MessageKind, reply: Reply, outstanding: set[str]
    ) -> bool:
        try:
            if reply.run_id != self._run_id:
                raise ProtocolError(f"reply for run {reply.run_id!r}, this is {self._run_id!r}")
            if reply.round != server_round or reply.kind != kind:
                raise ProtocolError(
                    f"reply for {reply.kind.value} round {reply.round} arrived during "
                    f"{kind.value} round {server_round} (late or replayed)"
                )
            if reply.node_id not in outstanding:
                raise ProtocolError("reply from a node that was not asked or already answered")
            if reply.error is not None:
                outstanding.discard(reply.node_id)
                raise ProtocolError(f"node reported an error: {reply.error}")
            if kind is MessageKind.TRAIN and reply.parameters is None:
                outstanding.discard(reply.node_id)
                raise ProtocolError("training reply carries no parameters")
            bad = sorted(k for k, v in reply.metrics.items() if not abs(v) <= MAX_METRIC_ABS)
            if bad:
                outstanding.discard(reply.node_id)
                raise ProtocolError(
                    f"reply carries non-finite or out-of-range metrics ({', '.join(bad[:5])}): "
                    f"metrics must be finite numbers within ±{MAX_METRIC_ABS:g}"
                )
            declared = self._declared.get(reply.node_id, 0)
            if 0 < declared < reply.num_examples:
                outstanding.discard(reply.node_id)
                what = {
                    MessageKind.TRAIN: "training",
                    MessageKind.SUMMARISE: "summarised",
                    MessageKind.QUERY: "queried",
                }.get(kind, "evaluation")
                raise ProtocolError(
                    f"reply claims {reply.num_examples} {what} examples, the node declared "
                    f"{declared} for this dataset (a site's weight is capped by what it declared)"
                )
        except ProtocolError as exc:
            self.event(server_round, "reply_rejected", str(exc), reply.node_id)
            return False
        return True
