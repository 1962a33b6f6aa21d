"""What a run leaves behind: per-round records, events and the final result."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from biofed.core import BiofedError, Metrics, ParameterSet

_EMPTY: Mapping[str, float] = MappingProxyType({})


class RunCancelled(BiofedError):
    """The run was cancelled: the round engine abandoned the current round at once."""

    code = "cancelled"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEvent:
    """Something worth telling the operator: a rejected reply, a node error, a failed round.

    ``message`` never holds record-level data: it comes from biofed's own validation or from
    the error code a node sent.
    """

    round: int
    kind: str
    message: str
    node_id: str | None = None


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
    """A finished run: the final model, the strategy's state and the history."""

    run_id: str
    parameters: ParameterSet
    state: Mapping[str, ParameterSet]
    history: tuple[RoundRecord, ...]
    events: tuple[RunEvent, ...]

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
