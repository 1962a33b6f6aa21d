"""Attacks on the coordinator's check of SUMMARISE replies (issue 13): a hostile site whose
summary is internally consistent but lies — a huge record count to dominate the pooled
moments, moments that overflow when pooled. The coordinator must not crash, must never fit
NaN or infinity, and must refuse a summary claiming more records than its site declared
(as it does for training replies)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from biofed.coordinator import JobSpec, PreprocessingFailed, RoundEngine
from biofed.core import Instruction, MessageKind, NodeInfo, ParameterSet, Reply
from biofed.data import NumericStats, SiteSummary
from biofed.datasets import gi_bleed_study, write_eunomia_sites
from biofed.node import NodeApp, NodeConfig
from biofed.transport import InMemoryTransport

SITES = ("site-0", "site-1", "site-2")
HONEST = "site-0"


@pytest.fixture(scope="module")
def cdms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_eunomia_sites(tmp_path_factory.mktemp("cdm"), len(SITES))


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    spec = tmp_path_factory.mktemp("study") / "study.json"
    spec.write_text(gi_bleed_study().to_json(), encoding="utf-8")
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "attack",
                "dataset": "cdm",
                "rounds": 1,
                "seed": 1,
                "min_nodes": len(SITES),
                "min_replies": 2,
            },
            "study": {"spec": str(spec)},
            "task": {"name": "logistic_regression"},
            "train": {"local_steps": 5, "batch_size": 32, "learning_rate": 0.2},
        }
    )


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str]] = []

    def on_round_start(self, server_round: int, num_selected: int) -> None:
        pass

    def on_reply(self, server_round: int, reply: Reply, accepted: bool) -> None:
        pass

    def on_round_end(self, record: object) -> None:
        pass

    def on_event(self, event: object) -> None:
        self.events.append((event.kind, event.node_id, event.message))  # type: ignore[attr-defined]


def scaled(factor: int, shift: float = 0.0) -> Callable[[SiteSummary], SiteSummary]:
    """A lie that is consistent: every count times ``factor``, every mean moved by ``shift``."""

    def lie(s: SiteSummary) -> SiteSummary:
        numeric = {
            k: NumericStats(
                n=v.n * factor,
                missing=v.missing * factor,
                mean=v.mean + shift if v.n else 0.0,
                m2=v.m2 * factor,
                edges=v.edges,
                counts=None if v.counts is None else tuple(c * factor for c in v.counts),
            )
            for k, v in s.numeric.items()
        }
        return SiteSummary(
            records=s.records * factor,
            outcome={k: v * factor if k != "time_sum" else v for k, v in s.outcome.items()},
            numeric=numeric,
            categorical={
                k: {c: n * factor for c, n in v.items()} for k, v in s.categorical.items()
            },
            suppressed=s.suppressed,
        )

    return lie


def fit_with(
    cdms: dict[str, Path],
    job: JobSpec,
    lie: Callable[[SiteSummary], SiteSummary],
    declared: dict[str, int] | None = None,
) -> tuple[object, Events]:
    apps = {s: NodeApp(s, NodeConfig(datasets={}), data={"cdm": f}) for s, f in cdms.items()}

    def liar(instruction: Instruction) -> Reply:
        reply = apps["site-2"].handle(instruction)
        if instruction.kind is not MessageKind.SUMMARISE or not reply.ok:
            return reply
        assert reply.parameters is not None
        told = lie(SiteSummary.from_arrays(dict(reply.parameters)))
        return dataclasses.replace(
            reply, parameters=ParameterSet(told.to_arrays()), num_examples=told.records
        )

    handlers = {**{s: a.handle for s, a in apps.items()}, "site-2": liar}
    info = {s: NodeInfo(node_id=s, num_examples=(declared or {}).get(s, 0)) for s in SITES}
    events = Events()
    with InMemoryTransport(handlers, info=info) as transport:
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="attack",
            job=job.job_section(),
            listener=events,
        )
        return engine.preprocess(), events


def finite_fit(fitted: object) -> None:
    for column in fitted.columns:  # type: ignore[attr-defined]
        if column.kind != "categorical":
            assert math.isfinite(column.center)
            assert math.isfinite(column.scale)
            assert column.scale > 0


def test_a_summary_claiming_more_records_than_declared_is_refused(
    cdms: dict[str, Path], job: JobSpec
) -> None:
    fitted, events = fit_with(cdms, job, scaled(10**6), declared={"site-2": 5_000})
    rejected = [m for kind, node, m in events.events if kind == "reply_rejected"]
    assert any("summarised examples" in m and "declared" in m for m in rejected), events.events
    assert all(node == "site-2" for kind, node, _ in events.events if kind == "reply_rejected")
    finite_fit(fitted)


def test_an_undeclared_huge_record_count_never_gives_nan_or_infinity(
    cdms: dict[str, Path], job: JobSpec
) -> None:
    fitted, _ = fit_with(cdms, job, scaled(10**9))
    finite_fit(fitted)


@pytest.mark.parametrize("shift", [1e200, -1e300])
def test_moments_that_overflow_when_pooled_fail_the_phase_in_one_line(
    cdms: dict[str, Path], job: JobSpec, shift: float
) -> None:
    with pytest.raises(PreprocessingFailed) as info:
        fit_with(cdms, job, scaled(1, shift))
    assert "\n" not in str(info.value)
