"""The round engine over the in-memory transport: the loop, validation and failure paths."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, RoundEngine, RoundRecord, RunEvent
from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.strategies import FedAvg
from biofed.transport import InMemoryTransport


def ps(v: object) -> ParameterSet:
    return ParameterSet({"w": np.asarray(v, dtype=np.float32)})


def site(offset: float, n: int) -> Callable[[Instruction], Reply | None]:
    """A node whose local training moves every weight by ``offset``."""

    def handle(inst: Instruction) -> Reply:
        base = dict(run_id=inst.run_id, round=inst.round, node_id=inst.node_id, kind=inst.kind)
        if inst.kind is MessageKind.TRAIN:
            return Reply(
                **base,
                parameters=ps(inst.parameters["w"] + offset),
                num_examples=n,
                metrics={"loss": offset},
            )
        return Reply(**base, num_examples=n, metrics={"score": float(inst.parameters["w"][0])})

    return handle


def engine(nodes: dict, rounds: int = 2, **kwargs: object) -> RoundEngine:
    config = EngineConfig(rounds=rounds, seed=1, **kwargs)  # type: ignore[arg-type]
    return RoundEngine(FedAvg(), InMemoryTransport(nodes), config, run_id="run-1")


def test_rounds_aggregate_and_evaluate() -> None:
    result = engine({"a": site(1.0, 1), "b": site(4.0, 3)}).run(ps([0.0, 0.0]))
    # each round moves by (1·1 + 3·4)/4 = 3.25
    np.testing.assert_allclose(result.parameters["w"], [6.5, 6.5])
    assert [r.num_replies for r in result.history] == [2, 2]
    assert result.history[-1].eval_metrics["score"] == pytest.approx(6.5)
    assert set(result.final_node_eval_metrics) == {"a", "b"}
    assert result.history[0].train_metrics["loss"] == pytest.approx(3.25)
    assert result.events == ()


def test_node_error_and_silence_are_events_and_the_round_goes_on() -> None:
    def broken(inst: Instruction) -> Reply:
        return Reply(
            run_id=inst.run_id,
            round=inst.round,
            node_id=inst.node_id,
            kind=inst.kind,
            error="task: boom",
        )

    result = engine({"a": site(1.0, 1), "b": broken, "c": lambda inst: None}, rounds=1).run(
        ps([0.0])
    )
    np.testing.assert_allclose(result.parameters["w"], [1.0])
    kinds = {(e.node_id, e.kind) for e in result.events}
    assert ("b", "reply_rejected") in kinds
    assert ("c", "no_reply") in kinds
    assert result.history[0].num_rejected == 1


def test_too_few_replies_fails_the_round_but_not_the_run() -> None:
    result = engine(
        {"a": site(1.0, 1), "b": lambda inst: None}, rounds=2, min_nodes=2, min_replies=2
    ).run(ps([0.0]))
    assert all(r.failed for r in result.history)
    np.testing.assert_allclose(result.parameters["w"], [0.0])
    assert any(e.kind == "round_failed" for e in result.events)


def test_not_enough_nodes_fails_the_round() -> None:
    result = engine({"a": site(1.0, 1)}, rounds=1, min_nodes=2).run(ps([0.0]))
    failed = result.history[0].failed
    assert failed is not None
    assert "needs 2" in failed


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda r: Reply(
                run_id="other",
                round=r.round,
                node_id=r.node_id,
                kind=r.kind,
                parameters=r.parameters,
                num_examples=1,
            ),
            "reply for run",
        ),
        (
            lambda r: Reply(
                run_id=r.run_id,
                round=r.round - 1 if r.round > 1 else 9,
                node_id=r.node_id,
                kind=r.kind,
                parameters=r.parameters,
                num_examples=1,
            ),
            "late or replayed",
        ),
        (
            lambda r: Reply(
                run_id=r.run_id,
                round=r.round,
                node_id=r.node_id,
                kind=r.kind,
                parameters=ParameterSet({"w": np.zeros(3, np.float32)}),
                num_examples=1,
            ),
            "shape",
        ),
        (
            lambda r: Reply(
                run_id=r.run_id,
                round=r.round,
                node_id=r.node_id,
                kind=r.kind,
                parameters=ParameterSet({"w": np.full(2, np.nan, np.float32)}),
                num_examples=1,
            ),
            "NaN",
        ),
        (
            lambda r: Reply(
                run_id=r.run_id,
                round=r.round,
                node_id=r.node_id,
                kind=r.kind,
                parameters=ParameterSet({"w": np.zeros(2), "x": np.zeros(1)}),
                num_examples=1,
            ),
            "names do not match",
        ),
        (
            lambda r: Reply(
                run_id=r.run_id,
                round=r.round,
                node_id="intruder",
                kind=r.kind,
                parameters=r.parameters,
                num_examples=1,
            ),
            "not asked",
        ),
    ],
)
def test_invalid_replies_are_rejected_with_a_clear_event(tamper, match: str) -> None:
    honest = site(2.0, 1)

    def evil(inst: Instruction) -> Reply | None:
        good = honest(inst)
        return tamper(good) if inst.kind is MessageKind.TRAIN else good

    result = engine({"a": honest, "evil": evil}, rounds=1).run(ps([0.0, 0.0]))
    np.testing.assert_allclose(result.parameters["w"], [2.0, 2.0])
    messages = [e.message for e in result.events if e.kind == "reply_rejected"]
    assert any(match in m for m in messages), messages


def test_late_reply_after_deadline_is_discarded() -> None:
    now = [0.0]

    def slow(inst: Instruction) -> Reply | None:
        now[0] += 10.0
        return site(100.0, 1)(inst)

    config = EngineConfig(rounds=1, seed=1, round_timeout=5.0, evaluate_every=0)
    eng = RoundEngine(
        FedAvg(),
        InMemoryTransport({"a": site(1.0, 1), "z": slow}),
        config,
        run_id="r",
        clock=lambda: now[0],
    )
    result = eng.run(ps([0.0]))
    np.testing.assert_allclose(result.parameters["w"], [1.0])
    assert any(e.kind == "reply_late" and e.node_id == "z" for e in result.events)


def test_listener_sees_every_round_and_reply() -> None:
    seen: list[object] = []

    class Listener:
        def on_round_start(self, server_round: int, num_selected: int) -> None:
            seen.append(("start", server_round, num_selected))

        def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
            seen.append(("reply", reply.node_id, accepted))

        def on_round_end(self, record: RoundRecord) -> None:
            seen.append(("end", record.round))

        def on_event(self, event: RunEvent) -> None:
            seen.append(("event", event.kind))

    config = EngineConfig(rounds=1, seed=0)
    RoundEngine(FedAvg(), InMemoryTransport({"a": site(1, 1)}), config, listener=Listener()).run(
        ps([0.0])
    )
    assert seen[0] == ("start", 1, 1)
    assert ("reply", "a", True) in seen
    assert seen[-1] == ("end", 1)


def test_engine_config_is_validated_early() -> None:
    with pytest.raises(ConfigurationError, match="rounds"):
        EngineConfig(rounds=0)
    with pytest.raises(ConfigurationError, match="min_replies"):
        EngineConfig(rounds=1, min_nodes=1, min_replies=2)
    with pytest.raises(ConfigurationError, match="round_timeout"):
        EngineConfig(rounds=1, round_timeout=0)
    with pytest.raises(ConfigurationError, match="NaN"):
        engine({"a": site(1, 1)}).run(ps([np.nan]))


def test_same_seed_same_selection_and_result() -> None:
    nodes = {f"n{i}": site(float(i), i + 1) for i in range(6)}

    def run() -> np.ndarray:
        strategy = FedAvg(fraction_train=0.5)
        eng = RoundEngine(strategy, InMemoryTransport(nodes), EngineConfig(rounds=3, seed=7))
        return np.asarray(eng.run(ps([0.0])).parameters["w"])

    np.testing.assert_array_equal(run(), run())


def test_instruction_config_reaches_every_node_and_strategy_keys_win() -> None:
    seen: list[dict[str, object]] = []

    def node(inst: Instruction) -> Reply | None:
        seen.append(dict(inst.config))
        return site(1.0, 1)(inst)

    strategy = FedAvg(train_config={"local_steps": 3, "task": "override"})
    eng = RoundEngine(
        strategy,
        InMemoryTransport({"a": node}),
        EngineConfig(rounds=1, seed=5),
        instruction_config={"task": "cox_ph", "dataset": "tcga"},
    )
    eng.run(ps([0.0]))
    assert seen[0]["task"] == "override"
    assert seen[0]["dataset"] == "tcga"
    assert seen[0]["seed"] == 5
    assert seen[1]["dataset"] == "tcga"  # evaluation instruction


def test_a_failed_round_still_records_the_replies_it_refused() -> None:
    def broken(inst: Instruction) -> Reply:
        return Reply(
            run_id=inst.run_id,
            round=inst.round,
            node_id=inst.node_id,
            kind=inst.kind,
            error="task: boom",
        )

    result = engine({"a": site(1.0, 1), "b": broken}, rounds=1, min_nodes=2, min_replies=2).run(
        ps([0.0, 0.0])
    )
    record = result.history[0]
    assert record.failed is not None
    assert record.num_selected == 2
    assert record.num_rejected == 1
