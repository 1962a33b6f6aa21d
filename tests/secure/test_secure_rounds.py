"""Secure aggregation in the real runtime (engine ↔ NodeApp), in one process: the model
after a SecAgg+ round equals the plain weighted mean within the quantisation error; a
dropout between stages is recovered; below the threshold the round fails cleanly and the
run goes on; a substituted key is caught by the sites."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, RoundEngine
from biofed.coordinator._job import JobSpec
from biofed.core import Instruction, Reply
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import Roster, decode_message
from biofed.secagg._settings import (
    STAGE_KEY,
    SecureAggregationSettings,
    pack_message,
    unpack_message,
)
from biofed.tasks import CoxPHTask
from biofed.transport import InMemoryTransport

SITES = ("center-0", "center-1", "center-2", "center-3")
SECURE = SecureAggregationSettings(clip_range=4.0, quantisation_step=1e-6, max_weight=1000)


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeApp]:
    root = tmp_path_factory.mktemp("secure")
    Consortium.create(root / "c", consortium="t", coordinator="127.0.0.1:7443", sites=list(SITES))
    paths = write_site_files(load_tcga_brca(), root / "data")
    out = {}
    for site in SITES:
        toml = root / f"{site}.toml"
        toml.write_text(
            f'[datasets.brca]\npath = "{paths[site]}"\nformat = "csv"\n'
            'split_column = "split"\ntargets = { event = "event", time = "time" }\n'
            "[privacy.caps.brca]\nepsilon = 100.0\ndelta = 1e-3\n"
        )
        out[site] = NodeApp(site, NodeConfig.from_toml(toml), kit=load_kit(root / "c" / site))
    return out


def _engine(
    apps: dict[str, NodeApp],
    secure: SecureAggregationSettings | None,
    handlers: dict[str, Callable[[Instruction], Reply]] | None = None,
    min_replies: int = 2,
) -> tuple[RoundEngine, JobSpec]:
    spec = JobSpec.from_mapping(
        {
            "run": {
                "name": "s",
                "dataset": "brca",
                "rounds": 1,
                "seed": 3,
                "min_nodes": 4,
                "min_replies": min_replies,
            },
            "task": {"name": "cox_ph", "num_features": 39},
            "strategy": {"name": "fedavg"},
            "train": {
                "local_steps": 5,
                "batch_size": 8,
                "learning_rate": 0.01,
                "optimizer": "adam",
            },
        }
    )
    nodes = {n: (handlers or {}).get(n, a.handle) for n, a in apps.items()}
    config = EngineConfig(
        rounds=1, min_nodes=4, min_replies=min_replies, seed=3, round_timeout=60.0
    )
    config_extra = dict(spec.instruction_config())
    if secure is not None:
        config_extra.update(secure.to_config())
    engine = RoundEngine(
        spec.build_strategy(),
        InMemoryTransport(nodes),
        config,
        run_id="run-s",
        instruction_config=config_extra,
        secure_aggregation=secure,
    )
    return engine, spec


def test_secure_round_equals_the_plain_weighted_mean(apps: dict[str, NodeApp]) -> None:
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    plain, _ = _engine(apps, None)
    secure, _ = _engine(apps, SECURE)
    p_plain, _, r_plain = plain.run_round(1, x0, plain.strategy.init_state(x0))
    p_secure, _, r_secure = secure.run_round(1, x0, secure.strategy.init_state(x0))
    assert r_plain.failed is None, r_plain
    assert r_secure.failed is None, r_secure
    assert r_secure.num_replies == 4
    assert r_secure.train_metrics["secagg.survivors"] == 4
    for name in x0:  # float32 weighted mean vs exact-ring sum within the quantisation step
        np.testing.assert_allclose(p_secure[name], p_plain[name], atol=2e-6)


def test_a_site_lost_after_sharing_keys_is_recovered(apps: dict[str, NodeApp]) -> None:
    def drops_at_masked_input(instruction: Instruction) -> Reply:
        if instruction.config.get(STAGE_KEY) == "masked_input":
            return Reply(
                run_id=instruction.run_id,
                round=instruction.round,
                node_id="center-3",
                kind=instruction.kind,
                error="transport: gone",
            )
        return apps["center-3"].handle(instruction)

    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    engine, _ = _engine(apps, SECURE, {"center-3": drops_at_masked_input})
    params, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is None
    assert record.num_replies == 3
    assert any(e.kind == "secagg_dropout" and e.node_id == "center-3" for e in engine._events)
    assert not np.allclose(params["weight"], x0["weight"])


def test_too_many_dropouts_abort_the_round_cleanly(apps: dict[str, NodeApp]) -> None:
    def gone(node: str) -> Callable[[Instruction], Reply]:
        def handler(instruction: Instruction) -> Reply:
            if instruction.config.get(STAGE_KEY) == "masked_input":
                return Reply(
                    run_id=instruction.run_id,
                    round=instruction.round,
                    node_id=node,
                    kind=instruction.kind,
                    error="transport: gone",
                )
            return apps[node].handle(instruction)

        return handler

    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    engine, _ = _engine(apps, SECURE, {n: gone(n) for n in SITES[1:]})
    params, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is not None
    assert "secure aggregation" in record.failed
    for name in x0:  # no partial sum was released: the model is unchanged
        np.testing.assert_array_equal(params[name], x0[name])


def test_a_substituted_public_key_is_detected_by_the_sites(apps: dict[str, NodeApp]) -> None:
    """The coordinator swaps center-1's advertised mask key for one it controls: every
    neighbour refuses to share keys, so the round cannot go on."""

    def tamper(node: str) -> Callable[[Instruction], Reply]:
        def handler(instruction: Instruction) -> Reply:
            if instruction.config.get(STAGE_KEY) == "share_keys":
                message, more = unpack_message(instruction.extras)
                roster = decode_message(message)
                assert isinstance(roster, Roster)
                entries = []
                for advert in roster.neighbours:
                    if advert.node_id == "center-1":
                        advert = dataclasses.replace(advert, s_public=bytes(32))
                    entries.append(advert)
                forged = dataclasses.replace(roster, neighbours=tuple(entries))
                instruction = dataclasses.replace(
                    instruction, extras=pack_message(forged.to_bytes(), **more)
                )
                reply = apps[node].handle(instruction)
                assert reply.error is not None
                assert "substituted" in reply.error
                return reply
            return apps[node].handle(instruction)

        return handler

    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    engine, _ = _engine(apps, SECURE, {n: tamper(n) for n in SITES if n != "center-1"})
    _, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is not None


def test_a_plan_that_differs_from_the_job_is_refused(apps: dict[str, NodeApp]) -> None:
    looser = SecureAggregationSettings(clip_range=8.0, quantisation_step=1e-6, max_weight=1000)
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    engine, _ = _engine(apps, SECURE)
    engine.secure_aggregation = looser  # the coordinator plans with other settings
    _, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is not None
    assert any(
        e.kind == "reply_rejected" and "differs from the job" in e.message for e in engine._events
    )


def test_distributed_dp_noise_is_added_by_the_sites_before_masking(
    apps: dict[str, NodeApp],
) -> None:
    """Client-level DP with distributed noise under SecAgg+: each site clips its update and
    adds its noise share before masking, so the coordinator only ever holds the noisy sum;
    the accounting uses the survivors actually in it."""
    spec = JobSpec.from_mapping(
        {
            "run": {
                "name": "d",
                "dataset": "brca",
                "rounds": 1,
                "seed": 3,
                "min_nodes": 4,
                "min_replies": 3,
            },
            "task": {"name": "cox_ph", "num_features": 39},
            "strategy": {"name": "fedavg"},
            "train": {
                "local_steps": 5,
                "batch_size": 8,
                "learning_rate": 0.01,
                "optimizer": "adam",
            },
            "privacy": {
                "mode": "client",
                "noise": "distributed",
                "noise_multiplier": 1.0,
                "delta": 1e-5,
                "max_grad_norm": 0.1,
            },
            "secure_aggregation": SECURE.to_table(),
        }
    )
    config = EngineConfig(rounds=1, min_nodes=4, min_replies=3, seed=3, round_timeout=60.0)
    engine = RoundEngine(
        spec.build_strategy(),
        InMemoryTransport({n: a.handle for n, a in apps.items()}),
        config,
        run_id="run-d",
        instruction_config=spec.instruction_config(),
        secure_aggregation=spec.secure_aggregation,
    )
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    params, _, record = engine.run_round(1, x0, engine.strategy.init_state(x0))
    assert record.failed is None, [e.message for e in engine._events]
    assert record.train_metrics["dp.replies"] == 4
    assert record.train_metrics["dp.noise_std"] == pytest.approx(1.0 * 0.1)
    # the sum carries noise of std σC = 0.1 per coordinate on top of 4 updates each clipped
    # to norm 0.1: the mean moved by about 0.1/4 per coordinate, far more than clipping allows
    moved = np.concatenate([(params[n] - x0[n]).ravel() for n in x0])
    assert float(np.std(moved)) > 0.5 * 0.1 / 4
