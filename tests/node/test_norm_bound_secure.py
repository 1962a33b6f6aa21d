"""Under secure aggregation every honest site bounds its update before masking: a whole
SecAgg+ round through real development nodes (kits, signed keys, masks) on Fed-TCGA-BRCA
with ``robust.max_update_norm`` set. The coordinator sees only the sum, so the test reads
the round's result: it equals the plain round's mean of the *bounded* replies (each checked
≤ M) within the quantisation error, and so lies within M of the start — while the same
round without the bound moves the model far further."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pytest

from biofed.coordinator import EngineConfig, RoundEngine
from biofed.core import Instruction, ParameterSet, Reply, Scalar
from biofed.core.sections import MAX_UPDATE_NORM
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import SecureAggregationSettings
from biofed.strategies import FedAvg
from biofed.tasks import CoxPHTask
from biofed.transport import InMemoryTransport

SITES = ("center-0", "center-1", "center-2")
SECURE = SecureAggregationSettings(clip_range=4.0, quantisation_step=1e-6, max_weight=1000)
BOUND = 0.001
TRAIN = {"local_steps": 3, "learning_rate": 0.01, "batch_size": 8}


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NodeApp]:
    root = tmp_path_factory.mktemp("bound") / "c"
    Consortium.create(root, consortium="t", coordinator="127.0.0.1:7443", sites=list(SITES))
    brca = load_tcga_brca()
    return {
        s: NodeApp(s, NodeConfig(datasets={}), kit=load_kit(root / s), data={"brca": brca.sites[s]})
        for s in SITES
    }


def _round(
    apps: Mapping[str, NodeApp], secure: bool, bound: float | None
) -> tuple[ParameterSet, ParameterSet, list[tuple[Instruction, Reply]]]:
    """One round from the same start; returns (start, result, the plain training replies)."""
    seen: list[tuple[Instruction, Reply]] = []

    def handler(app: NodeApp) -> Callable[[Instruction], Reply]:
        def handle(inst: Instruction) -> Reply:
            reply = app.handle(inst)
            if inst.kind.value == "train":
                seen.append((inst, reply))
            return reply

        return handle

    config: dict[str, Scalar] = {"task": "cox_ph", "dataset": "brca", "task.num_features": 39}
    if bound is not None:
        config[MAX_UPDATE_NORM] = bound
    if secure:
        config.update(SECURE.to_config())
    strategy = FedAvg(train_config=TRAIN)
    engine = RoundEngine(
        strategy,
        InMemoryTransport({s: handler(a) for s, a in apps.items()}),
        EngineConfig(rounds=1, min_nodes=3, min_replies=3, seed=3, round_timeout=60.0),
        run_id=f"run-{secure}-{bound}",
        instruction_config=config,
        secure_aggregation=SECURE if secure else None,
    )
    x0 = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    params, _, record = engine.run_round(1, x0, strategy.init_state(x0))
    assert record.failed is None, record.failed
    return x0, params, seen


def _norm(a: ParameterSet, b: ParameterSet) -> float:
    return float(
        np.linalg.norm(np.concatenate([(np.asarray(a[n], np.float64) - b[n]).ravel() for n in b]))
    )


def test_the_masked_inputs_are_bounded_before_masking(apps: dict[str, NodeApp]) -> None:
    x0, plain, replies = _round(apps, secure=False, bound=BOUND)
    assert len(replies) == 3
    for inst, reply in replies:  # every plain reply is bounded...
        assert reply.parameters is not None
        assert _norm(reply.parameters, inst.parameters) <= BOUND
    _, secure, masked = _round(apps, secure=True, bound=BOUND)
    assert masked == []  # ...and in the secure round no plain training reply left at all
    for name in x0:  # the unmasked mean is the mean of the bounded updates
        np.testing.assert_allclose(secure[name], plain[name], atol=2e-6)
    quantisation = 2e-6 * np.sqrt(sum(np.size(v) for v in x0.values()))
    assert _norm(secure, x0) <= BOUND + quantisation  # the coordinator's bounded-range check
    _, unbounded, _ = _round(apps, secure=True, bound=None)
    assert _norm(unbounded, x0) > 10 * BOUND  # without the bound the sum would betray it
