"""``biofed demo`` end to end: CA, coordinator and six node processes over mTLS, then a clean
shutdown (slow: about 25 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app

pytestmark = pytest.mark.slow


def test_demo_trains_over_the_network_and_shuts_down_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["demo", "--workdir", str(tmp_path), "--rounds", "2", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "finished"
    assert report["rounds"] == 2
    assert set(report["processes"].values()) == {0}
    assert len(report["processes"]) == 7
    sites = report["summary"]["evaluation"]["sites"]
    assert set(sites) == {f"center-{k}" for k in range(6)}
    assert all(0.0 <= s["c_index"] <= 1.0 for s in sites.values())
    # each site holds only its own region's file; keys are private
    for k in range(6):
        kit = tmp_path / "consortium" / f"center-{k}"
        assert (kit / "data" / "tcga-brca.csv").exists()
        assert (kit / "key.pem").stat().st_mode & 0o077 == 0
    assert (tmp_path / "state.db").exists()
