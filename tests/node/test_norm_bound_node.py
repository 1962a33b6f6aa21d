"""An honest site bounds its own training update to the round's ``robust.max_update_norm``
before the reply leaves: the real chain of a development node on Fed-TCGA-BRCA (Cox), the
update measured against the task's own unbounded output; a malformed bound is refused before
the task runs; no bound leaves the update untouched; the bound comes before DP's clip and
noise. The rounding guard of :func:`bound_update` is checked as a property."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import MAX_UPDATE_NORM
from biofed.datasets import load_tcga_brca
from biofed.node import NodeApp, NodeConfig
from biofed.node._chain import Work, site_chain
from biofed.node._step_bound import UPDATE_NORM_METRIC, bound_update
from biofed.privacy import DPSettings
from biofed.tasks import CoxPHTask


@pytest.fixture(scope="module")
def app() -> NodeApp:
    brca = load_tcga_brca()
    return NodeApp("center-0", NodeConfig(datasets={}), data={"brca": brca.sites["center-0"]})


def _instruction(run_id: str, **config: object) -> Instruction:
    params = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    return Instruction(
        run_id=run_id,
        round=1,
        node_id="center-0",
        kind=MessageKind.TRAIN,
        parameters=params,
        config={
            "seed": 1,
            "local_steps": 2,
            "task": "cox_ph",
            "dataset": "brca",
            "task.num_features": 39,
            **config,
        },
    )


def _update(reply: Reply, inst: Instruction) -> np.ndarray:
    assert reply.ok, reply.error
    assert reply.parameters is not None
    return np.concatenate(
        [
            (np.asarray(reply.parameters[n], np.float64) - inst.parameters[n]).ravel()
            for n in inst.parameters
        ]
    )


def _raw(app: NodeApp, run_id: str) -> np.ndarray:
    """The task's own update for this instruction, straight from the run step."""
    inst = _instruction(run_id)
    return _update(app.steps.run(Work(instruction=inst)), inst)


def test_the_reply_update_is_scaled_down_to_the_bound(app: NodeApp) -> None:
    raw = _raw(app, "raw")
    raw_norm = float(np.linalg.norm(raw))
    bound = 0.05 * raw_norm
    inst = _instruction("bounded", **{MAX_UPDATE_NORM: bound})
    reply = app.handle(inst)
    update = _update(reply, inst)
    assert np.linalg.norm(update) <= bound
    # float32 parameters (the model starts at zero): equal up to float32 rounding
    assert np.linalg.norm(update) == pytest.approx(bound, rel=1e-6)
    np.testing.assert_allclose(update, raw * (bound / raw_norm), rtol=1e-6, atol=1e-12)
    assert reply.metrics[UPDATE_NORM_METRIC] == pytest.approx(raw_norm)


def test_no_bound_or_a_loose_bound_leaves_the_update_unchanged(app: NodeApp) -> None:
    raw = _raw(app, "raw")
    plain = _instruction("plain")
    reply = app.handle(plain)
    np.testing.assert_array_equal(_update(reply, plain), raw)
    assert UPDATE_NORM_METRIC not in reply.metrics
    loose = _instruction("loose", **{MAX_UPDATE_NORM: 10.0 * float(np.linalg.norm(raw))})
    np.testing.assert_array_equal(_update(app.handle(loose), loose), raw)


@pytest.mark.parametrize("bad", [0.0, -1.0, 0, math.nan, math.inf])
def test_a_bound_that_is_not_a_finite_positive_number_is_refused_before_the_task(
    app: NodeApp, bad: float
) -> None:
    ran: list[str] = []

    def run(work: Work) -> Reply:
        ran.append(work.instruction.run_id)
        return app.steps.run(work)

    chain = site_chain(dataclasses.replace(app.steps, run=run))
    reply = chain(Work(instruction=_instruction("bad", **{MAX_UPDATE_NORM: bad})))
    assert reply.error is not None
    assert MAX_UPDATE_NORM in reply.error
    assert reply.parameters is None
    assert ran == []


def _client_dp(clip: float, **extra: object) -> dict[str, Any]:
    table: dict[str, object] = {
        "mode": "client",
        "delta": 1e-5,
        "noise_multiplier": 2.0,
        "max_grad_norm": clip,
        **extra,
    }
    dp = DPSettings.from_table(table, rounds=4, min_replies=2)
    config: dict[str, Any] = {**dp.to_config(), "dp.clip_norm": clip}
    if dp.noise == "distributed":
        config["dp.noise_std_share"] = 0.5
    return config


def test_the_bound_comes_before_dps_clip_and_noise(app: NodeApp) -> None:
    """Client-level DP with clip C: a tighter bound M < C wins, a looser one leaves DP's C;
    the site's distributed noise share is added to the bounded update (the reverse order
    would shrink the noise and break its accounting), and no raw norm leaves under DP."""
    raw_norm = float(np.linalg.norm(_raw(app, "raw")))
    clip = 0.3 * raw_norm
    tight = _instruction("dp-tight", **_client_dp(clip), **{MAX_UPDATE_NORM: 0.1 * raw_norm})
    loose = _instruction("dp-loose", **_client_dp(clip), **{MAX_UPDATE_NORM: 3 * raw_norm})
    tight_reply, loose_reply = app.handle(tight), app.handle(loose)
    tight_norm = np.linalg.norm(_update(tight_reply, tight))
    assert tight_norm == pytest.approx(0.1 * raw_norm, rel=1e-6)
    assert np.linalg.norm(_update(loose_reply, loose)) == pytest.approx(clip, rel=1e-6)
    assert UPDATE_NORM_METRIC not in tight_reply.metrics
    assert tight_reply.metrics["dp.epsilon"] > 0
    bound = 0.01 * raw_norm
    noisy = _instruction(
        "dp-noise", **_client_dp(clip, noise="distributed"), **{MAX_UPDATE_NORM: bound}
    )
    update = _update(app.handle(noisy), noisy)
    # the site's N(0, 0.5²) noise share on every coordinate, on top of the bounded update
    assert np.linalg.norm(update) > 100 * bound


_floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    start=arrays(np.float32, 7, elements=_floats),
    step=arrays(np.float32, 7, elements=_floats),
    bound=st.floats(1e-3, 1e3),
)
def test_the_bound_holds_on_the_stored_float32_values(
    start: np.ndarray, step: np.ndarray, bound: float
) -> None:
    """float32 parameters far from zero round the bounded update; what is stored is still
    within M (measured in float64), and an update within M comes back as it was."""
    x = ParameterSet({"w": start})
    trained = ParameterSet({"w": (start.astype(np.float64) + step).astype(np.float32)})
    sent, norm = bound_update(trained, x, bound)
    assert sent["w"].dtype == np.float32
    moved = np.linalg.norm(sent["w"].astype(np.float64) - start.astype(np.float64))
    assert moved <= bound
    assert norm == pytest.approx(
        np.linalg.norm(trained["w"].astype(np.float64) - start.astype(np.float64))
    )
    if norm <= bound:
        assert sent["w"] is trained["w"]
