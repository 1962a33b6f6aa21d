"""Rehearsing a study agreement: every virtual site is a governed node that checks the
agreement, runs only the approved bundle in its sandbox and audits what leaves."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from biofed.coordinator import JobSpec
from biofed.core import ConfigurationError
from biofed.data import FederatedDataset
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    OutputPolicy,
    Party,
    PrivacyRequirements,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    write_agreement,
)
from biofed.simulation import simulate

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1", "center-2"]
TASK_PY = """
from biofed.tasks import PiecewiseExponentialTorchTask


def make_task(num_features, num_intervals=4, max_time=3650.0):
    return PiecewiseExponentialTorchTask(
        num_features=num_features, num_intervals=num_intervals, max_time=max_time
    )
"""
UNKNOWN = "0" * 64  # the draft's fingerprints: the rehearsal's own kits replace them


def _draft(digest: str, *, max_epsilon: float) -> SignedAgreement:
    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint=UNKNOWN)

    return SignedAgreement(
        agreement=StudyAgreement(
            agreement_id="rehearsal",
            title="Survival model",
            purpose="Rehearse the survival study.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="real-consortium",
            coordinator=party("the-coordinator", "coordinator"),
            parties=(*(party(s, "site") for s in SITES), party("researcher", "researcher")),
            datasets=dict.fromkeys(SITES, "tcga-brca"),
            approved_bundles=(digest,),
            outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
            privacy=PrivacyRequirements(
                secure_aggregation_required=True,
                dp_required=True,
                max_epsilon=dict.fromkeys(SITES, max_epsilon),
                max_delta=dict.fromkeys(SITES, 1e-5),
            ),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
    )


def _job(digest: str, **privacy: Any) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "rehearsal",
                "dataset": "tcga-brca",
                "rounds": 1,
                "seed": 2,
                "min_nodes": 3,
                "min_replies": 2,
                "agreement": "rehearsal",
                "bundle": digest,
            },
            "task": {"name": "pem_torch", "num_features": 39, "num_intervals": 4},
            "strategy": {"name": "fedavg"},
            "train": {"local_steps": 2, "batch_size": 16, "learning_rate": 0.5},
            "evaluate": {"split": "test", "metrics": "c_index"},
            "privacy": {"mode": "sample", "delta": 1e-5, "max_grad_norm": 1.0, **privacy},
            "secure_aggregation": {"clip_range": 8.0, "quantisation_step": 1e-6},
        }
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    root = tmp_path_factory.mktemp("rehearsal")
    (root / "task").mkdir()
    (root / "task" / "task.py").write_text(TASK_PY, encoding="utf-8")
    digest = pack_bundle(root / "task", root / "task.zip").digest
    write_agreement(root / "agreement.toml", _draft(digest, max_epsilon=5.0))
    return root / "agreement.toml", root / "task.zip", digest


def _fed() -> FederatedDataset:
    fed = load_tcga_brca()
    return dataclasses.replace(fed, sites={s: fed.sites[s] for s in SITES})


def test_governed_sites_run_the_approved_bundle_under_dp_and_secagg(
    files: tuple[Path, Path, str],
) -> None:
    agreement, bundle, digest = files
    report = simulate(
        _fed(), job=_job(digest, target_epsilon=4.0), agreement=agreement, bundle=bundle
    )
    assert [r.failed for r in report.history] == [None], report.events
    assert report.history[0].train_metrics["secagg.survivors"] == 3.0
    assert set(report.privacy["sites"]) == set(SITES)  # type: ignore[index]
    assert all(s["guarantee"] == "exact" for s in report.privacy["sites"].values())  # type: ignore[index]
    assert report.metric == "c_index"
    assert set(report.federated.site_metrics) == set(SITES)
    assert report.baselines == ()
    json.dumps(report.to_dict())


def test_a_job_beyond_the_agreements_epsilon_is_refused_at_every_site(
    files: tuple[Path, Path, str],
) -> None:
    agreement, bundle, digest = files
    report = simulate(
        _fed(), job=_job(digest, target_epsilon=9.0), agreement=agreement, bundle=bundle
    )
    assert report.history[0].failed is not None
    refusals = [e for e in report.events if "above the agreement's ε=5" in e]
    assert {e.split()[2] for e in refusals} == set(SITES), report.events


def test_seeded_dp_is_refused_by_governed_sites(files: tuple[Path, Path, str]) -> None:
    agreement, bundle, digest = files
    job = _job(digest, target_epsilon=4.0, seeded=True)
    report = simulate(_fed(), job=job, agreement=agreement, bundle=bundle)
    assert report.history[0].failed is not None
    refusals = [e for e in report.events if "seeded DP noise" in e]
    assert {e.split()[2] for e in refusals} == set(SITES), report.events


def test_rehearsal_needs_matching_job_agreement_and_bundle(
    files: tuple[Path, Path, str], tmp_path: Path
) -> None:
    agreement, bundle, digest = files
    job = _job(digest, target_epsilon=4.0)
    with pytest.raises(ConfigurationError, match="needs both"):
        simulate(_fed(), job=job, agreement=agreement)
    with pytest.raises(ConfigurationError, match=r"\[run\] bundle runs only at governed"):
        simulate(_fed(), job=job)
    other = dataclasses.replace(job, agreement="another")
    with pytest.raises(ConfigurationError, match=r"\[run\] agreement must be 'rehearsal'"):
        simulate(_fed(), job=other, agreement=agreement, bundle=bundle)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "task.py").write_text(TASK_PY + "\n# changed\n", encoding="utf-8")
    pack_bundle(tmp_path / "t", tmp_path / "other.zip")
    with pytest.raises(ConfigurationError, match="not among the agreement's approved_bundles"):
        simulate(_fed(), job=job, agreement=agreement, bundle=tmp_path / "other.zip")
