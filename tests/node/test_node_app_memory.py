"""A node serving datasets held in memory (a simulation's virtual sites) runs the same
handler as one reading node.toml's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind
from biofed.datasets import load_tcga_brca
from biofed.node import DatasetSource, NodeApp, NodeConfig
from biofed.tasks import CoxPHTask


def _train() -> Instruction:
    params = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    return Instruction(
        run_id="r",
        round=1,
        node_id="whoever",
        kind=MessageKind.TRAIN,
        parameters=params,
        config={
            "seed": 1,
            "local_steps": 5,
            "task": "cox_ph",
            "dataset": "tcga-brca",
            "task.num_features": 39,
        },
    )


def test_in_memory_dataset_is_served() -> None:
    site = load_tcga_brca().sites["center-1"]
    app = NodeApp("center-1", NodeConfig(datasets={}), data={"tcga-brca": site})
    assert app.declarations() == [("tcga-brca", len(site.train), 39)]
    reply = app.handle(_train())
    assert reply.ok, reply.error
    assert reply.num_examples == len(site.train)


def test_in_memory_dataset_cannot_shadow_a_file_dataset(tmp_path: Path) -> None:
    site = load_tcga_brca().sites["center-1"]
    config = NodeConfig(
        datasets={"tcga-brca": DatasetSource(name="tcga-brca", path=tmp_path / "x.csv")}
    )
    with pytest.raises(ConfigurationError, match=r"both in memory and in node\.toml"):
        NodeApp("center-1", config, data={"tcga-brca": site})


def test_in_memory_dataset_name_is_checked() -> None:
    site = load_tcga_brca().sites["center-1"]
    with pytest.raises(ConfigurationError, match="dataset name"):
        NodeApp("center-1", NodeConfig(datasets={}), data={"../etc": site})
