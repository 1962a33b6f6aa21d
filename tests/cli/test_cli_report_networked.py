"""``biofed report heterogeneity RUN_ID --kit KIT``: a run's data summaries, read through the
real control API over mutual TLS, give the same report as the summaries themselves."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.cli._report import summaries_from_json
from biofed.coordinator import JobSpec, serve_coordinator
from biofed.core import DataError
from biofed.data import NumericStats, SiteSummary, heterogeneity_report
from biofed.identity import Consortium

runner = CliRunner(env={"COLUMNS": "80"})
K = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _summaries() -> dict[str, SiteSummary]:
    """Three sites' final-pass summaries; site-b's age moved by 2 sd, site-c with 4 missing."""
    rng = np.random.default_rng(0)
    edges = tuple(float(e) for e in np.linspace(20, 100, 33))
    out = {}
    for site, shift in (("site-a", 0.0), ("site-b", 20.0), ("site-c", 0.0), ("site-d", 0.0)):
        age = rng.normal(60, 10, 500) + shift
        if site == "site-c":
            age[:4] = np.nan
        out[site] = SiteSummary(
            records=500,
            outcome={"n": 500.0, "positives": float((rng.random(500) < 0.2).sum())},
            numeric={"age": NumericStats.of(age, edges)},
            categorical={"sex": {"female": 251, "male": 240, "other": 9}},
            suppressed={"sex": 1},
        )
    return out


def _event_json(summaries: dict[str, SiteSummary]) -> str:
    """As the preprocessing phase stores it: {site: {array name: list}}."""
    return json.dumps(
        {s: {k: v.tolist() for k, v in x.to_arrays().items()} for s, x in summaries.items()}
    )


def test_the_event_parses_back_to_the_same_summaries() -> None:
    summaries = _summaries()
    assert summaries_from_json(_event_json(summaries)) == summaries


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1]", "must map each site to its arrays"),
        ("{nope", "not JSON"),
        ('{"a": {"records": "x"}}', "site 'a': array 'records' is not numeric"),
        ('{"a": {"records": 5, "numeric/age/n": -1}}', "site 'a'"),
        ('{"a": {"records": 5, "evil": 1}}', "unknown array"),
        ('{"../a": {"records": 5}}', "site name"),
    ],
)
def test_a_hostile_event_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises((DataError, ValueError), match=message):
        summaries_from_json(text)


@pytest.mark.slow
def test_networked_report_reads_the_runs_summaries(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    consortium = Consortium.create(
        tmp_path / "consortium",
        consortium="hetero",
        coordinator=address,
        sites=["site-a"],
        researchers=["alice"],
    )
    running = serve_coordinator(
        consortium.kit_directory("coordinator"),
        listen=address,
        state=f"sqlite:///{tmp_path / 'state.db'}",
        node_wait=600.0,
    )
    try:
        job = JobSpec.from_mapping(
            {
                "run": {"name": "t", "dataset": "ds", "rounds": 1, "seed": 1},
                "task": {"name": "cox_ph", "num_features": 3},
                "strategy": {"name": "fedavg"},
                "train": {"local_steps": 1},
            }
        )
        from biofed.coordinator import tls_of
        from biofed.identity import load_kit
        from biofed.transport.grpc import ControlClient

        alice = consortium.kit_directory("alice")
        with ControlClient(address, tls_of(load_kit(alice))) as client:
            run_id = client.submit_run(job.to_json()).run_id
        summaries = _summaries()
        args = ["report", "heterogeneity", run_id, "--kit", str(alice), "--min-cell", str(K)]
        missing = runner.invoke(app, args)
        assert missing.exit_code == 2
        assert "has no data summaries" in missing.output
        running.store.append_event(
            run_id, round=0, kind="data_summaries", message=_event_json(summaries)
        )
        result = runner.invoke(app, [*args, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == heterogeneity_report(summaries, min_cell=K).to_json()
        flagged = {
            (f["site"], f["feature"], f["measure"])
            for f in json.loads(result.stdout)["findings"]
            if f["flagged"]
        }
        assert flagged == {("site-b", "age", m) for m in ("smd", "wasserstein", "ks")}
        table = runner.invoke(app, [*args, "--html", str(tmp_path / "r.html")])
        assert table.exit_code == 0, table.output
        assert "⚑" in table.stdout
        assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    finally:
        running.stop()
