"""The round engine: configure → dispatch → collect → aggregate → evaluate → record.

The engine owns the round loop (a strategy can change how to aggregate, never skip the
checks): every reply is validated against the run, the round, the node it was sent to and
the model's parameter layout before a strategy sees it, and folded into the strategy's
aggregate as it arrives. It reaches nodes only through a :class:`~biofed.transport.Transport`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from biofed.coordinator._records import RoundRecord, RunCancelled, RunEvent, RunResult
from biofed.coordinator._secure import SecureRound
from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    Metrics,
    ParameterSet,
    ParameterSpec,
    ProtocolError,
    Reply,
    RoundFailed,
    Scalar,
    TransportError,
    check_id,
    freeze_config,
)
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import AggregateResult, NodePlan, Strategy, StrategyState
from biofed.transport import Transport


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """How the engine runs rounds.

    Attributes
    ----------
    rounds:
        Number of training rounds (≥ 1).
    min_nodes:
        Nodes that must be available to start a round.
    min_replies:
        Valid training replies needed to aggregate; fewer and the round fails (the model
        stays as it was and the run goes on).
    round_timeout:
        Seconds to wait for replies in each phase (train, evaluate); ``None`` waits for all.
        Replies arriving after the deadline belong to a closed round and are discarded.
    evaluate_every:
        Evaluate the global model after every k-th round; the last round is always
        evaluated. 0 evaluates only after the last round.
    seed:
        Seed for node selection and for the nodes' local randomness (sent as ``seed`` in
        every instruction's config); ``None`` draws one from the OS.
    """

    rounds: int
    min_nodes: int = 1
    min_replies: int = 1
    round_timeout: float | None = None
    evaluate_every: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigurationError(f"rounds must be >= 1, got {self.rounds}")
        if self.min_nodes < 1 or self.min_replies < 1:
            raise ConfigurationError("min_nodes and min_replies must be >= 1")
        if self.min_replies > self.min_nodes:
            raise ConfigurationError(
                f"min_replies ({self.min_replies}) cannot exceed min_nodes ({self.min_nodes})"
            )
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ConfigurationError(f"round_timeout must be > 0, got {self.round_timeout}")
        if self.evaluate_every < 0:
            raise ConfigurationError(f"evaluate_every must be >= 0, got {self.evaluate_every}")


#: Largest metric magnitude a reply may carry: anything larger is refused like a NaN, since
#: an example-weighted mean of it would overflow to ±Inf (e.g. -1e308 from a hostile site).
MAX_METRIC_ABS = 1e100

#: Longest wait on the transport between two looks at the cancel flag (seconds).
CANCEL_POLL_S = 0.1


class EngineListener(Protocol):
    """Progress hooks (a Rich progress bar, a state store…). Every method is optional."""

    def on_round_start(self, server_round: int, num_selected: int) -> None: ...

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None: ...

    def on_round_end(self, record: RoundRecord) -> None: ...

    def on_event(self, event: RunEvent) -> None: ...


class _Silent:
    def on_round_start(self, server_round: int, num_selected: int) -> None:
        pass

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        pass

    def on_event(self, event: RunEvent) -> None:
        pass


class RoundEngine:
    """Runs a strategy's rounds over a transport.

    Parameters
    ----------
    strategy:
        How to select, configure and aggregate.
    transport:
        How to reach the nodes.
    config:
        Rounds, minimums, deadline, evaluation cadence, seed.
    run_id:
        Identifier echoed by every reply (replies for another run are refused).
    listener:
        Optional progress hooks.
    clock:
        Monotonic clock in seconds (injected for tests).
    instruction_config:
        Run-level settings added to every instruction's config (the task, the dataset…);
        a strategy's own keys win.
    secure_aggregation:
        With settings, every training round runs SecAgg+ (:mod:`biofed.coordinator._secure`)
        and the engine only ever holds the sites' (weighted) mean update.
    cancel:
        Set when the run is cancelled: the engine sends no further instruction and
        :meth:`run_round` raises :class:`RunCancelled` within :data:`CANCEL_POLL_S` seconds,
        even while it waits for replies.
    """

    def __init__(
        self,
        strategy: Strategy,
        transport: Transport,
        config: EngineConfig,
        *,
        run_id: str = "run",
        listener: EngineListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        instruction_config: Mapping[str, Scalar] | None = None,
        secure_aggregation: SecureAggregationSettings | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.strategy = strategy
        self.cancel = cancel
        self.secure_aggregation = secure_aggregation
        self.instruction_config = freeze_config(instruction_config)
        self.transport = transport
        self.config = config
        self.run_id = check_id(run_id, what="run_id")
        self.listener: EngineListener = listener or _Silent()
        self.clock = clock
        seed = config.seed
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = seed
        self._events: list[RunEvent] = []
        self._declared: dict[str, int] = {}
        #: Training (or secure-aggregation) replies refused in the current round.
        self._rejected = 0

    # ------------------------------------------------------------------------------------
    def run(
        self,
        initial: ParameterSet,
        *,
        state: StrategyState | None = None,
        start_round: int = 1,
    ) -> RunResult:
        """Run rounds ``start_round … config.rounds`` from ``initial`` and return the result.

        ``state`` and ``start_round`` let a run resume from a checkpoint; selection RNG is
        derived from (seed, round), so a resumed run makes the same choices.
        """
        if not initial.all_finite():
            raise ConfigurationError("initial parameters contain NaN or infinite values")
        params = initial
        strategy_state = state if state is not None else self.strategy.init_state(initial)
        history: list[RoundRecord] = []
        for server_round in range(start_round, self.config.rounds + 1):
            params, strategy_state, record = self.run_round(server_round, params, strategy_state)
            history.append(record)
        return RunResult(
            run_id=self.run_id,
            parameters=params,
            state=strategy_state,
            history=tuple(history),
            events=tuple(self._events),
        )

    def run_round(
        self, server_round: int, params: ParameterSet, state: StrategyState
    ) -> tuple[ParameterSet, StrategyState, RoundRecord]:
        """One round: train, aggregate, maybe evaluate. Never raises for a failed round;
        raises :class:`RunCancelled` once the run is cancelled."""
        self._check_cancel()
        started = self.clock()
        rng = np.random.default_rng([self.seed, server_round])
        nodes = list(self.transport.available_nodes())
        self._declared = {n.node_id: n.num_examples for n in nodes}
        record_kwargs: dict[str, object] = {"round": server_round}
        self._rejected = 0
        try:
            if len(nodes) < self.config.min_nodes:
                raise RoundFailed(
                    f"{len(nodes)} nodes available, the run needs {self.config.min_nodes}"
                )
            plans = self.strategy.configure_train(server_round, params, state, nodes, rng)
            self.listener.on_round_start(server_round, len(plans))
            record_kwargs["num_selected"] = len(plans)
            if self.secure_aggregation is not None:
                secure = SecureRound(self, self.secure_aggregation)
                result = secure.run(server_round, params, state, plans, len(nodes))
            else:
                result = self._aggregate(server_round, params, state, plans, len(nodes))
            params, state = result.parameters, result.state
            record_kwargs.update(num_replies=result.num_replies, train_metrics=result.metrics)
        except RoundFailed as exc:
            self._event(server_round, "round_failed", str(exc))
            record_kwargs.setdefault("num_selected", 0)
            record_kwargs.update(num_replies=0, failed=str(exc))
        record_kwargs["num_rejected"] = self._rejected  # training replies refused, failed or not
        if self._should_evaluate(server_round):
            aggregate, per_node = self._evaluate(server_round, params, rng)
            record_kwargs.update(eval_metrics=aggregate, node_eval_metrics=per_node)
        record = RoundRecord(duration_s=self.clock() - started, **record_kwargs)  # type: ignore[arg-type]
        self.listener.on_round_end(record)
        return params, state, record

    def _aggregate(
        self,
        server_round: int,
        params: ParameterSet,
        state: StrategyState,
        plans: list[NodePlan],
        num_nodes: int,
    ) -> AggregateResult:
        """Send the training instructions and fold the replies as they arrive."""
        aggregator = self.strategy.begin_train_aggregation(server_round, params, state, num_nodes)
        accepted, _, _ = self._exchange(
            server_round, MessageKind.TRAIN, params, plans, aggregator.add, params.spec
        )
        if accepted < self.config.min_replies:
            raise RoundFailed(
                f"{accepted} valid training replies, the run needs {self.config.min_replies}"
            )
        result = aggregator.finish()
        if not result.parameters.all_finite():
            raise RoundFailed("the aggregate contains NaN or infinite values")
        return result

    # ------------------------------------------------------------------------------------
    def _should_evaluate(self, server_round: int) -> bool:
        every = self.config.evaluate_every
        last = server_round == self.config.rounds
        return last or (every > 0 and server_round % every == 0)

    def _evaluate(
        self, server_round: int, params: ParameterSet, rng: np.random.Generator
    ) -> tuple[dict[str, float], Mapping[str, Metrics]]:
        nodes = list(self.transport.available_nodes())
        try:
            plans = self.strategy.configure_evaluate(server_round, params, nodes, rng)
        except RoundFailed as exc:
            self._event(server_round, "evaluate_failed", str(exc))
            return {}, MappingProxyType({})
        replies: list[Reply] = []
        self._exchange(server_round, MessageKind.EVALUATE, params, plans, replies.append, None)
        per_node = MappingProxyType({r.node_id: r.metrics for r in replies})
        return self.strategy.aggregate_evaluate(server_round, replies), per_node

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise RunCancelled(f"run {self.run_id!r} was cancelled")

    def _receive(self, deadline: float | None) -> Reply | None:
        """The next reply, ``None`` at the deadline; wakes every :data:`CANCEL_POLL_S`
        seconds to look at the cancel flag when there is one."""
        while True:
            self._check_cancel()
            remaining = None if deadline is None else deadline - self.clock()
            if remaining is not None and remaining <= 0:
                return None
            if self.cancel is None:
                return self.transport.receive(timeout=remaining)
            wait = CANCEL_POLL_S if remaining is None else min(remaining, CANCEL_POLL_S)
            reply = self.transport.receive(timeout=wait)
            if reply is not None:
                self._check_cancel()  # a reply that arrives after the cancel is not used
                return reply

    def _exchange(
        self,
        server_round: int,
        kind: MessageKind,
        params: ParameterSet,
        plans: list[NodePlan],
        accept: Callable[[Reply], None],
        spec: ParameterSpec | None,
    ) -> tuple[int, int, set[str]]:
        """Send one instruction per plan, then fold valid replies until all are in or the
        deadline passes. Returns (accepted, rejected, nodes that never answered)."""
        outstanding: set[str] = set()
        for plan in plans:
            self._check_cancel()  # nothing more is sent once the run is cancelled
            config = {**self.instruction_config, **plan.config}
            config.setdefault("seed", self.seed)
            instruction = Instruction(
                run_id=self.run_id,
                round=server_round,
                node_id=plan.node_id,
                kind=kind,
                parameters=params,
                config=config,
                extras=plan.extras,
            )
            try:
                self.transport.send(instruction)
                outstanding.add(plan.node_id)
            except TransportError as exc:
                self._event(server_round, "send_failed", str(exc), plan.node_id)
        accepted = rejected = 0
        timeout = self.config.round_timeout
        deadline = None if timeout is None else self.clock() + timeout
        while outstanding:
            reply = self._receive(deadline)
            if reply is None:
                break
            if deadline is not None and self.clock() > deadline:
                self._event(server_round, "reply_late", "arrived after the deadline", reply.node_id)
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
                    self._event(server_round, "reply_rejected", str(exc), reply.node_id)
                    ok = False
            accepted += ok
            rejected += not ok
            self.listener.on_reply(server_round, reply, ok)
            # Drop the reply before waiting for the next: with large models, its arrays are
            # the transport's receive buffer, and the next reply's buffer must not coexist.
            del reply
        for node_id in sorted(outstanding):
            self._event(server_round, "no_reply", f"no {kind.value} reply in time", node_id)
        if kind is not MessageKind.EVALUATE:
            self._rejected += rejected
        return accepted, rejected, outstanding

    def _check_reply(
        self, server_round: int, kind: MessageKind, reply: Reply, outstanding: set[str]
    ) -> bool:
        try:
            if reply.run_id != self.run_id:
                raise ProtocolError(f"reply for run {reply.run_id!r}, this is {self.run_id!r}")
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
                what = "training" if kind is MessageKind.TRAIN else "evaluation"
                raise ProtocolError(
                    f"reply claims {reply.num_examples} {what} examples, the node declared "
                    f"{declared} for this dataset (a site's weight is capped by what it declared)"
                )
        except ProtocolError as exc:
            self._event(server_round, "reply_rejected", str(exc), reply.node_id)
            return False
        return True

    def _event(self, server_round: int, kind: str, message: str, node: str | None = None) -> None:
        event = RunEvent(round=server_round, kind=kind, message=message, node_id=node)
        self._events.append(event)
        self.listener.on_event(event)
