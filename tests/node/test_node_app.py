"""A node's node.toml and its handler: only its own datasets, the task the instruction names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind
from biofed.data import write_site_files
from biofed.datasets import load_tcga_brca
from biofed.node import NodeApp, NodeConfig
from biofed.tasks import CoxPHTask


@pytest.fixture
def node_toml(tmp_path: Path) -> Path:
    paths = write_site_files(load_tcga_brca(), tmp_path / "data")
    config = tmp_path / "node.toml"
    rel = paths["center-1"].relative_to(tmp_path)
    config.write_text(
        f'[datasets.tcga-brca]\npath = "{rel}"\nformat = "csv"\nsplit_column = "split"\n'
        'targets = { event = "event", time = "time" }\n'
    )
    return config


def _inst(config: dict[str, object], kind: MessageKind = MessageKind.TRAIN) -> Instruction:
    params = CoxPHTask(num_features=39).init_parameters(np.random.default_rng(0))
    return Instruction(
        run_id="r",
        round=1,
        node_id="whoever",
        kind=kind,
        parameters=params,
        config={"seed": 1, "local_steps": 5, **config},
    )  # type: ignore[dict-item]


def test_node_runs_the_named_task_on_its_own_dataset(node_toml: Path) -> None:
    app = NodeApp("center-1", NodeConfig.from_toml(node_toml))
    assert app.declarations() == [("tcga-brca", 156, 39)]
    reply = app.handle(_inst({"task": "cox_ph", "dataset": "tcga-brca", "task.num_features": 39}))
    assert reply.ok, reply.error
    assert reply.node_id == "center-1"  # its own identity, whatever the message said
    assert reply.num_examples == 156
    evaluation = app.handle(
        _inst(
            {"task": "cox_ph", "dataset": "tcga-brca", "task.num_features": 39, "split": "test"},
            MessageKind.EVALUATE,
        )
    )
    assert evaluation.ok
    assert evaluation.num_examples == 40


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (
            {"task": "cox_ph", "dataset": "someone-elses", "task.num_features": 39},
            "policy: this site holds no dataset",
        ),
        ({"task": "rm -rf", "dataset": "tcga-brca"}, "configuration: unknown task"),
        ({"task": "cox_ph", "dataset": "tcga-brca", "task.num_features": 12}, "parameter"),
    ],
)
def test_refusals_are_error_replies(node_toml: Path, config: dict[str, object], match: str) -> None:
    app = NodeApp("center-1", NodeConfig.from_toml(node_toml))
    reply = app.handle(_inst(config))
    assert reply.error is not None
    assert match in reply.error


def test_node_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        NodeConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[datasets.x]\nformat = 'csv'\n")
    with pytest.raises(ConfigurationError, match="needs path"):
        NodeConfig.from_toml(bad)
    bad.write_text("[datasets.x]\npath = 'a.csv'\ncolour = 1\n")
    with pytest.raises(ConfigurationError, match="unknown key"):
        NodeConfig.from_toml(bad)
    bad.write_text("[nodes]\n")
    with pytest.raises(ConfigurationError, match="unknown section"):
        NodeConfig.from_toml(bad)


def test_task_modules_from_the_sites_own_folders(node_toml: Path, tmp_path: Path) -> None:
    """A site's own task modules run in the sandboxed worker, never in the node process."""
    folder = tmp_path / "site_tasks"
    folder.mkdir()
    (folder / "my_cox.py").write_text(
        "from biofed.tasks import CoxPHTask\n\n"
        "def make_task(num_features):\n"
        "    return CoxPHTask(num_features=num_features)\n"
    )
    (folder / "broken.py").write_text("make_task = 3\n")
    node_toml.write_text('[node]\ntask_dirs = ["site_tasks"]\n' + node_toml.read_text())
    app = NodeApp("center-1", NodeConfig.from_toml(node_toml))
    reply = app.handle(_inst({"task": "my_cox", "dataset": "tcga-brca", "task.num_features": 39}))
    assert reply.ok, reply.error
    for name, match in (
        ("broken", "task: task bundle code raised"),  # in the sandboxed worker
        ("absent", "not in this site's"),
        ("../evil", "not a module name"),
    ):
        bad = app.handle(_inst({"task": name, "dataset": "tcga-brca"}))
        assert bad.error is not None
        assert match in bad.error


def test_the_node_process_never_imports_task_code(node_toml: Path, tmp_path: Path) -> None:
    import sys

    folder = tmp_path / "site_tasks"
    folder.mkdir(exist_ok=True)
    (folder / "marker_task.py").write_text(
        "import sys\nsys.modules['biofed_marker_imported'] = sys\n"
        "from biofed.tasks import CoxPHTask\n\n"
        "def make_task(num_features):\n    return CoxPHTask(num_features=num_features)\n"
    )
    node_toml.write_text('[node]\ntask_dirs = ["site_tasks"]\n' + node_toml.read_text())
    app = NodeApp("center-1", NodeConfig.from_toml(node_toml))
    reply = app.handle(
        _inst({"task": "marker_task", "dataset": "tcga-brca", "task.num_features": 39})
    )
    assert reply.ok, reply.error
    assert "biofed_marker_imported" not in sys.modules


# -- sample-level DP at an ungoverned node ------------------------------------------------
def _sample_dp(**settings: object) -> dict[str, object]:
    from biofed.privacy import DPSettings

    table = {"mode": "sample", "delta": 1e-5, "target_epsilon": 8.0, "max_grad_norm": 1.0}
    table.update(settings)
    dp = DPSettings.from_table(table, rounds=5, min_replies=1)
    return {
        "task": "cox_ph_torch",
        "task.num_features": 39,
        "dataset": "tcga-brca",
        "batch_size": 16,
        **dp.to_config(),
    }


@pytest.fixture
def heuristic_toml(node_toml: Path) -> Path:
    """A development node whose operator accepts heuristic ε figures (cox_ph_torch couples
    the records of a batch through its risk sets and declares no per-record bound)."""
    node_toml.write_text(node_toml.read_text() + "\n[privacy]\nallow_heuristic = true\n")
    return node_toml


def test_a_development_node_refuses_sample_dp_for_a_task_without_a_guarantee(
    node_toml: Path,
) -> None:
    app = NodeApp("center-1", NodeConfig.from_toml(node_toml))
    reply = app.handle(_inst(_sample_dp()))
    assert reply.error is not None
    assert "sample-level DP refused" in reply.error
    assert 'dp_record_coupling = "none"' in reply.error


def test_sample_dp_runs_dp_sgd_with_the_nodes_own_calibration(heuristic_toml: Path) -> None:
    from biofed.privacy import GUARANTEE_METRIC, RdpAccountant, calibrate_noise, guarantee_label

    app = NodeApp("center-1", NodeConfig.from_toml(heuristic_toml))
    reply = app.handle(_inst(_sample_dp()))
    assert reply.ok, reply.error
    q = 16 / 156  # the node's own N for center-1's training split
    z = calibrate_noise(8.0, 1e-5, q, 5 * 5, "rdp")
    assert reply.metrics["dp_noise_multiplier"] == pytest.approx(z)
    assert reply.metrics["dp_secure"] == 1.0
    one_round = RdpAccountant()
    one_round.step(z, q, 5)
    assert reply.metrics["dp.epsilon"] == pytest.approx(one_round.epsilon(1e-5))
    assert guarantee_label(reply.metrics[GUARANTEE_METRIC]) == "heuristic"
    second = app.handle(dataclasses_replace_round(_inst(_sample_dp()), 2))
    assert second.metrics["dp.epsilon"] > reply.metrics["dp.epsilon"]  # composed in memory


def dataclasses_replace_round(instruction: Instruction, server_round: int) -> Instruction:
    import dataclasses

    return dataclasses.replace(instruction, round=server_round)


def test_the_coordinator_cannot_weaken_dp_sgd_through_task_keys(heuristic_toml: Path) -> None:
    """dp_* task keys in the instruction are the node's to set: a coordinator asking for
    seeded (predictable) noise or a tiny multiplier is overridden."""
    app = NodeApp("center-1", NodeConfig.from_toml(heuristic_toml))
    config = {**_sample_dp(), "dp_seeded": True, "dp_noise_multiplier": 1e-6}
    reply = app.handle(_inst(config))
    assert reply.ok, reply.error
    assert reply.metrics["dp_secure"] == 1.0
    assert reply.metrics["dp_noise_multiplier"] > 0.5  # the calibrated z (0.77), not 1e-6


def test_sample_dp_with_a_numpy_task_is_refused(heuristic_toml: Path) -> None:
    app = NodeApp("center-1", NodeConfig.from_toml(heuristic_toml))
    reply = app.handle(_inst({**_sample_dp(), "task": "cox_ph"}))
    assert reply.error is not None
    assert "TorchTask" in reply.error
