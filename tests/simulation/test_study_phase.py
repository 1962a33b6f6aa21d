"""The preprocessing phase of a study job, in simulation: a GI-bleed study compiled from raw
OMOP CDMs (Eunomia split into sites) by every site, its preprocessing fitted through the sites'
own chain before round 1, then trained; and what the coordinator does with a hostile reply to
a summary request. The sites are :func:`biofed.datasets.write_eunomia_sites`' non-IID split
(age and quantity skew) of the Eunomia CDM."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from biofed.coordinator import (
    PREPROCESSING_EVENT,
    SUMMARIES_EVENT,
    JobSpec,
    PreprocessingFailed,
    RoundEngine,
)
from biofed.core import ConfigurationError, Instruction, MessageKind, NodeInfo, ParameterSet, Reply
from biofed.data import Preprocessing, StudySpec, extract
from biofed.datasets import write_eunomia_sites
from biofed.node import NodeApp, NodeConfig
from biofed.simulation import simulate
from biofed.transport import InMemoryTransport

SITES = ("site-0", "site-1", "site-2")

GI_BLEED = """
[study]
name = "gi-bleed-nsaid"
source = "omop"
test_fraction = 0.25
seed = 0

[cohort]
entry_concepts = [1118084, 1124300]
entry_domain = "drug"
first_occurrence = true
prior_observation_days = 365
exclude_concepts = [192671]
exclude_domain = "condition"

[outcome]
kind = "binary"
concepts = [192671]
domain = "condition"
window_start_days = 1
window_end_days = 365

[[covariates]]
name = "age"
kind = "age"
[[covariates]]
name = "sex"
kind = "sex"
[[covariates]]
name = "prior_gi_condition"
kind = "condition"
concepts = [4027663]
window_start_days = -365
window_end_days = -1

[transforms.age]
winsorise = [0.01, 0.99]
impute = "median"
standardise = true
[transforms.sex]
one_hot = true
min_count = 10
"""


@pytest.fixture(scope="module")
def cdms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_eunomia_sites(tmp_path_factory.mktemp("cdm"), len(SITES))


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("study") / "gi_bleed.toml"
    file.write_text(GI_BLEED, encoding="utf-8")
    return file


def study_job(spec_file: Path, **run: Any) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "gi-bleed",
                "dataset": "cdm",
                "rounds": 3,
                "seed": 1,
                "min_nodes": len(SITES),
                "min_replies": 2,
                **run,
            },
            "study": {"spec": str(spec_file)},
            "task": {"name": "logistic_regression"},
            "train": {"local_steps": 30, "batch_size": 32, "learning_rate": 0.2},
            "evaluate": {"split": "test"},
        }
    )


def test_a_gi_bleed_study_trains_from_raw_omop_through_the_preprocessing_phase(
    cdms: dict[str, Path], spec_file: Path
) -> None:
    job = study_job(spec_file)
    assert job.study is not None
    assert "num_features" not in job.task_options
    report = simulate(dict(cdms), job=job)

    assert report.preprocessing is not None
    fitted = Preprocessing.from_json(report.preprocessing)
    assert report.features == fitted.feature_names
    assert "age" in fitted.feature_names
    # the fitted means and standard deviations are the pooled ones: the training rows of
    # every site, prepared by the fit, have mean 0 and sd 1 in each standardised column
    tables = [extract(job.study, file) for file in cdms.values()]
    pooled = np.vstack([fitted.apply(t)[~np.asarray(t.is_test)] for t in tables])
    age = pooled[:, fitted.feature_names.index("age")]
    assert abs(age.mean()) < 1e-9
    assert min(abs(age.std(ddof=0) - 1), abs(age.std(ddof=1) - 1)) < 1e-9
    # training ran and the test metric is reported, beside local-only and pooled
    assert [r.failed for r in report.history] == [None, None, None], report.events
    assert report.metric == "roc_auc"
    assert 0.0 < report.federated.pooled_metric <= 1.0
    assert {b.method for b in report.baselines} >= {"pooled", *(f"local:{s}" for s in SITES)}
    assert set(report.federated.site_metrics) == set(SITES)


class Tampered:
    """A site whose replies to summary requests are rewritten by ``tamper`` (everything
    else is the real node's)."""

    def __init__(self, app: NodeApp, tamper: Callable[[Reply], Reply]) -> None:
        self.app = app
        self.tamper = tamper
        self.tampered = 0

    def __call__(self, instruction: Instruction) -> Reply:
        reply = self.app.handle(instruction)
        if instruction.kind is MessageKind.SUMMARISE and reply.ok:
            self.tampered += 1
            return self.tamper(reply)
        return reply


def _extra_array(reply: Reply) -> Reply:
    assert reply.parameters is not None
    rows = np.arange(reply.num_examples, dtype=np.float64)  # "row-level" data smuggled out
    return dataclasses.replace(reply, parameters=ParameterSet({**reply.parameters, "rows": rows}))


def _shifted_moments(reply: Reply) -> Reply:
    assert reply.parameters is not None
    arrays = dict(reply.parameters)
    name = next(k for k in arrays if k.endswith("/mean"))
    arrays[name] = np.asarray(arrays[name]) + np.inf
    return dataclasses.replace(reply, parameters=ParameterSet(arrays))


def _no_arrays(reply: Reply) -> Reply:
    return dataclasses.replace(reply, parameters=ParameterSet({}))


def _fewer_columns(reply: Reply) -> Reply:
    assert reply.parameters is not None
    kept = {k: v for k, v in reply.parameters.items() if "age" not in k}
    return dataclasses.replace(reply, parameters=ParameterSet(kept))


@pytest.mark.parametrize(
    "tamper", [_extra_array, _shifted_moments, _no_arrays, _fewer_columns], ids=lambda f: f.__name__
)
def test_a_hostile_summary_reply_is_rejected_and_the_run_goes_on(
    cdms: dict[str, Path], spec_file: Path, tamper: Callable[[Reply], Reply]
) -> None:
    job = study_job(spec_file, rounds=1)
    apps = {
        site: NodeApp(site, NodeConfig(datasets={}), data={"cdm": file})
        for site, file in cdms.items()
    }
    hostile = Tampered(apps["site-2"], tamper)
    handlers: dict[str, Callable[[Instruction], Reply]] = {
        **{s: a.handle for s, a in apps.items()},
        "site-2": hostile,
    }
    info = {s: NodeInfo(node_id=s) for s in SITES}
    with InMemoryTransport(handlers, info=info) as transport:
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="hostile",
            job=job.job_section(),
        )
        fitted = engine.preprocess()
        assert fitted is not None
        trained = job.with_preprocessing(fitted)
        result = engine.run(trained.initial_parameters())
    assert hostile.tampered == 1  # asked once, then left out of the fit's later passes
    rejected = [e for e in result.events if e.kind == "reply_rejected" and e.round == 1]
    assert [e.node_id for e in rejected][:1] == ["site-2"], result.events
    assert "summary" in rejected[0].message
    kinds = [e.kind for e in result.events]
    assert PREPROCESSING_EVENT in kinds
    assert SUMMARIES_EVENT in kinds
    summaries = next(e for e in result.events if e.kind == SUMMARIES_EVENT)
    assert '"site-2"' not in summaries.message
    assert '"site-0"' in summaries.message
    assert result.history[0].failed is None
    assert result.preprocessing == fitted.to_json()


def test_too_few_summaries_fail_the_run_with_the_sites_reasons(
    cdms: dict[str, Path], spec_file: Path
) -> None:
    job = study_job(spec_file, min_replies=3)
    apps = {
        site: NodeApp(site, NodeConfig(datasets={}), data={"cdm": file})
        for site, file in cdms.items()
    }
    handlers = {s: a.handle for s, a in apps.items()}
    handlers["site-1"] = Tampered(apps["site-1"], _extra_array)
    with InMemoryTransport(handlers, info={s: NodeInfo(node_id=s) for s in SITES}) as transport:
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="too-few",
            job=job.job_section(),
        )
        with pytest.raises(PreprocessingFailed) as caught:
            engine.preprocess()
        with pytest.raises(ConfigurationError, match="preprocessing phase comes first"):
            engine.run(ParameterSet({}))
    message = str(caught.value)
    assert "2 of 3 sites answered pass 1, the run needs 3" in message
    assert "site-1" in message
    assert "\n" not in message


def test_a_study_job_needs_study_sources_and_num_features_must_match(
    cdms: dict[str, Path], spec_file: Path
) -> None:
    job = study_job(spec_file)
    with pytest.raises(ConfigurationError, match="study sources"):
        simulate(
            dict(cdms), job=dataclasses.replace(job, study=None, task_options={"num_features": 4})
        )
    mismatched = dataclasses.replace(job, task_options={"num_features": 99})
    with pytest.raises(ConfigurationError, match=r"num_features is 99, but the fitted"):
        simulate(dict(cdms), job=mismatched, baselines=False)


def test_the_spec_travels_in_the_job_as_canonical_json_with_its_digest(spec_file: Path) -> None:
    job = study_job(spec_file)
    assert job.study is not None
    stored = JobSpec.from_json(job.to_json())
    assert stored.study == job.study
    mapping = job.to_mapping()
    assert mapping["study"] == {"spec_json": job.study.to_json(), "digest": job.study.digest}
    section = job.job_section()
    assert section.study is not None
    assert section.study.digest == job.study.digest
    assert StudySpec.from_json(section.study.spec) == job.study
    tampered = {**mapping, "study": {**mapping["study"], "digest": "0" * 64}}
    with pytest.raises(ConfigurationError, match=r"\[study\] digest is 0+, but the spec's"):
        JobSpec.from_mapping(tampered)
    with pytest.raises(ConfigurationError, match=r"\[study\]"):
        JobSpec.from_mapping({**mapping, "study": {"spec": str(spec_file.parent / "nope.toml")}})


def test_the_phase_waits_for_no_one_it_needs_min_nodes_sites(
    cdms: dict[str, Path], spec_file: Path
) -> None:
    job = study_job(spec_file)
    apps = {s: NodeApp(s, NodeConfig(datasets={}), data={"cdm": f}) for s, f in cdms.items()}
    info = {s: NodeInfo(node_id=s) for s in SITES}
    with InMemoryTransport({s: a.handle for s, a in apps.items()}, info=info) as transport:
        transport.set_online("site-1", False)
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="short",
            job=job.job_section(),
        )
        with pytest.raises(PreprocessingFailed, match="2 nodes available, the run needs 3"):
            engine.preprocess()
