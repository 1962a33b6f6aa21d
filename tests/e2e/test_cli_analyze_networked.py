"""``biofed analyze … --kit KIT --dataset NAME`` against a real federation on loopback: the
coordinator and three TCGA-BRCA site nodes over mutual TLS; the command submits an
analysis job through the ControlService, follows its passes and prints the result — equal
to the same query simulated over the same sites' data — or, when the sites refuse, their
reason and exit code 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.analytics import Query
from biofed.cli import app
from biofed.datasets import load_tcga_brca
from biofed.simulation import analyze

from .conftest import wait_online

pytestmark = pytest.mark.slow

runner = CliRunner(env={"COLUMNS": "80"})
SITES = ["center-0", "center-1", "center-2"]


def test_analyze_against_a_federation(make_federation) -> None:  # type: ignore[no-untyped-def]
    fed = make_federation(sites=SITES)
    fed.start_coordinator()
    for site in SITES:
        fed.start_node(site)
    wait_online(fed.control(), SITES, timeout=60)
    base = ["--kit", str(fed.kit("researcher")), "--dataset", "tcga-brca", "--min-nodes", "3"]
    # the training rows: a node declares its training rows as the dataset's size, and the
    # coordinator caps a reply's records by it (a Cox answer over all rows is refused there:
    # "reply claims 311 queried examples, the node declared 248"; reported to the lead)
    base += ["--split", "train"]

    counted = runner.invoke(
        app, ["analyze", "count", *base, "--where", "age_at_index > 60", "--format", "json"]
    )
    assert counted.exit_code == 0, counted.output
    data = json.loads(counted.stdout)
    tcga = load_tcga_brca()
    ages = np.concatenate(
        [
            np.asarray(part.features[:, part.feature_names.index("age_at_index")], np.float64)
            for name in SITES
            for part in (tcga.sites[name].train,)
        ]
    )
    assert data == {"kind": "count", "count": int((ages > 60).sum()), "sites": 3, "dp": False}
    assert "pass 1 (count): 3 sites asked, 3 answered" in counted.stderr

    # a Cox model over the network equals the same query simulated over the same sites
    cox = ["--time", "time", "--event", "event", "--covariate", "age_at_index"]
    networked = runner.invoke(app, ["analyze", "cox", *base, *cox, "--format", "json"])
    assert networked.exit_code == 0, networked.output
    sub = {name: tcga.sites[name] for name in SITES}
    query = Query(
        kind="cox",
        options={"time": "time", "event": "event", "covariates": ["age_at_index"]},
        split="train",
    )
    simulated = analyze(sub, query).to_dict()
    got = json.loads(networked.stdout)
    assert np.allclose(got["coef"], simulated["coef"], atol=1e-10)
    assert got["records"] == simulated["records"]

    # the same query as an analysis job file, through `biofed run submit`
    job = fed.root / "analysis.toml"
    job.write_text(
        '[run]\nname = "older"\ndataset = "tcga-brca"\nmin_nodes = 3\nmin_replies = 3\n'
        '[analysis]\nkind = "count"\nsplit = "train"\n'
        '[[analysis.where]]\ncolumn = "age_at_index"\nop = ">"\nvalue = 60\n'
    )
    submitted = runner.invoke(
        app, ["run", "submit", str(job), "--kit", str(fed.kit("researcher")), "--follow"]
    )
    assert submitted.exit_code == 0, submitted.output
    assert "(a count query)" in submitted.stdout
    assert "analysis_result" in submitted.stdout

    # the sites refuse: exit 1, their reason once, nothing on stdout
    refused = runner.invoke(
        app, ["analyze", "cox", *base, *cox, "--records-per-parameter", "100000"]
    )
    assert refused.exit_code == 1, refused.output
    assert refused.stdout == ""
    assert "failed" in refused.stderr
    assert "records_per_parameter" in refused.stderr
