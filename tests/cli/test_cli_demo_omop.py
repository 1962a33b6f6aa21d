"""``biofed demo --data omop``: the GI-bleed study from raw OMOP CDMs over mTLS node
processes — each site registers and checks its CDM, the agreement approves the study spec by
digest, the preprocessing is fitted across the sites before round 1, and the federated
model's test ROC AUC is reported beside local-only and pooled models on the same tables.

The demo runs once for the module, with ``--format json``: stdout is one JSON document, and
the summary a person would read is rendered from it at 80 columns."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._demo_summary import print_summary
from biofed.datasets import gi_bleed_study
from biofed.governance import DatasetRegistry, read_agreement

SITES = [f"site-{k}" for k in range(5)]


@dataclass(frozen=True)
class Demo:
    workdir: Path
    report: dict[str, Any]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    workdir = tmp_path_factory.mktemp("omop")
    result = CliRunner().invoke(
        app,
        ["demo", "--data", "omop", "--rounds", "3", "--format", "json", "--workdir", str(workdir)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the whole of stdout: one JSON document
    assert json.loads((workdir / "demo.json").read_text()) == report
    return Demo(workdir, report)


def test_an_unknown_data_choice_is_refused_in_one_line() -> None:
    result = CliRunner().invoke(app, ["demo", "--data", "mimic"])
    assert result.exit_code == 2
    assert "--data must be tcga or omop" in result.output


@pytest.mark.slow
def test_the_omop_demo_trains_from_raw_cdms_and_compares_with_local_and_pooled(
    demo: Demo,
) -> None:
    report = demo.report
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

    consortium = demo.workdir / "consortium"
    for site in SITES:
        entry = DatasetRegistry(consortium / site / "datasets.json").get("cdm")
        assert entry.quality is not None
        assert not [c for c in entry.quality.report.checks if c.fatal and not c.passed]
        audit = (consortium / site / "audit.jsonl").read_text()
        assert "dataset.quality_checked" in audit
        assert spec.digest in audit  # job.accepted names the study it compiled


@pytest.mark.slow
def test_the_omop_summary_fits_80_columns_with_every_id_whole(demo: Demo) -> None:
    report = demo.report
    console = Console(width=80, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    print_summary(
        console,
        report,
        data="omop",
        sites=SITES,
        rounds=3,
        strategy="fedavg",
        kept=None,
    )
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert lines[0].startswith("biofed demo: finished · 3 of 3 rounds · 5 sites")
    assert f"run id     {report['run_id']}" in text
    assert f"study spec {report['study']['digest']}" in text
    assert f"bundle     {report['bundle']}" in text
    for site in SITES:
        row = next(line for line in lines if line.startswith(site)).split()
        values = report["comparison"]["sites"][site]
        assert row[1] == f"{values['train']}/{values['test']}"
        assert row[2:5] == [f"{values[k]:.4f}" for k in ("federated", "local", "pooled")]
    assert "no DP" in text
    # the folder was not kept: the hint says how to keep it next time
    hint = text[text.index("What next") :]
    assert "`biofed demo --data omop --keep`" in hint
    assert "$ biofed run status --kit consortium/researcher" in hint
