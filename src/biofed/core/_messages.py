"""Messages between the coordinator and a node: instructions out, replies back."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from biofed.core._errors import ConfigurationError
from biofed.core._params import ParameterSet
from biofed.core._types import Config, Metrics, check_id, freeze_config, freeze_metrics

#: ``Instruction.extras`` key of SCAFFOLD's server control variate c.
SCAFFOLD_SERVER_CONTROL = "scaffold.server_control"
#: ``Reply.extras`` key of a site's SCAFFOLD control-variate change Δcᵢ.
SCAFFOLD_CONTROL_DELTA = "scaffold.control_delta"


class MessageKind(str, enum.Enum):
    """What an instruction asks for; a reply carries the kind of its instruction."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    #: One stage of secure aggregation (``config["secagg.stage"]`` says which); its
    #: messages travel as ``extras["secagg"]`` (see :mod:`biofed.secagg`).
    SECAGG = "secagg"


def _freeze_extras(extras: Mapping[str, ParameterSet]) -> Mapping[str, ParameterSet]:
    for key, value in extras.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"extras keys must be non-empty strings, got {key!r}")
        if not isinstance(value, ParameterSet):
            raise ConfigurationError(f"extras[{key!r}] must be a ParameterSet")
    return MappingProxyType(dict(extras))


_EMPTY_EXTRAS: Mapping[str, ParameterSet] = MappingProxyType({})

_AUDIT_HEAD = re.compile(r"[1-9][0-9]{0,17}:[0-9a-f]{64}")


def check_audit_head(value: str) -> str:
    """``value`` if it is ``""`` or an audit-log head ``"<seq>:<64 lowercase hex>"``.

    A head names the sender's newest audit entry (its position and hash); the other party
    records it in its own log so that a later truncation of the sender's log is evident
    (see :mod:`biofed.governance._audit_anchor`).

    Raises
    ------
    ConfigurationError
        If it is anything else (so nothing unchecked is written to a log).
    """
    if not isinstance(value, str) or (value and not _AUDIT_HEAD.fullmatch(value)):
        raise ConfigurationError("audit_head must be empty or '<seq>:<64 lowercase hex>'")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """The coordinator asks one node to train or evaluate in one round of one run.

    Attributes
    ----------
    run_id, round, node_id, kind:
        Where the instruction belongs; a reply must echo them.
    parameters:
        The global model.
    config:
        Scalar settings for the task (local steps, learning rate, proximal mu, split…).
    extras:
        Further named arrays some strategies send (SCAFFOLD's server control variate).
    audit_head:
        The coordinator's audit-log head when it sent this (``"<seq>:<hash>"``, or ``""``
        when it keeps no log): the node records it in its own log.
    """

    run_id: str
    round: int
    node_id: str
    kind: MessageKind
    parameters: ParameterSet
    config: Config = field(default_factory=lambda: MappingProxyType({}))
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: _EMPTY_EXTRAS)
    audit_head: str = ""

    def __post_init__(self) -> None:
        check_id(self.run_id, what="run_id")
        check_id(self.node_id, what="node_id")
        if self.round < 0:
            raise ConfigurationError(f"round must be >= 0, got {self.round}")
        object.__setattr__(self, "kind", MessageKind(self.kind))
        object.__setattr__(self, "config", freeze_config(self.config))
        object.__setattr__(self, "extras", _freeze_extras(self.extras))
        check_audit_head(self.audit_head)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A node's answer to an :class:`Instruction`.

    Attributes
    ----------
    parameters:
        The updated local model (TRAIN), or ``None`` (EVALUATE, or an error).
    num_examples:
        Examples the node trained or evaluated on; the weight of this reply.
    metrics:
        Scalar metrics computed at the site.
    extras:
        Further named arrays (SCAFFOLD's control-variate delta).
    error:
        ``None`` on success; else ``"code: message"`` with no record-level data.
    audit_head:
        The node's audit-log head once this reply was logged (``"<seq>:<hash>"``, or ``""``
        for a node without a log): the coordinator records it in its own log.
    """

    run_id: str
    round: int
    node_id: str
    kind: MessageKind
    parameters: ParameterSet | None = None
    num_examples: int = 0
    metrics: Metrics = field(default_factory=lambda: MappingProxyType({}))
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: _EMPTY_EXTRAS)
    error: str | None = None
    audit_head: str = ""

    def __post_init__(self) -> None:
        check_id(self.run_id, what="run_id")
        check_id(self.node_id, what="node_id")
        if self.round < 0:
            raise ConfigurationError(f"round must be >= 0, got {self.round}")
        if self.num_examples < 0:
            raise ConfigurationError(f"num_examples must be >= 0, got {self.num_examples}")
        object.__setattr__(self, "kind", MessageKind(self.kind))
        object.__setattr__(self, "metrics", freeze_metrics(self.metrics))
        object.__setattr__(self, "extras", _freeze_extras(self.extras))
        check_audit_head(self.audit_head)

    @property
    def ok(self) -> bool:
        """True when the node reports success."""
        return self.error is None

    def answers(self, instruction: Instruction) -> bool:
        """True when this reply belongs to ``instruction`` (same run, round, node and kind)."""
        return (
            self.run_id == instruction.run_id
            and self.round == instruction.round
            and self.node_id == instruction.node_id
            and self.kind == instruction.kind
        )
