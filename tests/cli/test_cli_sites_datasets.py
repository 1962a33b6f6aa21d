"""``biofed datasets export``, ``biofed sites`` and ``--coordinator`` on the run commands."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.coordinator import RunningCoordinator, serve_coordinator
from biofed.data import load_site_file
from biofed.datasets import load_tcga_brca
from biofed.identity import Consortium

runner = CliRunner(env={"COLUMNS": "200"})
TARGETS = {"event": "event", "time": "time"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_one_sites_rows_for_its_node_toml(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / "kit" / "data" / f"tcga-brca{suffix}"
    result = runner.invoke(
        app, ["datasets", "export", "tcga-brca", "--site", "center-3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    written = load_site_file(out, target_columns=TARGETS)
    expected = load_tcga_brca().sites["center-3"]
    assert len(written.train) == len(expected.train)
    assert written.test is not None
    assert expected.test is not None
    assert len(written.test) == len(expected.test)
    assert written.train.features.shape[1] == 39
    assert list(out.parent.iterdir()) == [out]  # nothing else left behind


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tcga-brca", "--site", "center-9"], "has no site 'center-9'"),
        (["nope", "--site", "center-0"], "no bundled dataset 'nope'"),
    ],
)
def test_export_refuses_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["datasets", "export", *args, "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    bad = runner.invoke(
        app, ["datasets", "export", "tcga-brca", "--site", "center-0", "--out", "x.txt"]
    )
    assert bad.exit_code == 2
    assert "must end in .csv or .parquet" in bad.output


def test_list_shows_the_bundled_sites() -> None:
    result = runner.invoke(app, ["datasets", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["site"] for r in rows] == [f"center-{k}" for k in range(6)]
    assert sum(r["train"] + r["test"] for r in rows) == 1088


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A coordinator whose kits name a host that does not resolve (``coord.invalid``), served
    on 127.0.0.2, an address its certificate does not name (it names coord.invalid, localhost
    and 127.0.0.1): only ``--coordinator 127.0.0.2:PORT`` reaches it, and only because TLS
    still checks the certificate for the kit's host name."""
    port = _free_port()
    folder = tmp_path / "consortium"
    Consortium.create(
        folder,
        consortium="t",
        coordinator=f"coord.invalid:{port}",
        sites=["a"],
        researchers=["alice"],
    )
    running: RunningCoordinator = serve_coordinator(
        folder / "coordinator",
        listen=f"127.0.0.2:{port}",
        state=f"sqlite:///{tmp_path / 'state.db'}",
    )
    try:
        yield folder, f"127.0.0.2:{port}"
    finally:
        running.stop()


def test_coordinator_option_dials_another_address_and_still_checks_its_name(
    remote: tuple[Path, str],
) -> None:
    folder, address = remote
    kit = ["--kit", str(folder / "alice"), "--coordinator", address]
    for command in (["sites"], ["run", "status"]):
        result = runner.invoke(app, [*command, *kit, "--format", "json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output) == []
    refused = runner.invoke(app, ["run", "logs", "e2e-00000000", *kit])
    assert refused.exit_code == 2
    assert "no run with that id is visible to you" in refused.output
    waited = runner.invoke(app, ["sites", *kit, "--wait", "1", "--timeout", "0.5"])
    assert waited.exit_code == 2
    assert "0 of 1 sites online" in waited.output


@pytest.mark.parametrize("address", ["nonsense", "host:99999", ":7443"])
def test_a_malformed_coordinator_address_is_one_line(
    remote: tuple[Path, str], address: str
) -> None:
    folder, _ = remote
    result = runner.invoke(
        app, ["run", "status", "--kit", str(folder / "alice"), "--coordinator", address]
    )
    assert result.exit_code == 2
    assert "--coordinator must look like HOST:PORT" in result.output
