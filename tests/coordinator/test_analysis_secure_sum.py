"""The secure sum's decoding: a statistic summed on the fixed-point grid comes back exact
where it can be (zeros, counts) and within the stated bound elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from biofed.analytics import DisclosureRules, Query
from biofed.coordinator import analyze_over
from biofed.core import Instruction, ParameterSet, Reply
from biofed.core.sections import JobSection
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.secagg import SecAggConfig, SecureAggregationSettings
from biofed.secagg._quantise import dequantise_sum, quantise_into
from biofed.transport import InMemoryTransport


@pytest.mark.parametrize(("clip", "step"), [(1e9, 1e-6), (1e10, 1e-5), (1e12, 1e-3), (1e9, 3e-4)])
def test_zeros_and_counts_decode_exactly_and_sums_within_n_half_steps(
    clip: float, step: float
) -> None:
    rng = np.random.default_rng(7)
    n = 6
    plan = SecAggConfig(dimension=6, clip_range=clip, quantisation_step=step).plan(n)
    total = np.zeros(7, plan.dtype)
    inputs = []
    for _ in range(n):
        x = np.array([0.0, float(rng.integers(0, 10**6)), 1.0, rng.normal(0, 1e6), -clip, clip])
        out = np.zeros(7, plan.dtype)
        quantise_into(out, plan, x, 1)
        total += out
        inputs.append(x)
    exact = np.sum(inputs, axis=0)
    got = dequantise_sum(total, plan)
    if 1.0 / round(1.0 / step) == step:  # s = 1/K (0 on the grid)
        assert got[0] == 0.0  # a flag or an empty cell stays exactly zero
        assert got[1] == exact[1]  # a count is exact
        assert got[2] == n
    # the stated bound: n·s/2, plus float64 rounding of the result
    assert np.all(np.abs(got - exact) <= n * step / 2 + np.abs(exact) * 2.0**-52 * 4)


def test_a_site_that_sends_its_answer_beside_its_masked_vector_is_left_out(
    tmp_path: Path,
) -> None:
    """The coordinator keeps no per-site statistic even from a site that offers one."""
    fed = load_tcga_brca()
    names = ["center-0", "center-1", "center-2", "center-3"]
    consortium = Consortium.create(
        tmp_path / "c", consortium="t", coordinator="localhost", sites=names
    )
    nodes = {
        n: NodeApp(
            n,
            NodeConfig(datasets={}),
            kit=load_kit(consortium.kit_directory(n)),
            data={"d": fed.sites[n]},
        )
        for n in names
    }

    def leaky(node: NodeApp) -> Callable[[Instruction], Reply]:
        def handle(instruction: Instruction) -> Reply:
            reply = node.handle(instruction)
            leak = ParameterSet({"count": np.array([float(len(fed.sites[node.node_id].train))])})
            return dataclasses.replace(reply, parameters=leak)

        return handle

    handlers: dict[str, Callable[[Instruction], Reply]] = {n: a.handle for n, a in nodes.items()}
    handlers["center-3"] = leaky(nodes["center-3"])
    query = Query("count", {}, split="train")
    settings = SecureAggregationSettings(clip_range=1e9, max_weight=1)
    result, events = analyze_over(
        InMemoryTransport(handlers),
        query,
        DisclosureRules(),
        run_id="leak",
        min_replies=3,
        job=JobSection(dataset="d", secure_aggregation=settings.to_section()),
        secure=settings,
    )
    rejected = {e.node_id for e in events if e.kind == "reply_rejected"}
    assert rejected == {"center-3"}
    assert any("carries plain arrays" in e.message for e in events if e.kind == "reply_rejected")
    assert result.to_dict()["count"] == sum(len(fed.sites[n].train) for n in names[:3])
    assert result.to_dict()["sites"] == 3
