"""The documentation site builds with ``mkdocs build --strict``, as CI builds it: every page
in the nav, every relative link and anchor resolving, every API page rendered from the
docstrings. Offline: the theme loads no web fonts and no plugin downloads anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    if not MKDOCS.is_file():
        pytest.fail(f"{MKDOCS} is missing: install the docs extra (pip install -e '.[docs]')")
    site = tmp_path / "site"
    done = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # material's end-of-life banner
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (site / "index.html").is_file()
    assert (site / "reference" / "node-toml" / "index.html").is_file()
    api = (site / "reference" / "api" / "governance" / "index.html").read_text(encoding="utf-8")
    assert "StudyAgreement" in api  # mkdocstrings rendered the package's public names
    # nothing fetched from the network when the pages load
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in home
