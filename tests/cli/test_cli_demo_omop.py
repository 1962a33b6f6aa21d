"""``biofed demo --data omop``: the GI-bleed study from raw OMOP CDMs over mTLS node
processes — each site registers and checks its CDM, the agreement approves the study spec by
digest, the preprocessing is fitted across the sites before round 1, and the federated
model's test ROC AUC is reported beside local-only and pooled models on the same tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.datasets import gi_bleed_study
from biofed.governance import DatasetRegistry, read_agreement

SITES = [f"site-{k}" for k in range(5)]


def test_an_unknown_data_choice_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(app, ["demo", "--data", "mimic"])
    assert result.exit_code == 2
    assert "--data must be tcga or omop" in result.output


@pytest.mark.slow
def test_the_omop_demo_trains_from_raw_cdms_and_compares_with_local_and_pooled(
    tmp_path: Path,
) -> None:
    result = CliRunner().invoke(
        app,
        ["demo", "--data", "omop", "--rounds", "3", "--format", "json", "--workdir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "finished"
    assert report["rounds"] == 3
    assert set(report["processes"].values()) == {0}

    spec = gi_bleed_study("binary")
    assert report["study"] == {"name": spec.name, "digest": spec.digest}
    agreement = read_agreement(Path(report["agreement"]["file"]))
    assert agreement.agreement.approved_studies == (spec.digest,)

    compare = report["comparison"]
    assert compare["features"][0] == "age"
    assert set(compare["sites"]) == set(SITES)
    for row in compare["sites"].values():
        assert row["train"] > 0
        assert row["test"] > 0
        for method in ("federated", "local", "pooled"):
            assert 0.0 <= row[method] <= 1.0
    means = {
        method: sum(r[method] for r in compare["sites"].values()) / len(SITES)
        for method in ("federated", "pooled")
    }
    # the federated model learns what the pooled one does (the signal is weak: ≈ 0.63)
    assert means["federated"] > 0.55
    assert math.isclose(means["federated"], means["pooled"], abs_tol=0.06)
    assert all(log["ok"] for log in report["audit"].values())
    assert report["audit"]["reconcile"]["ok"]

    consortium = tmp_path / "consortium"
    for site in SITES:
        entry = DatasetRegistry(consortium / site / "datasets.json").get("cdm")
        assert entry.quality is not None
        assert not [c for c in entry.quality.report.checks if c.fatal and not c.passed]
        audit = (consortium / site / "audit.jsonl").read_text()
        assert "dataset.quality_checked" in audit
        assert spec.digest in audit  # job.accepted names the study it compiled
