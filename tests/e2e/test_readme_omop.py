"""The README's "Hospital data: OMOP CDM sites and study specs" block works as written: it
splits Eunomia into site CDMs, registers and checks one, builds the heterogeneity report and
rehearses the GI-bleed study job — run unchanged as one ``set -e`` bash script in a temp
folder holding ``.venv`` (this interpreter's environment) and a copy of ``examples/``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Hospital data: OMOP CDM sites and study specs"


def section_blocks(readme: str) -> list[str]:
    """The fenced ```bash blocks of the section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    text = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_omop_block_runs_as_written(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "biofed").is_file():
        pytest.skip("the block needs a virtual environment with biofed installed")
    blocks = section_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 1, "the OMOP section lost its bash block"
    (tmp_path / ".venv").symlink_to(venv)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if k not in ("BIOFED_KIT", "VIRTUAL_ENV")}
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + blocks[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "cdm").iterdir()) == [
        "site-0.duckdb",
        "site-1.duckdb",
        "site-2.duckdb",
    ]
    quality = json.loads((tmp_path / "site-0-quality.json").read_text())
    assert quality, "the quality report is empty"
    html = (tmp_path / "heterogeneity.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert "roc_auc" in done.stdout  # the rehearsal's report names the study task's metric
    assert "age, sex=female" in done.stdout.replace("\n", " ")  # the features it used
