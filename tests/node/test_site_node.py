"""The site runtime turns instructions into replies and never crashes on task failures."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import Instruction, MessageKind, ParameterSet
from biofed.data import Dataset, SiteData
from biofed.node import SiteNode
from biofed.tasks import CoxPHTask, EvalResult, TrainContext, TrainResult


def _site_data(n: int = 40, p: int = 3, seed: int = 0) -> SiteData:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)).astype(np.float32)
    time = rng.exponential(10, n) * np.exp(-x[:, 0])
    event = (rng.random(n) < 0.7).astype(float)

    def ds(name: str, rows: slice) -> Dataset:
        return Dataset(
            name=name,
            features=x[rows],
            feature_names=("a", "b", "c"),
            targets={"event": event[rows], "time": time[rows]},
        )

    return SiteData(train=ds("tr", slice(0, 30)), test=ds("te", slice(30, n)))


def _inst(kind: MessageKind, params: ParameterSet, **config: object) -> Instruction:
    return Instruction(
        run_id="run",
        round=2,
        node_id="site-a",
        kind=kind,
        parameters=params,
        config={"seed": 7, "local_steps": 5, "batch_size": 4, **config},
    )


def test_train_and_evaluate_replies() -> None:
    task = CoxPHTask(num_features=3)
    node = SiteNode("site-a", task, _site_data())
    params = task.init_parameters(np.random.default_rng(0))
    reply = node.handle(_inst(MessageKind.TRAIN, params, learning_rate=0.1))
    assert reply.ok, reply.error
    assert reply.num_examples == 30
    assert reply.parameters is not None
    assert reply.parameters.spec == params.spec
    assert "train_loss" in reply.metrics
    evaluation = node.handle(_inst(MessageKind.EVALUATE, reply.parameters, split="test"))
    assert evaluation.ok
    assert evaluation.num_examples == 10
    assert 0.0 <= evaluation.metrics["c_index"] <= 1.0


def test_same_instruction_same_reply_and_sites_draw_different_streams() -> None:
    task = CoxPHTask(num_features=3)
    params = task.init_parameters(np.random.default_rng(0))
    a1 = SiteNode("site-a", task, _site_data()).handle(_inst(MessageKind.TRAIN, params))
    a2 = SiteNode("site-a", task, _site_data()).handle(_inst(MessageKind.TRAIN, params))
    assert a1.parameters == a2.parameters
    node_b = SiteNode("site-b", task, _site_data())
    inst_b = Instruction(
        run_id="run",
        round=2,
        node_id="site-b",
        kind="train",
        parameters=params,
        config={"seed": 7, "local_steps": 5, "batch_size": 4},
    )
    assert node_b.handle(inst_b).parameters != a1.parameters


class _Exploding:
    name = "boom"
    primary_metric = "x"

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        return ParameterSet({"w": np.zeros(1)})

    def train(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> TrainResult:
        raise RuntimeError("patient 123 has age 45")  # record-level detail must not leak

    def evaluate(self, parameters: ParameterSet, data: Dataset, ctx: TrainContext) -> EvalResult:
        raise KeyError("secret")


def test_task_crash_becomes_an_error_reply_without_its_message() -> None:
    node = SiteNode("site-a", _Exploding(), _site_data())
    reply = node.handle(_inst(MessageKind.TRAIN, ParameterSet({"w": np.zeros(1)})))
    assert not reply.ok
    assert reply.error == "task: RuntimeError in task code"
    assert "patient" not in (reply.error or "")


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"local_steps": 0}, "configuration: local_steps"),
        ({"seed": -1}, "seed"),
        ({"split": "validation"}, "data: site has no 'validation' split"),
    ],
)
def test_bad_config_is_an_error_reply(config: dict[str, object], match: str) -> None:
    task = CoxPHTask(num_features=3)
    node = SiteNode("site-a", task, _site_data())
    params = task.init_parameters(np.random.default_rng(0))
    kind = MessageKind.EVALUATE if "split" in config else MessageKind.TRAIN
    reply = node.handle(_inst(kind, params, **config))
    assert reply.error is not None
    assert match in reply.error


def test_misaddressed_instruction_is_refused() -> None:
    node = SiteNode("site-b", CoxPHTask(num_features=3), _site_data())
    reply = node.handle(_inst(MessageKind.TRAIN, ParameterSet({"w": np.zeros(1)})))
    assert reply.error is not None
    assert "addressed to 'site-a'" in reply.error
