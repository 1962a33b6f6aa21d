"""The site runtime: turns an instruction into a reply by running the task on local data.

The node is where data lives: the task gets the site's dataset and nothing else; what goes
back is parameters, an example count and scalar metrics. Task failures become an error reply
(code and message only), never a crash of the node.
"""

from __future__ import annotations

import dataclasses
import threading
import zlib
from collections.abc import MutableMapping

import numpy as np

from biofed.core import (
    BiofedError,
    ConfigurationError,
    Instruction,
    MessageKind,
    ParameterSet,
    ProtocolError,
    Reply,
    check_id,
)
from biofed.data import SiteData
from biofed.tasks import Task, TrainContext

_KIND_CODE = {MessageKind.TRAIN: 1, MessageKind.EVALUATE: 2}


def _seed_of(instruction: Instruction) -> int:
    seed = instruction.task_config.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigurationError(f"config 'seed' must be a non-negative int, got {seed!r}")
    return seed


class SiteNode:
    """One site: its id, its task and its data.

    Parameters
    ----------
    node_id:
        The site's identity.
    task:
        The task this node runs.
    data:
        The site's training split and optional test split.
    """

    def __init__(self, node_id: str, task: Task, data: SiteData) -> None:
        self.node_id = check_id(node_id, what="node_id")
        self.task = task
        self.data = data
        self._state: dict[str, MutableMapping[str, ParameterSet]] = {}
        # A node serves several runs at once (one worker per run); runs that share this
        # site's task object take turns in it, since a task may keep scratch state.
        self._task_lock = threading.Lock()

    @property
    def num_train_examples(self) -> int:
        """Size of the training split."""
        return len(self.data.train)

    def rng_for(self, instruction: Instruction) -> np.random.Generator:
        """The generator for one instruction: a function of (seed, round, site, kind), so a
        run is reproducible and sites draw independent streams."""
        site = zlib.crc32(self.node_id.encode())
        return np.random.default_rng(
            [_seed_of(instruction), instruction.round, site, _KIND_CODE[instruction.kind]]
        )

    def handle(self, instruction: Instruction) -> Reply:
        """Run ``instruction`` and return the reply (an error reply if anything fails).
        Safe to call from several threads: calls take turns in the task."""
        with self._task_lock:
            return self._handle(instruction)

    def _handle(self, instruction: Instruction) -> Reply:
        base = Reply(
            run_id=instruction.run_id,
            round=instruction.round,
            node_id=self.node_id,
            kind=instruction.kind,
        )
        try:
            if instruction.node_id != self.node_id:
                raise ProtocolError(f"instruction addressed to {instruction.node_id!r}")
            ctx = TrainContext(
                # the flat form: the task's keys and the sections' (as tasks always saw it)
                config=instruction.config,
                rng=self.rng_for(instruction),
                extras=instruction.extras,
                state=self._state.setdefault(instruction.run_id, {}),
            )
            if instruction.kind is MessageKind.TRAIN:
                result = self.task.train(instruction.parameters, self.data.train, ctx)
                return dataclasses.replace(
                    base,
                    parameters=result.parameters,
                    num_examples=result.num_examples,
                    metrics=result.metrics,
                    extras=result.extras,
                )
            split = str(instruction.task_config.get("split", "test"))
            evaluation = self.task.evaluate(instruction.parameters, self.data.split(split), ctx)
            return dataclasses.replace(
                base, num_examples=evaluation.num_examples, metrics=evaluation.metrics
            )
        except BiofedError as exc:
            return dataclasses.replace(base, error=f"{exc.code}: {exc}")
        except Exception as exc:  # task code is researcher code: never crash the node
            return dataclasses.replace(base, error=f"task: {type(exc).__name__} in task code")
