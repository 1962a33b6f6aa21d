"""Plain and secure rounds are two implementations of one public interface: each reaches the
nodes only through the engine's :class:`~biofed.coordinator.Exchange`; the engine owns the
only round loop and builds every instruction with one function."""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

import biofed.coordinator as coordinator
from biofed.coordinator import (
    EngineConfig,
    Exchange,
    Exchanged,
    JobSpec,
    NodeExchange,
    PlainRound,
    RoundEngine,
    RoundRecord,
    RunCancelled,
    SecureRound,
    build_instruction,
)
from biofed.core import (
    Instruction,
    MessageKind,
    NodeInfo,
    ParameterSet,
    ParameterSpec,
    Reply,
)
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import STAGE_KEY, SecureAggregationSettings
from biofed.strategies import AggregateResult, FedAvg, NodePlan, StrategyState
from biofed.transport import InMemoryTransport, Transport

SRC = Path(coordinator.__file__).parent
SITES = ("center-0", "center-1", "center-2")
SECURE = SecureAggregationSettings(clip_range=4.0, quantisation_step=1e-6, max_weight=1000)
JOB = {
    "run": {"name": "x", "dataset": "brca", "rounds": 2, "seed": 3, "min_nodes": 3},
    "task": {"name": "cox_ph", "num_features": 39},
    "strategy": {"name": "fedavg"},
    "train": {"local_steps": 2, "batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
}


class RecordingExchange:
    """An :class:`Exchange` that notes every call and passes it to the engine's own."""

    def __init__(self, inner: Exchange) -> None:
        self.inner = inner
        self.calls: list[tuple[MessageKind, list[str]]] = []
        self.events: list[str] = []

    @property
    def run_id(self) -> str:
        return self.inner.run_id

    def exchange(
        self,
        server_round: int,
        kind: MessageKind,
        parameters: ParameterSet,
        plans: Sequence[NodePlan],
        accept: Callable[[Reply], None],
        spec: ParameterSpec | None = None,
    ) -> Exchanged:
        stages = sorted({str(p.config.get(STAGE_KEY, "")) for p in plans})
        self.calls.append((kind, stages))
        return self.inner.exchange(server_round, kind, parameters, plans, accept, spec)

    def event(self, server_round: int, kind: str, message: str, node_id: str | None = None) -> None:
        self.events.append(kind)
        self.inner.event(server_round, kind, message, node_id)


class RecordingRound:
    """A :class:`TrainingRound` that hands the engine's exchange, wrapped, to another."""

    def __init__(self, inner: PlainRound | SecureRound) -> None:
        self.inner = inner
        self.exchanges: list[RecordingExchange] = []

    def train(
        self,
        exchange: Exchange,
        server_round: int,
        params: ParameterSet,
        state: StrategyState,
        plans: list[NodePlan],
        num_nodes: int,
    ) -> AggregateResult:
        assert isinstance(exchange, Exchange)  # the engine gives the public interface
        recording = RecordingExchange(exchange)
        self.exchanges.append(recording)
        return self.inner.train(recording, server_round, params, state, plans, num_nodes)


class RecordingTransport(Transport):
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[Instruction] = []

    def available_nodes(self) -> Sequence[NodeInfo]:
        return self.inner.available_nodes()

    def send(self, instruction: Instruction) -> None:
        self.sent.append(instruction)
        self.inner.send(instruction)

    def receive(self, timeout: float | None = None) -> Reply | None:
        return self.inner.receive(timeout)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeApp]:
    root = tmp_path_factory.mktemp("exchange")
    Consortium.create(root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=list(SITES))
    paths = write_site_files(load_tcga_brca(), root / "data")
    out = {}
    for site in SITES:
        toml = root / f"{site}.toml"
        toml.write_text(
            f'[datasets.brca]\npath = "{paths[site]}"\nformat = "csv"\n'
            'split_column = "split"\ntargets = { event = "event", time = "time" }\n'
        )
        out[site] = NodeApp(site, NodeConfig.from_toml(toml), kit=load_kit(root / "c" / site))
    return out


def _engine(
    apps: dict[str, NodeApp], secure: SecureAggregationSettings | None
) -> tuple[RoundEngine, RecordingRound, RecordingTransport, JobSpec]:
    spec = JobSpec.from_mapping(JOB)
    strategy = spec.build_strategy()
    config = EngineConfig(rounds=2, min_nodes=3, min_replies=2, seed=3, round_timeout=60.0)
    run_config = dict(spec.instruction_config())
    if secure is None:
        inner: PlainRound | SecureRound = PlainRound(strategy, min_replies=2)
    else:
        run_config.update(secure.to_config())
        inner = SecureRound(strategy, secure, min_replies=2)
    training = RecordingRound(inner)
    transport = RecordingTransport(InMemoryTransport({n: a.handle for n, a in apps.items()}))
    engine = RoundEngine(
        strategy,
        transport,
        config,
        run_id="run-x",
        instruction_config=run_config,
        training=training,
    )
    return engine, training, transport, spec


def _initial() -> ParameterSet:
    from biofed.tasks import CoxPHTask

    return CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))


def test_a_plain_round_is_one_train_exchange_through_the_public_interface(
    apps: dict[str, NodeApp],
) -> None:
    engine, training, transport, _ = _engine(apps, None)
    result = engine.run(_initial())
    assert [r.failed for r in result.history] == [None, None]
    assert [e.calls for e in training.exchanges] == [[(MessageKind.TRAIN, [""])]] * 2
    kinds = [i.kind for i in transport.sent]
    assert kinds.count(MessageKind.TRAIN) == 6  # 3 sites × 2 rounds, all via the exchange
    assert kinds.count(MessageKind.EVALUATE) == 6


def test_a_secure_round_is_four_secagg_exchanges_through_the_same_interface(
    apps: dict[str, NodeApp],
) -> None:
    engine, training, transport, _ = _engine(apps, SECURE)
    x0 = _initial()
    params, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is None, [e.message for e in engine._events]
    assert record.num_replies == 3
    (exchange,) = training.exchanges
    assert exchange.calls == [
        (MessageKind.SECAGG, ["advertise_keys"]),
        (MessageKind.SECAGG, ["share_keys"]),
        (MessageKind.SECAGG, ["masked_input"]),
        (MessageKind.SECAGG, ["unmask"]),
    ]
    assert MessageKind.TRAIN not in {i.kind for i in transport.sent}  # never in the clear
    assert all(np.isfinite(params[n]).all() for n in params)


def test_every_instruction_is_the_one_build_instruction_makes(apps: dict[str, NodeApp]) -> None:
    engine, _, transport, spec = _engine(apps, None)
    engine.run(_initial())
    for sent in transport.sent:
        plan = NodePlan(
            node_id=sent.node_id,
            config={k: v for k, v in sent.config.items() if k not in spec.instruction_config()},
            extras=sent.extras,
        )
        rebuilt = build_instruction(
            run_id="run-x",
            server_round=sent.round,
            kind=sent.kind,
            parameters=sent.parameters,
            plan=plan,
            run_config=spec.instruction_config(),
            seed=3,
        )
        assert rebuilt.config == sent.config
        assert sent.config["seed"] == 3  # the run's seed unless the plan sets one


def test_build_instruction_lets_the_plan_win_over_the_run() -> None:
    params = ParameterSet({"w": np.zeros(2)})
    plan = NodePlan(node_id="a", config={"lr": 0.5, "seed": 9})
    instruction = build_instruction(
        run_id="r",
        server_round=2,
        kind=MessageKind.TRAIN,
        parameters=params,
        plan=plan,
        run_config={"lr": 0.1, "dataset": "d"},
        seed=1,
    )
    assert dict(instruction.config) == {"lr": 0.5, "seed": 9, "dataset": "d"}
    assert (instruction.run_id, instruction.round, instruction.node_id) == ("r", 2, "a")


def test_the_engine_loop_waits_commits_and_stops_through_its_hooks(
    apps: dict[str, NodeApp],
) -> None:
    engine, _, _, _ = _engine(apps, None)
    asked: list[int] = []
    committed: list[RoundRecord] = []
    result = engine.run(
        _initial(),
        before_round=lambda r: asked.append(r) or r < 2,
        after_round=lambda r, p, s, record: committed.append(record),
    )
    assert asked == [1, 2]
    assert [r.round for r in committed] == [1]
    assert result.stopped
    assert [r.round for r in result.history] == [1]


def test_a_cancelled_exchange_sends_nothing_more() -> None:
    cancel = threading.Event()
    cancel.set()
    sent: list[Instruction] = []

    class Never(Transport):
        def available_nodes(self) -> Sequence[NodeInfo]:
            return [NodeInfo(node_id="a", num_examples=1)]

        def send(self, instruction: Instruction) -> None:
            sent.append(instruction)

        def receive(self, timeout: float | None = None) -> Reply | None:
            return None

    exchange = NodeExchange(
        Never(),
        run_id="r",
        round_timeout=1.0,
        run_config={},
        seed=0,
        listener=PlainRoundListener(),
        on_event=lambda e: None,
        clock=lambda: 0.0,
        cancel=cancel,
    )
    plan = NodePlan(node_id="a", config={})
    with pytest.raises(RunCancelled):
        exchange.exchange(1, MessageKind.TRAIN, ParameterSet({}), [plan], lambda r: None)
    assert sent == []
    with pytest.raises(RunCancelled):
        PlainRound(FedAvg()).train(exchange, 1, ParameterSet({}), {}, [plan], 1)


class PlainRoundListener:
    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass


def _attribute_uses(path: Path) -> list[str]:
    """``x._name`` uses in a module where ``x`` is not ``self``/``cls`` (private members of
    another object), dunders aside."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            if node.attr.startswith("__"):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in {"self", "cls"}:
                continue
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


@pytest.mark.parametrize(
    "module",
    ["_engine.py", "_exchange.py", "_secure.py", "_executor.py", "_service.py", "_summaries.py"],
)
def test_no_module_of_the_round_path_reaches_into_another_objects_privates(module: str) -> None:
    assert _attribute_uses(SRC / module) == []


def test_the_secure_round_does_not_know_the_engine() -> None:
    tree = ast.parse((SRC / "_secure.py").read_text())
    imported = {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module is not None
    }
    assert "biofed.coordinator._engine" not in imported
    assert "biofed.coordinator._exchange" in imported


def test_only_the_engine_runs_rounds() -> None:
    """One round loop: ``run_round`` is called by ``RoundEngine.run`` and nowhere else in src."""
    callers = []
    for path in sorted(SRC.parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run_round"
            ):
                callers.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert len(callers) == 1, callers
    assert callers[0].startswith("coordinator/_engine.py"), callers
