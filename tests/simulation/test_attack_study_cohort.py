"""Attack on the governed preprocessing phase (issue 13): an APPROVED study spec whose cohort
at the sites is smaller than the agreement's minimum (here: no one has 100 years of prior
observation). Each site's policy must refuse the summary request under the cohort rule,
audit the refusal, and release nothing; the run fails in one line."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from biofed.coordinator import JobSpec, PreprocessingFailed, RoundEngine
from biofed.core import NodeInfo
from biofed.data import StudySpec
from biofed.datasets import gi_bleed_study, write_eunomia_sites
from biofed.governance import (
    OutputPolicy,
    Party,
    PrivacyRequirements,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    write_agreement,
)
from biofed.simulation import build_node
from biofed.simulation._job_governance import Rehearsal
from biofed.simulation._job_sites import site_recipes
from biofed.transport import InMemoryTransport

SITES = ("site-a", "site-b")
TASK_PY = """
from biofed.tasks import LogisticRegressionTask


def make_task(num_features, l2=0.0, init="zeros", metric="roc_auc"):
    return LogisticRegressionTask(num_features=num_features, l2=l2, init=init, metric=metric)
"""


def _agreement(bundle: str, study: str) -> SignedAgreement:
    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint="0" * 64)

    return SignedAgreement(
        agreement=StudyAgreement(
            agreement_id="tiny",
            title="A cohort too small",
            purpose="Try to summarise fewer people than the minimum.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="real-consortium",
            coordinator=party("the-coordinator", "coordinator"),
            parties=(*(party(s, "site") for s in SITES), party("researcher", "researcher")),
            datasets=dict.fromkeys(SITES, "data"),
            approved_bundles=(bundle,),
            approved_studies=(study,),
            outputs=OutputPolicy(metrics=("roc_auc",), per_site_metrics=True),
            privacy=PrivacyRequirements(),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
    )


def _audit(workdir: Path, site: str) -> list[tuple[str, dict[str, Any]]]:
    file = workdir / "consortium" / "sites" / site / "audit.jsonl"
    entries = [json.loads(line) for line in file.read_text().splitlines()]
    return [(e["event"], e["data"]) for e in entries]


def test_an_approved_spec_with_a_cohort_below_the_minimum_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    data = json.loads(gi_bleed_study().to_json())
    data["cohort"]["prior_observation_days"] = 36_600
    spec = StudySpec.from_mapping(data)
    (tmp_path / "study.json").write_text(spec.to_json(), encoding="utf-8")
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "task.py").write_text(TASK_PY, encoding="utf-8")
    bundle = pack_bundle(tmp_path / "task", tmp_path / "task.zip").digest
    write_agreement(tmp_path / "agreement.toml", _agreement(bundle, spec.digest))
    cdms = write_eunomia_sites(tmp_path / "cdm", len(SITES))
    job = JobSpec.from_mapping(
        {
            "run": {
                "name": "tiny",
                "dataset": "data",
                "rounds": 1,
                "min_nodes": 2,
                "min_replies": 2,
                "agreement": "tiny",
                "bundle": bundle,
            },
            "study": {"spec": "study.json"},
            "task": {"name": "logistic_regression"},
        },
        base=tmp_path,
    )
    workdir = tmp_path / "work"
    rehearsal = Rehearsal.load(tmp_path / "agreement.toml", tmp_path / "task.zip")
    files = dict(zip(SITES, cdms.values(), strict=True))
    recipes = site_recipes(files, "data", workdir=workdir, needs_kits=False, rehearsal=rehearsal)
    apps = {r.node_id: build_node(r) for r in recipes}
    info = {s: NodeInfo(node_id=s) for s in SITES}
    with InMemoryTransport({s: a.handle for s, a in apps.items()}, info=info) as transport:
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="tiny",
            job=job.job_section(),
        )
        with pytest.raises(PreprocessingFailed) as info_:
            engine.preprocess()
    message = str(info_.value)
    assert "\n" not in message
    assert "0 of 2 sites answered" in message
    for site in SITES:
        audit = _audit(workdir, site)
        refused = [d for e, d in audit if e == "job.refused"]
        assert len(refused) == 1, audit
        assert refused[0]["kind"] == "summarise"
        assert "minimum cohort" in refused[0]["rule"]
        assert not any(e == "round.sent" for e, _ in audit)
