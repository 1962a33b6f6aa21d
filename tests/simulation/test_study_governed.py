"""The preprocessing phase at governed sites (the GI-bleed study on Eunomia CDMs, and a file
study on raw ward tables): a summary request goes through the same chain as a training
round — the policy checks the agreement approves the study spec, output control lets only
the summary's arrays out, the audit log records what left, and the privacy step debits
nothing for it."""

from __future__ import annotations

import datetime as dt
import json
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
from biofed.core import NodeInfo
from biofed.data import load_study_spec
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
from biofed.simulation import build_node, simulate
from biofed.simulation._job_governance import Rehearsal
from biofed.simulation._job_sites import site_recipes
from biofed.transport import InMemoryTransport

pytestmark = pytest.mark.slow

SITES = ("site-a", "site-b", "site-c")
TASK_PY = """
from biofed.tasks import LogisticRegressionTask


def make_task(num_features, l2=0.0, init="zeros", metric="roc_auc"):
    return LogisticRegressionTask(num_features=num_features, l2=l2, init=init, metric=metric)
"""
SPEC = """
[study]
name = "ward-study"
source = "file"
test_fraction = 0.25
seed = 4

[columns]
id = "patient_id"
features = ["age", "ward", "lactate"]
categorical = ["ward"]

[outcome]
kind = "binary"
label = "y"
"""


def _site_file(folder: Path, site: int) -> Path:
    """A raw ward table: a numeric column with missing values and a shift per site, a
    categorical one, a binary outcome that depends on both."""
    rng = np.random.default_rng(site)
    n = 150 + 40 * site
    age = rng.normal(60 + 4 * site, 12, n).round(1)
    ward = rng.choice(["icu", "medical", "surgical"], n, p=[0.2, 0.5, 0.3])
    lactate = rng.lognormal(0.3, 0.4, n).round(2).astype(object)
    lactate[rng.random(n) < 0.1] = ""
    logit = 0.05 * (age - 60) + (ward == "icu") * 1.0 - 0.5
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    lines = ["patient_id,age,ward,lactate,y"]
    lines += [f"{1000 * site + i},{age[i]},{ward[i]},{lactate[i]},{y[i]}" for i in range(n)]
    file = folder / f"{SITES[site]}.csv"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


def _agreement(bundle: str, studies: tuple[str, ...]) -> SignedAgreement:
    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint="0" * 64)

    return SignedAgreement(
        agreement=StudyAgreement(
            agreement_id="ward-study",
            title="Ward outcomes",
            purpose="Rehearse the ward study.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="real-consortium",
            coordinator=party("the-coordinator", "coordinator"),
            parties=(*(party(s, "site") for s in SITES), party("researcher", "researcher")),
            datasets=dict.fromkeys(SITES, "data"),
            approved_bundles=(bundle,),
            approved_studies=studies,
            outputs=OutputPolicy(metrics=("roc_auc", "accuracy"), per_site_metrics=True),
            privacy=PrivacyRequirements(
                dp_required=True,
                max_epsilon=dict.fromkeys(SITES, 8.0),
                max_delta=dict.fromkeys(SITES, 1e-5),
            ),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("governed-study")
    (root / "task").mkdir()
    (root / "task" / "task.py").write_text(TASK_PY, encoding="utf-8")
    bundle = pack_bundle(root / "task", root / "task.zip").digest
    (root / "study.toml").write_text(SPEC, encoding="utf-8")
    (root / "study.json").write_text(gi_bleed_study().to_json(), encoding="utf-8")
    digests = {
        "file": load_study_spec(root / "study.toml").digest,
        "omop": load_study_spec(root / "study.json").digest,
    }
    write_agreement(root / "approved.toml", _agreement(bundle, tuple(digests.values())))
    write_agreement(root / "unapproved.toml", _agreement(bundle, ("f" * 64,)))
    data = root / "data"
    data.mkdir()
    cdms = write_eunomia_sites(root / "cdm", len(SITES))
    sources = {
        "file": {site: _site_file(data, i) for i, site in enumerate(SITES)},
        "omop": dict(zip(SITES, cdms.values(), strict=True)),
    }
    return {"root": root, "bundle": bundle, "sources": sources, "digests": digests}


def _with(setup: dict[str, Any], kind: str) -> dict[str, Any]:
    """The setup of one kind of study source: "file" (ward tables) or "omop" (Eunomia CDMs
    and the GI-bleed study)."""
    spec = "study.toml" if kind == "file" else "study.json"
    return {
        **setup,
        "files": setup["sources"][kind],
        "digest": setup["digests"][kind],
        "spec": spec,
    }


def _job(setup: dict[str, Any], rounds: int = 2) -> JobSpec:
    return JobSpec.from_mapping(
        {
            "run": {
                "name": "ward-study",
                "dataset": "data",
                "rounds": rounds,
                "seed": 3,
                "min_nodes": 3,
                "min_replies": 2,
                "agreement": "ward-study",
                "bundle": setup["bundle"],
            },
            "study": {"spec": setup.get("spec", "study.toml")},
            "task": {"name": "logistic_regression"},
            "train": {"local_steps": 5, "batch_size": 16, "learning_rate": 0.2},
            "evaluate": {"split": "test", "metrics": "roc_auc"},
            "privacy": {
                "mode": "client",
                "delta": 1e-5,
                "target_epsilon": 4.0,
                "noise": "distributed",
            },
        },
        base=setup["root"],
    )


def _governed_run(setup: dict[str, Any], agreement: str, workdir: Path) -> tuple[Any, Any]:
    """Run the job over governed sites whose folders stay in ``workdir``; return the engine
    (after its preprocessing phase or its failure) and the result or the exception."""
    job = _job(setup)
    rehearsal = Rehearsal.load(setup["root"] / agreement, setup["root"] / "task.zip")
    recipes = site_recipes(
        setup["files"], "data", workdir=workdir, needs_kits=False, rehearsal=rehearsal
    )
    apps = {r.node_id: build_node(r) for r in recipes}
    info = {s: NodeInfo(node_id=s) for s in SITES}
    with InMemoryTransport({s: a.handle for s, a in apps.items()}, info=info) as transport:
        engine = RoundEngine(
            job.build_strategy(),
            transport,
            job.engine_config(deadline=False),
            run_id="governed-study",
            job=job.job_section(),
        )
        try:
            fitted = engine.preprocess()
        except PreprocessingFailed as exc:
            return engine, exc
        assert fitted is not None
        return engine, engine.run(job.with_preprocessing(fitted).initial_parameters())


def _shown(events: Any) -> list[tuple[int, str, str | None, str]]:
    return [
        (e.round, e.kind, e.node_id, e.message[:300])
        for e in events
        if e.kind not in (PREPROCESSING_EVENT, SUMMARIES_EVENT)
    ]


def _audit(workdir: Path, site: str) -> list[tuple[str, dict[str, Any]]]:
    file = workdir / "consortium" / "sites" / site / "audit.jsonl"
    entries = [json.loads(line) for line in file.read_text().splitlines()]
    return [(e["event"], e["data"]) for e in entries]


@pytest.mark.parametrize("kind", ["omop", "file"])
def test_governed_sites_summarise_through_their_chain_without_a_debit(
    setup: dict[str, Any], tmp_path: Path, kind: str
) -> None:
    setup = _with(setup, kind)
    _engine, result = _governed_run(setup, "approved.toml", tmp_path)
    assert not isinstance(result, Exception), result
    assert [r.failed for r in result.history] == [None, None], _shown(result.events)
    assert 0.0 <= result.history[-1].eval_metrics["roc_auc"] <= 1.0  # the test metric
    assert any(e.kind == PREPROCESSING_EVENT for e in result.events)
    passes = {e.round for e in result.events if e.kind == PREPROCESSING_EVENT} or {0}
    for site in SITES:
        audit = _audit(tmp_path, site)
        summarised = [(e, d) for e, d in audit if d.get("kind") == "summarise"]
        accepted = [d for e, d in summarised if e == "job.accepted"]
        sent = [d for e, d in summarised if e == "round.sent"]
        assert accepted, audit
        assert len(accepted) == len(sent), audit
        assert all(d["study_sha256"] == setup["digest"] for d in accepted)
        assert all(d["metrics"] == [] and d["bytes"] > 0 for d in sent)
        # the ledger debits the two training rounds, never a summary
        debits = [d for e, d in audit if e.startswith("budget.") and "round" in d]
        assert debits, audit
        assert {d["round"] for d in debits} <= {1, 2}, audit
        assert not any(d.get("kind") == "summarise" for e, d in audit if e.startswith("budget."))
        trained = [d for e, d in audit if e == "round.sent" and d.get("kind") == "train"]
        assert len(trained) == 2
    assert passes


def test_a_study_the_agreement_does_not_list_is_refused_at_every_site(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    setup = _with(setup, "omop")
    _engine, failure = _governed_run(setup, "unapproved.toml", tmp_path)
    assert isinstance(failure, PreprocessingFailed)
    message = str(failure)
    assert "0 of 3 sites answered pass 1" in message
    assert "approved_studies" in message
    for site in SITES:
        refused = [d for e, d in _audit(tmp_path, site) if e == "job.refused"]
        assert len(refused) == 1
        assert refused[0]["kind"] == "summarise"
        assert "approved_studies" in refused[0]["rule"]
        assert not any(e == "round.sent" for e, _ in _audit(tmp_path, site))
    # the same through simulate(): the run fails with one clear line
    with pytest.raises(PreprocessingFailed, match="approved_studies"):
        simulate(
            dict(setup["files"]),
            job=_job(setup),
            agreement=setup["root"] / "unapproved.toml",
            bundle=setup["root"] / "task.zip",
        )
