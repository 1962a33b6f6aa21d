"""Virtual sites keep their privacy ledgers in memory unless a ledger folder is given: a
rehearsal writes no budget file anywhere (not the real site's ledger either)."""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.datasets import load_tcga_brca
from biofed.node import MEMORY_LEDGER, NodeConfig, PrivacyConfig
from biofed.simulation import build_node
from biofed.simulation._job_sites import site_recipes


def _capped(epsilon: float) -> NodeConfig:
    return NodeConfig(
        datasets={},
        privacy=PrivacyConfig(caps={"tcga-brca": (epsilon, 1e-5)}, ledger=Path("real.db")),
    )


def test_default_ledgers_are_in_memory_and_a_node_configs_file_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    fed = load_tcga_brca()
    recipes = site_recipes(
        fed,
        "tcga-brca",
        workdir=tmp_path / "work",
        needs_kits=False,
        node_configs={"center-0": _capped(3.0)},
    )
    capped = next(r for r in recipes if r.node_id == "center-0")
    assert capped.node_config is not None
    assert capped.node_config.privacy is not None
    assert capped.node_config.privacy.ledger == MEMORY_LEDGER
    node = build_node(capped)
    ledger = node.privacy.ledger
    assert ledger is not None
    assert ledger.is_in_memory
    assert not list(tmp_path.rglob("*.db"))  # nothing on disk, not the real site's file


def test_ledger_dir_keeps_files(tmp_path: Path) -> None:
    fed = load_tcga_brca()
    recipes = site_recipes(
        fed,
        "tcga-brca",
        workdir=tmp_path / "work",
        needs_kits=False,
        node_configs={"center-0": _capped(3.0)},
        ledger_dir=tmp_path / "ledgers",
    )
    capped = next(r for r in recipes if r.node_id == "center-0")
    assert capped.node_config is not None
    assert capped.node_config.privacy is not None
    assert capped.node_config.privacy.ledger == tmp_path / "ledgers" / "center-0.db"
