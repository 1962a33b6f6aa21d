"""``biofed coordinator start --dashboard``: off by default, loopback unless
``--dashboard-remote``, its URL and the login hint on stderr, and a login that works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.identity import Consortium, load_kit
from biofed.web import login_url, make_login_token


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return Consortium.create(
        tmp_path_factory.mktemp("coord-cli") / "fed",
        consortium="CLI Oncology",
        coordinator="127.0.0.1:50051",
        sites=["hosp-a"],
        researchers=["alice"],
    )


def test_a_dashboard_off_loopback_needs_dashboard_remote(fed: Consortium, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "coordinator",
            "start",
            "--kit",
            str(fed.kit_directory("coordinator")),
            "--listen",
            "127.0.0.1:0",
            "--state",
            f"sqlite:///{tmp_path / 'state.db'}",
            "--dashboard",
            "0.0.0.0:0",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "--dashboard-remote" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_the_coordinator_serves_its_dashboard_and_says_how_to_log_in(
    fed: Consortium, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "biofed",
            "coordinator",
            "start",
            "--kit",
            str(fed.kit_directory("coordinator")),
            "--listen",
            "127.0.0.1:0",
            "--state",
            f"sqlite:///{tmp_path / 'state.db'}",
            "--dashboard",
            "127.0.0.1:0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # ends when the process exits: never hangs on a crash
            lines.append(line)
            if line.startswith("dashboard on "):
                break
        said = "".join(lines)
        assert "biofed dashboard link --kit YOUR_KIT --url http://127.0.0.1:" in said, said
        url = lines[-1].split()[2].rstrip(";")
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as health:
            assert health.read() == b"ok"
        token = make_login_token(load_kit(fed.kit_directory("alice")))
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with browser.open(login_url(url, token), timeout=10) as page:
            assert "alice (researcher)" in page.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
