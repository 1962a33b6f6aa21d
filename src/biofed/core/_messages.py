"""Messages between the coordinator and a node: instructions out, replies back."""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from biofed.core._errors import BiofedError, ConfigurationError
from biofed.core._params import ParameterSet
from biofed.core._types import Config, Metrics, Scalar, check_id, freeze_config, freeze_metrics
from biofed.core.sections import (
    NO_DIRECTIVES,
    NO_JOB,
    JobSection,
    RoundDirectives,
    flat_sections,
    split_flat,
)

#: ``Instruction.extras`` key of SCAFFOLD's server control variate c.
SCAFFOLD_SERVER_CONTROL = "scaffold.server_control"
#: ``Reply.extras`` key of a site's SCAFFOLD control-variate change Δcᵢ.
SCAFFOLD_CONTROL_DELTA = "scaffold.control_delta"


class MessageKind(str, enum.Enum):
    """What an instruction asks for; a reply carries the kind of its instruction."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    #: One stage of secure aggregation (``directives.secagg_stage`` says which); its
    #: messages travel as ``extras["secagg"]`` (see :mod:`biofed.secagg`).
    SECAGG = "secagg"
    #: One pass of a job's federated preprocessing: the site compiles the job's study spec
    #: against its own data and answers ``directives.summary_request`` with the summary's
    #: arrays (the reply's ``parameters``); no model is trained and no privacy budget is
    #: spent (see ``docs/architecture.md``, "The preprocessing phase").
    SUMMARISE = "summarise"
    #: One pass of a federated analytics query (``biofed.analytics``): the site answers
    #: ``directives.query_request`` on its registered dataset, under its disclosure rules,
    #: with the answer's arrays (the reply's ``parameters``); no model is trained. A query
    #: that asks for DP answers debits the site's ledger like training.
    QUERY = "query"


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


class InstructionConfig(Mapping[str, Scalar]):
    """An instruction's ``config``: the task's own keys (:attr:`task`) and, for code that
    reads the flat form, the flat keys of its sections
    (:func:`~biofed.core.sections.flat_sections`). Read-only; built by :class:`Instruction`."""

    __slots__ = ("_all", "directives", "job", "task")

    def __init__(self, task: Config, job: JobSection, directives: RoundDirectives) -> None:
        self.task: Config = task
        self.job = job
        self.directives = directives
        self._all: Config = MappingProxyType({**task, **flat_sections(job, directives)})

    def __getitem__(self, key: str) -> Scalar:
        return self._all[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all)

    def __len__(self) -> int:
        return len(self._all)

    def __repr__(self) -> str:
        return repr(dict(self._all))


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """The coordinator asks one node to train or evaluate in one round of one run.

    Attributes
    ----------
    run_id, round, node_id, kind:
        Where the instruction belongs; a reply must echo them.
    parameters:
        The global model.
    job:
        What the job asks of the site (dataset, task, agreement, bundle, privacy and
        secure-aggregation settings), the same in every instruction of a run.
    directives:
        What the strategy and protocol direct for this round (clip norm, noise share,
        secure-aggregation stage and weighting).
    config:
        The task's own scalar settings (local steps, learning rate, seed, split…).
        Reading it also shows the sections' flat keys (``"dataset"``, ``"privacy.mode"``,
        ``"secagg.stage"``…) for code written against the flat form; :attr:`task_config`
        is the task's part alone.
    extras:
        Further named arrays some strategies send (SCAFFOLD's server control variate).
    audit_head:
        The coordinator's audit-log head when it sent this (``"<seq>:<hash>"``, or ``""``
        when it keeps no log): the node records it in its own log.

    Notes
    -----
    ``config`` may be given in the flat form (the one backward-compatible path): section
    keys in it fill ``job`` and ``directives``, overriding the fields of those given. An
    instruction's own ``config`` passed on (as :func:`dataclasses.replace` does) carries its
    sections, and sections given explicitly win over it, so ``replace(inst, job=...)`` and
    ``replace(inst, config={**inst.config, "dataset": "x"})`` both do what they say.
    """

    run_id: str
    round: int
    node_id: str
    kind: MessageKind
    parameters: ParameterSet
    config: Config = field(default_factory=lambda: MappingProxyType({}))
    extras: Mapping[str, ParameterSet] = field(default_factory=lambda: _EMPTY_EXTRAS)
    audit_head: str = ""
    job: JobSection = NO_JOB
    directives: RoundDirectives = NO_DIRECTIVES

    def __post_init__(self) -> None:
        check_id(self.run_id, what="run_id")
        check_id(self.node_id, what="node_id")
        if self.round < 0:
            raise ConfigurationError(f"round must be >= 0, got {self.round}")
        if not isinstance(self.job, JobSection):
            raise ConfigurationError("job must be a JobSection")
        if not isinstance(self.directives, RoundDirectives):
            raise ConfigurationError("directives must be RoundDirectives")
        object.__setattr__(self, "kind", MessageKind(self.kind))
        config = self.config
        job, directives = self.job, self.directives
        if isinstance(config, InstructionConfig):  # another instruction's: it has sections
            task = config.task
            job = config.job if job is NO_JOB else job
            directives = config.directives if directives is NO_DIRECTIVES else directives
        else:  # the flat form
            job_fields, directive_fields, flat_task = split_flat(freeze_config(config))
            task = MappingProxyType(flat_task)
            if job_fields:
                job = dataclasses.replace(job, **job_fields)
            if directive_fields:
                directives = dataclasses.replace(directives, **directive_fields)
        object.__setattr__(self, "job", job)
        object.__setattr__(self, "directives", directives)
        object.__setattr__(self, "config", InstructionConfig(task, job, directives))
        object.__setattr__(self, "extras", _freeze_extras(self.extras))
        check_audit_head(self.audit_head)

    @property
    def task_config(self) -> Config:
        """The task's own settings, without the sections' flat keys."""
        config = self.config
        assert isinstance(config, InstructionConfig)
        return config.task


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

    @classmethod
    def answering(
        cls,
        instruction: Instruction,
        *,
        node_id: str | None = None,
        kind: MessageKind | None = None,
        **fields: Any,
    ) -> Reply:
        """A reply to ``instruction`` (its run, round, node and kind, unless ``node_id`` or
        ``kind`` say otherwise) with ``fields`` set."""
        return cls(
            run_id=instruction.run_id,
            round=instruction.round,
            node_id=instruction.node_id if node_id is None else node_id,
            kind=instruction.kind if kind is None else kind,
            **fields,
        )

    @classmethod
    def error_for(
        cls,
        instruction: Instruction,
        error: BiofedError | str,
        *,
        node_id: str | None = None,
        kind: MessageKind | None = None,
    ) -> Reply:
        """The error reply to ``instruction``: ``"code: message"`` for an exception, or the
        text given (an error another reply already carries)."""
        text = error if isinstance(error, str) else f"{error.code}: {error}"
        return cls.answering(instruction, node_id=node_id, kind=kind, error=text)

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
