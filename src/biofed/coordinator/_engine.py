"""The round engine: configure → dispatch → collect → aggregate → evaluate → record.

The engine owns the round loop, the only one (a strategy can change how to aggregate, never
skip the checks; the coordinator's executor hooks into the loop to wait for sites and commit
each round, it does not run its own). Each phase of a round is an exchange over the
engine's :class:`~biofed.coordinator.NodeExchange` (every reply validated against the run,
the round, the node it was sent to and the model's parameter layout before a strategy sees
it); the training phase is a :class:`~biofed.coordinator.TrainingRound`, plain or secure.
It reaches nodes only through the :class:`~biofed.transport.Transport` it is given.

A job with a study dataset spec starts with the preprocessing phase
(:meth:`RoundEngine.preprocess`, :mod:`biofed.coordinator._preprocess`): SUMMARISE passes
over the same exchange, until the fitted preprocessing travels in every later instruction.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

import numpy as np

from biofed.coordinator._exchange import (
    CANCEL_POLL_S,
    MAX_METRIC_ABS,
    Exchange,
    NodeExchange,
    PlainRound,
    TrainingRound,
)
from biofed.coordinator._preprocess import (
    PREPROCESSING_EVENT,
    SUMMARIES_EVENT,
    PreprocessingFailed,
    fitted_task_options,
    run_preprocessing,
    summaries_json,
)
from biofed.coordinator._records import RoundRecord, RunEvent, RunResult
from biofed.coordinator._secure import SecureRound
from biofed.core import (
    ConfigurationError,
    MessageKind,
    Metrics,
    ParameterSet,
    Reply,
    RoundFailed,
    Scalar,
    check_id,
    freeze_config,
)
from biofed.core.sections import NO_JOB, JobSection
from biofed.data import Preprocessing, StudySpec
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import Strategy, StrategyState
from biofed.transport import Transport

#: Run-event kinds of robust aggregation's decisions: ``update_accepted``, ``update_rejected``,
#: ``update_downweighted``, ``update_clipped`` (message: the decision as JSON).
DECISION_EVENT_PREFIX = "update_"

__all__ = [
    "CANCEL_POLL_S",
    "MAX_METRIC_ABS",
    "AfterRound",
    "BeforeRound",
    "EngineConfig",
    "EngineListener",
    "RoundEngine",
]


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


#: Called before each round; False stops the run there (it is not ended: it can resume).
BeforeRound = Callable[[int], bool]
#: Called after each round with its model, strategy state and record (e.g. to commit it).
AfterRound = Callable[[int, ParameterSet, StrategyState, RoundRecord], None]


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
    job:
        The run's job section every instruction carries (the task, the dataset, the privacy
        and secure-aggregation settings…: :meth:`~biofed.coordinator.JobSpec.job_section`).
    instruction_config:
        The same in the flat form (for callers written before the sections) plus any
        run-level task keys; a strategy's own keys win.
    secure_aggregation:
        With settings, every training round runs SecAgg+ (:mod:`biofed.coordinator._secure`)
        and the engine only ever holds the sites' (weighted) mean update.
    cancel:
        Set when the run is cancelled: the engine sends no further instruction and
        :meth:`run_round` raises :class:`RunCancelled` within :data:`CANCEL_POLL_S` seconds,
        even while it waits for replies.
    training:
        How training rounds aggregate, when neither of the defaults (a
        :class:`~biofed.coordinator.PlainRound`, or a :class:`~biofed.coordinator.SecureRound`
        with ``secure_aggregation``) fits. It reaches nodes only through the engine's
        :class:`~biofed.coordinator.Exchange`, so every reply is still checked.
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
        job: JobSection | None = None,
        secure_aggregation: SecureAggregationSettings | None = None,
        cancel: threading.Event | None = None,
        training: TrainingRound | None = None,
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
        #: The one conversation with the nodes; every round's phases go through it.
        self.exchange = NodeExchange(
            transport,
            run_id=self.run_id,
            round_timeout=config.round_timeout,
            run_config=self.instruction_config,
            job=job or NO_JOB,
            seed=seed,
            listener=self.listener,
            on_event=self._record,
            clock=clock,
            cancel=cancel,
        )
        #: How the training phase aggregates when not by the defaults (see :meth:`training`).
        self.custom_training = training
        #: The study's fitted preprocessing once :meth:`preprocess` ran (None without one).
        self.preprocessing: Preprocessing | None = None

    @property
    def job(self) -> JobSection:
        """The job section every instruction carries now (with the fitted preprocessing
        once :meth:`preprocess` ran)."""
        return self.exchange.job

    def preprocess(self, fitted: Preprocessing | None = None) -> Preprocessing | None:
        """The preprocessing phase of a study job, before round 1 (nothing without a study).

        SUMMARISE passes go through the sites' chain until the fit is done; the fitted
        preprocessing and the final pass's per-site summaries are recorded as the run events
        ``preprocessing_fitted`` and ``data_summaries``, and every later instruction carries
        the preprocessing (and ``num_features``) in its job section. ``fitted`` (a resumed
        run's, from its ``preprocessing_fitted`` event) is reused without a phase.

        Raises
        ------
        PreprocessingFailed
            When too few sites answered a pass (the sites' reasons in the message).
        ConfigurationError
            When the job's ``num_features`` differs from the fitted feature count.
        RunCancelled
            Once the run is cancelled.
        """
        job = self.exchange.job
        if job.study is None:
            return None
        if self.preprocessing is not None:
            return self.preprocessing
        if fitted is None:
            self.exchange.check_cancel()
            nodes = list(self.transport.available_nodes())
            if len(nodes) < self.config.min_nodes:
                raise PreprocessingFailed(
                    f"preprocessing: {len(nodes)} nodes available, the run needs "
                    f"{self.config.min_nodes}"
                )
            self.exchange.start_round(nodes)
            fitted, summaries = run_preprocessing(
                self.exchange,
                [n.node_id for n in nodes],
                StudySpec.from_json(job.study.spec),
                min_replies=self.config.min_replies,
                events=self._events,
            )
            self._event(0, PREPROCESSING_EVENT, fitted.to_json())
            self._event(0, SUMMARIES_EVENT, summaries_json(summaries))
        options = fitted_task_options(job.task_options, fitted)
        self.exchange.job = dataclasses.replace(
            job, task_options=options, preprocessing=fitted.to_json()
        )
        self.preprocessing = fitted
        return fitted

    def training(self) -> TrainingRound:
        """How this round's training phase aggregates: the given one, else under SecAgg+ with
        :attr:`secure_aggregation`, else in the clear."""
        if self.custom_training is not None:
            return self.custom_training
        if self.secure_aggregation is None:
            return PlainRound(self.strategy, min_replies=self.config.min_replies)
        return SecureRound(
            self.strategy, self.secure_aggregation, min_replies=self.config.min_replies
        )

    # ------------------------------------------------------------------------------------
    def run(
        self,
        initial: ParameterSet,
        *,
        state: StrategyState | None = None,
        start_round: int = 1,
        before_round: BeforeRound | None = None,
        after_round: AfterRound | None = None,
    ) -> RunResult:
        """Run rounds ``start_round … config.rounds`` from ``initial`` and return the result.

        ``state`` and ``start_round`` let a run resume from a checkpoint; selection RNG is
        derived from (seed, round), so a resumed run makes the same choices.
        ``before_round(r)`` returning False stops the run before round ``r`` (the result is
        then ``stopped``); ``after_round`` sees each round's outcome (the coordinator commits
        it there). Raises :class:`~biofed.coordinator.RunCancelled` once the run is cancelled.
        """
        if self.exchange.job.study is not None and self.preprocessing is None:
            raise ConfigurationError(
                "a study job's preprocessing phase comes first: call preprocess() before run()"
            )
        if not initial.all_finite():
            raise ConfigurationError("initial parameters contain NaN or infinite values")
        params = initial
        strategy_state = state if state is not None else self.strategy.init_state(initial)
        history: list[RoundRecord] = []
        stopped = False
        for server_round in range(start_round, self.config.rounds + 1):
            if before_round is not None and not before_round(server_round):
                stopped = True
                break
            params, strategy_state, record = self.run_round(server_round, params, strategy_state)
            history.append(record)
            if after_round is not None:
                after_round(server_round, params, strategy_state, record)
        return RunResult(
            run_id=self.run_id,
            parameters=params,
            state=strategy_state,
            history=tuple(history),
            events=tuple(self._events),
            stopped=stopped,
            preprocessing=None if self.preprocessing is None else self.preprocessing.to_json(),
        )

    def run_round(
        self, server_round: int, params: ParameterSet, state: StrategyState
    ) -> tuple[ParameterSet, StrategyState, RoundRecord]:
        """One round: train, aggregate, maybe evaluate. Never raises for a failed round;
        raises :class:`RunCancelled` once the run is cancelled."""
        self.exchange.check_cancel()
        started = self.clock()
        rng = np.random.default_rng([self.seed, server_round])
        nodes = list(self.transport.available_nodes())
        self.exchange.start_round(nodes)
        record_kwargs: dict[str, object] = {"round": server_round}
        try:
            if len(nodes) < self.config.min_nodes:
                raise RoundFailed(
                    f"{len(nodes)} nodes available, the run needs {self.config.min_nodes}"
                )
            plans = self.strategy.configure_train(server_round, params, state, nodes, rng)
            self.listener.on_round_start(server_round, len(plans))
            record_kwargs["num_selected"] = len(plans)
            result = self.training().train(
                self.exchange, server_round, params, state, plans, len(nodes)
            )
            params, state = result.parameters, result.state
            record_kwargs.update(num_replies=result.num_replies, train_metrics=result.metrics)
            for decision in result.decisions:  # robust aggregation and update validation
                self._event(
                    server_round,
                    f"{DECISION_EVENT_PREFIX}{decision.action}",
                    json.dumps(decision.to_dict(), sort_keys=True),
                    decision.node_id,
                )
            for kind, message in result.events.items():  # e.g. measured contributions
                self._event(server_round, kind, message)
        except RoundFailed as exc:
            self._event(server_round, "round_failed", str(exc))
            record_kwargs.setdefault("num_selected", 0)
            record_kwargs.update(num_replies=0, failed=str(exc))
        # training replies refused, failed or not
        record_kwargs["num_rejected"] = self.exchange.rejected
        if self._should_evaluate(server_round):
            aggregate, per_node = self._evaluate(server_round, params, rng)
            record_kwargs.update(eval_metrics=aggregate, node_eval_metrics=per_node)
        record = RoundRecord(duration_s=self.clock() - started, **record_kwargs)  # type: ignore[arg-type]
        self.listener.on_round_end(record)
        return params, state, record

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
        exchange: Exchange = self.exchange
        exchange.exchange(server_round, MessageKind.EVALUATE, params, plans, replies.append)
        per_node = MappingProxyType({r.node_id: r.metrics for r in replies})
        return self.strategy.aggregate_evaluate(server_round, replies), per_node

    def _event(self, server_round: int, kind: str, message: str, node: str | None = None) -> None:
        self._record(RunEvent(round=server_round, kind=kind, message=message, node_id=node))

    def _record(self, event: RunEvent) -> None:
        self._events.append(event)
        self.listener.on_event(event)
