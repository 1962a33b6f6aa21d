"""The README's "Federated statistics and exact regression" block works as written: a
Kaplan–Meier plot and page, an exact Cox model, a secure count and a secure histogram over
the bundled Fed-TCGA-BRCA — run unchanged as one ``set -e`` bash script in a temp folder
holding ``.venv`` (this interpreter's environment); the histogram equals numpy's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Federated statistics and exact regression"


def section_blocks(readme: str) -> list[str]:
    """The fenced ```bash blocks of the section, in order."""
    start = readme.index(SECTION)
    end = readme.find("\n## ", start + len(SECTION))
    text = readme[start : end if end != -1 else len(readme)]
    return re.findall(r"^```bash\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_analytics_block_runs_as_written(tmp_path: Path) -> None:
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file() or not (venv / "bin" / "biofed").is_file():
        pytest.skip("the block needs a virtual environment with biofed installed")
    blocks = section_blocks((ROOT / "README.md").read_text())
    assert len(blocks) == 1, "the analytics section lost its bash block"
    (tmp_path / ".venv").symlink_to(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("BIOFED_KIT", "VIRTUAL_ENV")}
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + blocks[0]],
        cwd=tmp_path,
        env={**env, "COLUMNS": "80"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "km.png").stat().st_size > 0
    assert "<svg" in (tmp_path / "km.html").read_text()
    assert "hazard ratio" in done.stdout  # the Cox table
    from biofed.datasets import load_tcga_brca

    ages = np.concatenate(
        [
            np.asarray(part.features[:, part.feature_names.index("age_at_index")], np.float64)
            for site in load_tcga_brca().sites.values()
            for part in (site.train, site.test)
            if part is not None
        ]
    )
    assert str(int((ages > 60).sum())) in done.stdout  # the secure count
    histogram = json.loads((tmp_path / "ages.json").read_text())
    edges = [20, 40, 50, 60, 70, 80, 90]
    assert histogram["counts"] == np.histogram(ages, bins=edges)[0].tolist()
