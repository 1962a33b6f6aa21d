"""What a run leaves behind: per-round records, events and the final result."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from biofed.core import BiofedError, ConfigurationError, Metrics, ParameterSet

_EMPTY: Mapping[str, float] = MappingProxyType({})


class RunCancelled(BiofedError):
    """The run was cancelled: the round engine abandoned the current round at once."""

    code = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """Something worth telling the operator: a rejected reply, a node error, a failed round.

    ``message`` never holds record-level data: it comes from biofed's own validation or from
    the error code a node sent. ``data`` carries the figures of an event that programs read
    (a site's privacy spend: :func:`~biofed.coordinator.spend_event`) as finite numbers, so
    nothing is parsed back out of ``message``.
    """

    round: int
    kind: str
    message: str
    node_id: str | None = None
    data: Mapping[str, float] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", event_data(self.data))


def event_data(data: Mapping[str, float] | None) -> Mapping[str, float]:
    """``data`` checked (string keys, finite numbers) and frozen.

    Raises
    ------
    ConfigurationError
        Naming the first key whose value is not a finite number.
    """
    if not data:
        return _EMPTY
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"event data must be a mapping, got {type(data).__name__}")
    out: dict[str, float] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"event data keys must be non-empty strings, got {key!r}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigurationError(f"event data {key!r} must be a finite number, got {value!r}")
        out[key] = float(value)
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundRecord:
    """The outcome of one round.

    Attributes
    ----------
    round:
        1-based round number.
    num_selected:
        Nodes asked to train.
    num_replies:
        Training replies folded into the aggregate.
    num_rejected:
        Training replies refused (invalid, late, errors).
    train_metrics:
        Example-weighted mean of the sites' training metrics.
    eval_metrics:
        Example-weighted mean of the sites' evaluation metrics (empty if not evaluated).
    node_eval_metrics:
        Each evaluating node's own metrics.
    duration_s:
        Wall time of the round, evaluation included.
    failed:
        ``None``, or why the round produced no aggregate (the model is then unchanged).
    """

    round: int
    num_selected: int
    num_replies: int
    num_rejected: int
    train_metrics: Metrics = field(default_factory=lambda: _EMPTY)
    eval_metrics: Metrics = field(default_factory=lambda: _EMPTY)
    node_eval_metrics: Mapping[str, Metrics] = field(default_factory=lambda: MappingProxyType({}))
    duration_s: float = 0.0
    failed: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """A finished run: the final model, the strategy's state and the history.

    ``stopped`` is True when the engine's ``before_round`` hook stopped the run before its
    last round (the coordinator is shutting down; the run resumes from its checkpoint).
    ``preprocessing`` is a study job's fitted preprocessing (JSON), stored with the model:
    apply it (``biofed.data.Preprocessing.from_json``) to data the model is used on.
    """

    run_id: str
    parameters: ParameterSet
    state: Mapping[str, ParameterSet]
    history: tuple[RoundRecord, ...]
    events: tuple[RunEvent, ...]
    stopped: bool = False
    preprocessing: str | None = None

    @property
    def final_eval_metrics(self) -> Metrics:
        """The aggregate evaluation metrics of the last evaluated round (empty if none)."""
        for record in reversed(self.history):
            if record.eval_metrics:
                return record.eval_metrics
        return _EMPTY

    @property
    def final_node_eval_metrics(self) -> Mapping[str, Metrics]:
        """Per-node evaluation metrics of the last evaluated round."""
        for record in reversed(self.history):
            if record.node_eval_metrics:
                return record.node_eval_metrics
        return MappingProxyType({})
