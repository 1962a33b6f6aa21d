"""The secure sum's decoding: a statistic summed on the fixed-point grid comes back exact
where it can be (zeros, counts) and within the stated bound elsewhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from biofed.analytics import DisclosureRules, Query, QueryTable, answer, start
from biofed.coordinator import analyze_over
from biofed.core import Instruction, MessageKind, ParameterSet, Reply
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


NAMES = ["center-0", "center-1", "center-2", "center-3"]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return Consortium.create(
        tmp_path_factory.mktemp("kits"), consortium="t", coordinator="localhost", sites=NAMES
    )


def nodes(kits: Consortium) -> dict[str, NodeApp]:
    fed = load_tcga_brca()
    return {
        n: NodeApp(
            n,
            NodeConfig(datasets={}),
            kit=load_kit(kits.kit_directory(n)),
            data={"d": fed.sites[n]},
        )
        for n in NAMES
    }


class Recording(InMemoryTransport):
    """The in-memory transport, keeping every reply the coordinator receives from it."""

    def __init__(self, handlers: dict[str, Callable[[Instruction], Reply]]) -> None:
        super().__init__(handlers)
        self.received: list[Reply] = []

    def receive(self, timeout: float | None = None) -> Reply | None:
        reply = super().receive(timeout)
        if reply is not None:
            self.received.append(reply)
        return reply


def test_everything_the_coordinator_receives_in_secure_mode_holds_no_site_statistic(
    kits: Consortium,
) -> None:
    fed = load_tcga_brca()
    apps = nodes(kits)
    transport = Recording({n: a.handle for n, a in apps.items()})
    query = Query("describe", {"columns": ["age_at_index", "race_white"]})
    settings = SecureAggregationSettings(clip_range=1e9, max_weight=1)
    result, _ = analyze_over(
        transport,
        query,
        DisclosureRules(),
        run_id="watched",
        min_nodes=4,
        min_replies=4,
        job=JobSection(dataset="d", secure_aggregation=settings.to_section()),
        secure=settings,
    )
    # each site's own answer, computed directly: what a plain pass would have sent
    request = start(query, DisclosureRules(), secure=True).request()
    own = {n: answer(request, QueryTable.from_site_data(fed.sites[n])) for n in NAMES}
    assert len(transport.received) == 4 * 4  # four stages, four sites
    for reply in transport.received:
        assert reply.kind is MessageKind.SECAGG
        assert reply.error is None
        assert reply.parameters is None or len(reply.parameters) == 0
        assert set(reply.extras) == {"secagg"}
        assert not reply.metrics
        blob = b"".join(a.tobytes() for a in reply.extras["secagg"].values())
        values = {float(v) for a in own[reply.node_id].arrays.values() for v in a.ravel()}
        values.add(float(own[reply.node_id].records))
        for v in values - {0.0, 1.0}:
            assert np.float64(v).tobytes() not in blob, (reply.node_id, v)
            assert np.float32(v).tobytes() not in blob, (reply.node_id, v)
    # and the total is the sum of those answers
    stats = {s["column"]: s for s in result.to_dict()["stats"]}
    for j, column in enumerate(["age_at_index", "race_white"]):
        assert stats[column]["n"] == sum(int(own[n].arrays["n"][j]) for n in NAMES)
        assert stats[column]["sum"] == pytest.approx(
            sum(float(own[n].arrays["sum"][j]) for n in NAMES), abs=4 * 1e-6
        )


def test_a_site_that_sends_its_answer_beside_its_masked_vector_is_left_out(
    kits: Consortium,
) -> None:
    """The coordinator keeps no per-site statistic even from a site that offers one."""
    fed = load_tcga_brca()
    apps = nodes(kits)

    def leaky(node: NodeApp) -> Callable[[Instruction], Reply]:
        def handle(instruction: Instruction) -> Reply:
            reply = node.handle(instruction)
            leak = ParameterSet({"count": np.array([float(len(fed.sites[node.node_id].train))])})
            return dataclasses.replace(reply, parameters=leak)

        return handle

    handlers: dict[str, Callable[[Instruction], Reply]] = {n: a.handle for n, a in apps.items()}
    handlers["center-3"] = leaky(apps["center-3"])
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
    assert result.to_dict()["count"] == sum(len(fed.sites[n].train) for n in NAMES[:3])
    assert result.to_dict()["sites"] == 3
