"""The run state store: what a coordinator must not forget when it is killed.

A coordinator persists every run (its job spec, owner and status), every completed round (the
:class:`~biofed.coordinator.RoundRecord` and a checkpoint of the model and the strategy's
state), the run's events and the node registry. A coordinator killed with SIGKILL and started
again reads the store and resumes each unfinished run from its last completed round.

:class:`StateStore` is the interface. Its public methods validate their arguments, hold one
lock (the coordinator calls them from gRPC handler threads) and enforce the rules every backend
shares (terminal statuses are final, rounds complete one after another); the backends
(:class:`~biofed.coordinator.InMemoryStateStore`, :class:`~biofed.coordinator.SqlStateStore`)
implement only the storage hooks. :func:`open_store` picks a backend from a URL.
"""

from __future__ import annotations

import json
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Literal, get_args

from biofed.coordinator._records import RoundRecord, RunEvent, event_data
from biofed.core import (
    Config,
    ConfigurationError,
    ParameterSet,
    ProtocolError,
    check_id,
    freeze_config,
)
from biofed.core.checks import check_int as _check_int

NodeStatus = Literal["online", "lost", "offline"]
_NODE_STATUSES: frozenset[str] = frozenset(get_args(NodeStatus))

#: How many checkpoints a store keeps per run (the newest ones).
CHECKPOINTS_KEPT = 2


class RunStatus(str, Enum):
    """Where a run is in its life: ``pending → running → finished | finished_with_failures |
    failed | cancelled``.

    ``finished`` means every round completed; ``finished_with_failures`` that at least one
    round completed and at least one failed (no valid replies, a refused aggregate…);
    ``failed`` that no round completed, or that the run itself failed (its reason is in
    :attr:`RunRow.error`).
    """

    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FINISHED_WITH_FAILURES = "finished_with_failures"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for the finished, failed and cancelled states: the run never changes again."""
        return self in _TERMINAL

    @property
    def has_result(self) -> bool:
        """True where the run's last checkpoint is a trained model a researcher may download."""
        return self in (RunStatus.FINISHED, RunStatus.FINISHED_WITH_FAILURES)


_TERMINAL = frozenset(
    {
        RunStatus.FINISHED,
        RunStatus.FINISHED_WITH_FAILURES,
        RunStatus.FAILED,
        RunStatus.CANCELLED,
    }
)


def _status(value: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        allowed = ", ".join(s.value for s in RunStatus)
        raise ConfigurationError(f"run status must be one of {allowed}; got {value!r}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    """A run as the store knows it.

    Attributes
    ----------
    run_id:
        The run's identifier.
    spec:
        The job spec as canonical JSON text (see :func:`~biofed.coordinator.canonical_json`).
    owner:
        Identity name of the submitter (from their verified certificate).
    status:
        Where the run is in its life.
    created_at, updated_at:
        Epoch seconds of submission and of the last change.
    completed_rounds:
        Rounds completed and checkpointed; a restarted run resumes at ``completed_rounds + 1``.
    error:
        Why the run failed, or ``None``.
    attempts:
        Times the run was started (or resumed) since it last completed a round; the scheduler
        fails a run whose attempts reach its bound instead of retrying it for ever.
    """

    run_id: str
    spec: str
    owner: str
    status: RunStatus
    created_at: float
    updated_at: float
    completed_rounds: int = 0
    error: str | None = None
    attempts: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _status(self.status))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRow:
    """A completed round: its record and when it was stored (epoch seconds)."""

    run_id: str
    round: int
    record: RoundRecord
    completed_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRow:
    """A stored :class:`~biofed.coordinator.RunEvent` with its place in the run's log.

    Attributes
    ----------
    seq:
        1-based position in the run's event log, strictly increasing (a client that has seen
        ``seq`` asks for ``events(run_id, after_seq=seq)`` to get only newer ones).
    time:
        Epoch seconds.
    """

    run_id: str
    seq: int
    time: float
    round: int
    kind: str
    message: str
    node_id: str | None = None
    data: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def to_event(self) -> RunEvent:
        """The :class:`~biofed.coordinator.RunEvent` this row stores."""
        return RunEvent(
            round=self.round,
            kind=self.kind,
            message=self.message,
            node_id=self.node_id,
            data=self.data,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    """A node in the registry.

    Attributes
    ----------
    node_id:
        The node's identity (its certificate's name).
    status:
        ``"online"`` (connected), ``"lost"`` (stopped answering) or ``"offline"`` (left).
    last_seen:
        Epoch seconds of the last message from the node.
    properties:
        Facts the node declared (datasets, sizes, hardware), scalars only, finite numbers.
    """

    node_id: str
    status: NodeStatus
    last_seen: float
    properties: Config = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_id(self.node_id, what="node_id")
        if self.status not in _NODE_STATUSES:
            raise ConfigurationError(
                f"node status must be one of {sorted(_NODE_STATUSES)}; got {self.status!r}"
            )
        properties = freeze_config(self.properties)
        for key, value in properties.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigurationError(f"node property {key!r} must be finite, got {value}")
        object.__setattr__(self, "properties", properties)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """The model and the strategy's state after a round: all a run needs to resume.

    Attributes
    ----------
    run_id:
        The run checkpointed.
    round:
        The round after which this is the state (resume at ``round + 1``).
    parameters:
        The global model.
    state:
        The strategy's server state (optimizer moments, control variates), in order.
    """

    run_id: str
    round: int
    parameters: ParameterSet
    state: Mapping[str, ParameterSet] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_id(self.run_id, what="run_id")
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ConfigurationError(f"checkpoint round must be an int >= 0, got {self.round!r}")
        if not isinstance(self.parameters, ParameterSet):
            raise ConfigurationError("checkpoint parameters must be a ParameterSet")
        state = dict(self.state)
        for key, value in state.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"state keys must be non-empty strings, got {key!r}")
            if not isinstance(value, ParameterSet):
                raise ConfigurationError(f"state entry {key!r} must be a ParameterSet")
        object.__setattr__(self, "state", MappingProxyType(state))


class StateStore(ABC):
    """Durable record of runs, rounds, checkpoints, events and nodes.

    Every public method is thread-safe (one lock per store) and validates its arguments
    before touching storage. Methods that name a run raise :class:`~biofed.core.ProtocolError`
    for a run the store does not know (except :meth:`get_run`, which returns ``None``).

    Parameters
    ----------
    clock:
        Wall clock in epoch seconds, for ``created_at``, ``updated_at``, ``completed_at``
        and event times (injected for tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False

    # Runs ------------------------------------------------------------------------------
    def create_run(self, run_id: str, spec: str, owner: str) -> RunRow:
        """Store a new run with status ``pending`` and return it.

        Raises
        ------
        ConfigurationError
            If ``run_id`` is not a valid id or already exists, ``spec`` is not JSON text or
            ``owner`` is empty.
        """
        check_id(run_id, what="run_id")
        if not isinstance(spec, str):
            raise ConfigurationError(f"spec must be JSON text, got {type(spec).__name__}")
        try:
            json.loads(spec)
        except ValueError as exc:
            raise ConfigurationError(f"spec of run {run_id!r} is not valid JSON: {exc}") from None
        if not isinstance(owner, str) or not owner:
            raise ConfigurationError(f"owner must be a non-empty string, got {owner!r}")
        with self._lock:
            self._check_open()
            now = self._clock()
            row = RunRow(
                run_id=run_id,
                spec=spec,
                owner=owner,
                status=RunStatus.PENDING,
                created_at=now,
                updated_at=now,
            )
            self._insert_run(row)
            return row

    def get_run(self, run_id: str) -> RunRow | None:
        """The run, or ``None`` if the store does not know it."""
        with self._lock:
            self._check_open()
            return self._get_run(run_id)

    def list_runs(self, statuses: Iterable[RunStatus | str] | None = None) -> list[RunRow]:
        """Runs ordered by ``created_at`` (then ``run_id``), optionally only those in
        ``statuses`` (e.g. ``[RunStatus.PENDING, RunStatus.RUNNING]`` to find what to resume)."""
        wanted = None if statuses is None else frozenset(_status(s) for s in statuses)
        with self._lock:
            self._check_open()
            return self._list_runs(wanted)

    def set_run_status(
        self, run_id: str, status: RunStatus | str, error: str | None = None
    ) -> RunRow:
        """Move a run to ``status`` (recording ``error``, typically for ``failed``).

        Raises
        ------
        ProtocolError
            If the run is unknown or already in a terminal status (terminal is final).
        """
        new = _status(status)
        if error is not None and not isinstance(error, str):
            raise ConfigurationError(f"error must be a string or None, got {error!r}")
        with self._lock:
            self._check_open()
            run = self._require_run(run_id)
            if run.status.is_terminal:
                raise ProtocolError(
                    f"run {run_id!r} is {run.status.value}, which is final; "
                    f"it cannot become {new.value}"
                )
            self._update_run_status(run_id, new, error, self._clock())
            return self._require_run(run_id)

    def start_attempt(self, run_id: str) -> int:
        """Count one more start of the run (durably) and return the count since the run last
        completed a round (:meth:`complete_round` resets it to 0).

        Raises
        ------
        ProtocolError
            If the run is unknown or terminal.
        """
        with self._lock:
            self._check_open()
            run = self._require_run(run_id)
            if run.status.is_terminal:
                raise ProtocolError(f"run {run_id!r} is {run.status.value}; it cannot start")
            return self._start_attempt(run_id, self._clock())

    # Rounds and checkpoints --------------------------------------------------------------
    def complete_round(
        self,
        run_id: str,
        record: RoundRecord,
        checkpoint: Checkpoint,
        event: RunEvent | None = None,
    ) -> RoundRow:
        """Record a completed round, its checkpoint and its event, atomically.

        The checkpoint file is made durable first; then the round row, ``completed_rounds =
        record.round``, the checkpoint reference and ``event`` (the round's
        ``round_completed`` event, appended to the run's log) are committed in one
        transaction. A crash at any point leaves the store at the previous round or at this
        one, never in between: never a round without its event, nor an event without its
        round.

        Raises
        ------
        ConfigurationError
            If ``record``, ``checkpoint`` and ``run_id`` do not name the same run and round.
        ProtocolError
            If the run is unknown or terminal, or ``record.round`` is not exactly
            ``completed_rounds + 1`` (no gaps, no replays).
        """
        if not isinstance(record, RoundRecord) or not isinstance(checkpoint, Checkpoint):
            raise ConfigurationError("complete_round needs a RoundRecord and a Checkpoint")
        if event is not None:
            if not isinstance(event, RunEvent):
                raise ConfigurationError("complete_round's event must be a RunEvent")
            if event.round != record.round:
                raise ConfigurationError(
                    f"the event is for round {event.round}, the record for round {record.round}"
                )
        if checkpoint.run_id != run_id or checkpoint.round != record.round:
            raise ConfigurationError(
                f"checkpoint is for run {checkpoint.run_id!r} round {checkpoint.round}, "
                f"the record for run {run_id!r} round {record.round}"
            )
        with self._lock:
            self._check_open()
            run = self._require_run(run_id)
            if run.status.is_terminal:
                raise ProtocolError(f"run {run_id!r} is {run.status.value}; it takes no rounds")
            expected = run.completed_rounds + 1
            if record.round != expected:
                raise ProtocolError(
                    f"run {run_id!r} has completed {run.completed_rounds} rounds, so the next "
                    f"is round {expected}; got round {record.round} (gap or replay)"
                )
            row = RoundRow(
                run_id=run_id, round=record.round, record=record, completed_at=self._clock()
            )
            self._complete_round(row, checkpoint, event)
            return row

    def rounds(self, run_id: str) -> list[RoundRow]:
        """The run's completed rounds, in order."""
        with self._lock:
            self._check_open()
            self._require_run(run_id)
            return self._rounds(run_id)

    def latest_checkpoint(self, run_id: str) -> Checkpoint | None:
        """The checkpoint of the run's last completed round, or ``None`` before round 1.

        Raises
        ------
        PayloadError
            If the stored checkpoint is missing, corrupt or belongs to another run or round.
        """
        with self._lock:
            self._check_open()
            self._require_run(run_id)
            return self._latest_checkpoint(run_id)

    # Events ------------------------------------------------------------------------------
    def append_event(
        self,
        run_id: str,
        *,
        round: int,
        kind: str,
        message: str,
        node_id: str | None = None,
        time: float | None = None,
        data: Mapping[str, float] | None = None,
    ) -> EventRow:
        """Append an event to the run's log and return it with its sequence number.

        ``time`` defaults to the store's clock. ``message`` must hold no record-level data.
        ``data`` holds the event's figures as finite numbers (a site's privacy spend), for
        programs to read instead of parsing ``message``.
        """
        figures = event_data(data)
        _check_int(round, "event round", minimum=0)
        if not isinstance(kind, str) or not kind:
            raise ConfigurationError(f"event kind must be a non-empty string, got {kind!r}")
        if not isinstance(message, str):
            raise ConfigurationError(f"event message must be a string, got {message!r}")
        if node_id is not None:
            check_id(node_id, what="node_id")
        if time is not None and (not isinstance(time, (int, float)) or not math.isfinite(time)):
            raise ConfigurationError(f"event time must be a finite number, got {time!r}")
        with self._lock:
            self._check_open()
            self._require_run(run_id)
            when = float(self._clock() if time is None else time)
            return self._append_event(run_id, round, kind, message, node_id, when, figures)

    def events(self, run_id: str, after_seq: int = 0, limit: int | None = None) -> list[EventRow]:
        """The run's events with ``seq > after_seq``, oldest first, at most ``limit`` of them."""
        _check_int(after_seq, "after_seq", minimum=0)
        if limit is not None:
            _check_int(limit, "limit", minimum=1)
        with self._lock:
            self._check_open()
            self._require_run(run_id)
            return self._events(run_id, after_seq, limit)

    # Nodes -------------------------------------------------------------------------------
    def upsert_node(self, node: NodeRow) -> None:
        """Insert the node, or replace what the registry holds for its ``node_id``."""
        if not isinstance(node, NodeRow):
            raise ConfigurationError("upsert_node needs a NodeRow")
        with self._lock:
            self._check_open()
            self._upsert_node(node)

    def list_nodes(self) -> list[NodeRow]:
        """Every node in the registry, ordered by ``node_id``."""
        with self._lock:
            self._check_open()
            return self._list_nodes()

    # Lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release connections and files. Idempotent; later calls raise ProtocolError."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # Helpers -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ProtocolError("the state store is closed")

    def _require_run(self, run_id: str) -> RunRow:
        run = self._get_run(run_id)
        if run is None:
            raise ProtocolError(f"unknown run {run_id!r}")
        return run

    # Storage hooks: called with the lock held and arguments validated ---------------------
    @abstractmethod
    def _insert_run(self, row: RunRow) -> None:
        """Store a new run; ConfigurationError if its id exists."""

    @abstractmethod
    def _get_run(self, run_id: str) -> RunRow | None: ...

    @abstractmethod
    def _list_runs(self, statuses: frozenset[RunStatus] | None) -> list[RunRow]: ...

    @abstractmethod
    def _update_run_status(
        self, run_id: str, status: RunStatus, error: str | None, now: float
    ) -> None: ...

    @abstractmethod
    def _start_attempt(self, run_id: str, now: float) -> int:
        """attempts += 1, durably; return the new count."""

    @abstractmethod
    def _complete_round(
        self, row: RoundRow, checkpoint: Checkpoint, event: RunEvent | None
    ) -> None:
        """Checkpoint first, then round row + completed_rounds + attempts = 0 + the event
        (stamped ``row.completed_at``) atomically; keep the newest :data:`CHECKPOINTS_KEPT`
        checkpoints."""

    @abstractmethod
    def _rounds(self, run_id: str) -> list[RoundRow]: ...

    @abstractmethod
    def _latest_checkpoint(self, run_id: str) -> Checkpoint | None: ...

    @abstractmethod
    def _append_event(
        self,
        run_id: str,
        round: int,
        kind: str,
        message: str,
        node_id: str | None,
        time: float,
        data: Mapping[str, float],
    ) -> EventRow: ...

    @abstractmethod
    def _events(self, run_id: str, after_seq: int, limit: int | None) -> list[EventRow]: ...

    @abstractmethod
    def _upsert_node(self, node: NodeRow) -> None: ...

    @abstractmethod
    def _list_nodes(self) -> list[NodeRow]: ...

    @abstractmethod
    def _close(self) -> None: ...


URL_EXAMPLE = (
    "e.g. 'memory://', 'sqlite:///var/lib/biofed/state.db' or "
    "'postgresql+psycopg://user@db.example.org/biofed'"
)


def open_store(
    url: str,
    *,
    checkpoint_dir: str | Path | None = None,
    clock: Callable[[], float] = time.time,
) -> StateStore:
    """Open the state store that ``url`` names.

    Parameters
    ----------
    url:
        ``"memory://"`` for an in-memory store (lost on exit; tests and simulations), or a
        SQLAlchemy URL: ``"sqlite:///path/state.db"`` (the default for one machine) or
        ``"postgresql+psycopg://user@host/db"``.
    checkpoint_dir:
        Folder for checkpoint files. For SQLite it defaults to ``<db file>.checkpoints``
        next to the database; for any other database it is required.
    clock:
        Wall clock in epoch seconds.

    Raises
    ------
    ConfigurationError
        A malformed or unsupported URL, a missing database driver, or no ``checkpoint_dir``
        where one is needed.
    """
    # Imported here: the backends import this module for the interface.
    from biofed.coordinator._store_memory import InMemoryStateStore
    from biofed.coordinator._store_sql import SqlStateStore, sqlite_database_path

    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"state store URL must be a non-empty string ({URL_EXAMPLE})")
    if url == "memory://":
        return InMemoryStateStore(clock=clock)
    if checkpoint_dir is None:
        database = sqlite_database_path(url)
        if database is None:
            raise ConfigurationError(
                f"a checkpoint_dir is required for the state store {redact_url(url)!r}: "
                "checkpoints are files, kept next to the database by default only for SQLite"
            )
        checkpoint_dir = database.with_name(database.name + ".checkpoints")
    return SqlStateStore(url, checkpoint_dir, clock=clock)


def redact_url(url: str) -> str:
    """``url`` without a password, for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"
