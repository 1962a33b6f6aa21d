"""The README's "A federation, step by step" works as written.

The test takes the fenced bash blocks of that section, unchanged but for the coordinator's
port in ``biofed provision init`` (a free one instead of 7443, so parallel runs do not
collide), and runs them in order as one bash script (``set -e``: the first failing command
fails the test) in a temp folder holding ``.venv`` (this interpreter's environment) and a
copy of ``examples/``. The README itself starts the coordinator and the nodes in the
background and waits for them with ``biofed sites --wait 2`` (an event: both sites online,
bounded), never a fixed sleep. Everything the script started is in its own process group,
stopped at the end (SIGTERM, then SIGKILL), whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biofed.coordinator import RunStatus, open_store
from biofed.core import decode_parameters

from .conftest import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## A federation, step by step"
ADDRESS = "127.0.0.1:7443"
TIMEOUT = 900.0  # about 3 minutes on an idle 2-core machine, 7 under heavy load


def section_blocks(readme: str) -> list[str]:
    """The fenced ```bash blocks of the walk-through section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    text = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def _stop_group(pgid: int) -> None:
    """SIGTERM the script's process group, wait (bounded) until it is gone, else SIGKILL."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "biofed").is_file():
        pytest.skip("the walk-through needs a virtual environment with biofed installed")
    blocks = section_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 3, "the walk-through section lost its bash blocks"
    script = "\n".join(blocks)
    assert script.count(ADDRESS) == 1, "only `biofed provision init` may name the address"
    assert re.search(r"provision init [^\n]*--coordinator " + re.escape(ADDRESS), script)
    script = script.replace(ADDRESS, f"127.0.0.1:{free_port()}")

    (tmp_path / ".venv").symlink_to(venv)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    log_path = tmp_path / "walkthrough.log"
    env = {k: v for k, v in os.environ.items() if k not in ("BIOFED_KIT", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            # each traced command with the script's elapsed time (PS4 is set in the script:
            # bash running as root ignores a PS4 from its environment)
            ["bash", "-c", "PS4='+ [${SECONDS}s] '\nset -eo pipefail -x\n" + script],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: background jobs included
        )
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _stop_group(proc.pid)
            proc.wait(timeout=10)

    output = log_path.read_text(errors="replace")

    def logs() -> str:
        parts = [f"--- walkthrough ---\n{output[-6000:]}"]
        for name in ("coordinator.log", "hospital-a.log", "hospital-b.log"):
            path = tmp_path / name
            if path.is_file():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    assert code == 0, f"the walk-through stopped (exit {code}):\n{logs()}"
    # what the commands should have produced, read back from the files they wrote
    for shown in ("hospital-a", "hospital-b", "tcga-brca (248)", "in force"):
        assert shown in output, shown
    model = decode_parameters((tmp_path / "model.safetensors").read_bytes())
    assert model, "the downloaded model is empty"
    store = open_store(f"sqlite:///{tmp_path / 'consortium' / 'coordinator' / 'state.db'}")
    try:
        runs = store.list_runs()
        assert len(runs) == 3, logs()
        assert {r.owner for r in runs} == {"alice"}
        assert all(r.status is RunStatus.FINISHED for r in runs), [
            (r.run_id, r.status, r.error) for r in runs
        ]
    finally:
        store.close()
