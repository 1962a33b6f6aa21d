"""Rehearsing a study agreement's analytics: every virtual site is a governed node that
answers only the kinds the agreement allows, under its thresholds, and audits each pass."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from biofed.analytics import Query, QueryTable
from biofed.coordinator import AnalysisFailed
from biofed.datasets import load_tcga_brca
from biofed.governance import (
    AnalyticsPolicy,
    Party,
    SignedAgreement,
    StudyAgreement,
    write_agreement,
)
from biofed.simulation import analyze

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1", "center-2"]
UNKNOWN = "0" * 64  # a draft's fingerprints: the rehearsal's own kits replace them


def _draft(tmp_path: Path) -> Path:
    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint=UNKNOWN)

    draft = SignedAgreement(
        agreement=StudyAgreement(
            agreement_id="counts",
            title="Cohort counts",
            purpose="Rehearse the study's descriptive queries.",
            legal_basis="GDPR Art. 9(2)(j)",
            consortium="real-consortium",
            coordinator=party("the-coordinator", "coordinator"),
            parties=(*(party(s, "site") for s in SITES), party("researcher", "researcher")),
            datasets=dict.fromkeys(SITES, "tcga-brca"),
            approved_bundles=(),
            analytics=AnalyticsPolicy(allowed=("count",), rules={"min_cell": 15}),
            min_cohort=10,
            expires=dt.date(2099, 12, 31),
        )
    )
    path = tmp_path / "agreement.toml"
    write_agreement(path, draft)
    return path


def test_an_agreement_rehearsal_answers_what_it_allows_and_refuses_the_rest(
    tmp_path: Path,
) -> None:
    fed = load_tcga_brca()
    sites = {s: fed.sites[s] for s in SITES}
    agreement = _draft(tmp_path)
    query = Query.from_dict(
        {"kind": "count", "where": [{"column": "age_at_index", "op": ">=", "value": 70}]}
    )
    result = analyze(sites, query, agreement=agreement, secure=True)
    ages = np.concatenate(
        [QueryTable.from_site_data(d).column("age_at_index") for d in sites.values()]
    )
    assert result.to_dict()["count"] == int((ages >= 70).sum())
    with pytest.raises(AnalysisFailed) as refused:
        analyze(sites, Query("describe", {"columns": ["age_at_index"]}), agreement=agreement)
    assert "0 of 3 sites answered pass 1" in str(refused.value)
    assert "describe" in str(refused.value)
