"""Job files are validated before any site is contacted, with messages that say what to do."""

from __future__ import annotations

import pytest

from biofed.coordinator import JobSpec
from biofed.core import ConfigurationError

JOB = """
[run]
name = "tcga"
dataset = "tcga-brca"
rounds = 3
seed = 7
min_nodes = 4
min_replies = 3
round_timeout = 30

[task]
name = "cox_ph"
num_features = 39

[strategy]
name = "fedadam"
server_learning_rate = 0.3
tau = 0.01

[train]
local_steps = 100
batch_size = 8
learning_rate = 0.003
optimizer = "adam"
"""


def test_parse_and_canonical_round_trip() -> None:
    spec = JobSpec.from_toml(JOB)
    assert spec.strategy == "fedadam"
    assert spec.rounds == 3
    assert dict(spec.evaluate) == {"split": "test"}
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.to_json() == JobSpec.from_json(spec.to_json()).to_json()
    config = spec.instruction_config()
    assert config == {"task": "cox_ph", "dataset": "tcga-brca", "task.num_features": 39}
    strategy = spec.build_strategy()
    assert strategy.train_config["learning_rate"] == 0.003
    assert strategy.min_train_nodes == 3


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("[task]", "[tsak]"), "unknown section"),
        (lambda t: t.replace('name = "cox_ph"\n', ""), r"\[task\] name is required"),
        (lambda t: t.replace('dataset = "tcga-brca"\n', ""), r"\[run\] dataset is required"),
        (lambda t: t.replace("rounds = 3", "rounds = 0"), "rounds must be"),
        (lambda t: t.replace("min_replies = 3", "min_replies = 9"), "min_replies cannot exceed"),
        (lambda t: t.replace('name = "fedadam"', 'name = "fedmagic"'), r"\[strategy\] name must"),
        (lambda t: t.replace("tau = 0.01", "tau = -1.0"), r"tau must be a number in \(0, 10\]"),
        (lambda t: t.replace("tau = 0.01", "colour = 1"), r"unknown \[strategy\] key 'colour'"),
        (lambda t: t.replace("seed = 7", "seed = 7\nspeed = 1"), r"unknown \[run\] key"),
        (lambda t: t.replace('dataset = "tcga-brca"', 'dataset = "../etc"'), "dataset"),
        (lambda t: t + "\n[train.nested]\nx = 1\n", r"unknown \[train\] key 'nested'"),
        (lambda t: t.replace("[run]", "[run"), "not valid TOML"),
    ],
)
def test_bad_jobs_are_refused_with_a_clear_message(edit, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigurationError, match=match):
        JobSpec.from_toml(edit(JOB))


def test_json_form_must_be_an_object() -> None:
    with pytest.raises(ConfigurationError, match="JSON object"):
        JobSpec.from_json("[1, 2]")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        JobSpec.from_json("{")


def test_the_example_job_file_is_valid() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "job-tcga-fedadam.toml"
    spec = JobSpec.from_toml(path.read_text())
    assert spec.strategy == "fedadam"
    assert spec.min_nodes == 2  # the two sites the README provisions
    dp = JobSpec.from_toml((path.parent / "job-tcga-dp-secagg.toml").read_text())
    assert dp.privacy is not None
    assert dp.privacy.mode == "sample"
    assert dp.secure_aggregation is not None
    assert JobSpec.from_json(dp.to_json()) == dp


def test_secure_aggregation_is_refused_with_scaffold_or_a_single_reply() -> None:
    table = "\n[secure_aggregation]\nclip_range = 2.0\n"
    with pytest.raises(ConfigurationError, match="cannot run with"):
        JobSpec.from_toml(
            JOB.replace(
                'name = "fedadam"\nserver_learning_rate = 0.3\ntau = 0.01', 'name = "scaffold"'
            ).replace('optimizer = "adam"', 'optimizer = "sgd"')
            + table
        )
    with pytest.raises(ConfigurationError, match="min_replies >= 2"):
        JobSpec.from_toml(JOB.replace("min_replies = 3", "min_replies = 1") + table)
    with pytest.raises(ConfigurationError, match=r"unknown \[secure_aggregation\]"):
        JobSpec.from_toml(JOB + "\n[secure_aggregation]\nbits = 3\n")


# -- [privacy] ------------------------------------------------------------------------------
def test_privacy_sample_mode_travels_to_every_instruction() -> None:
    spec = JobSpec.from_toml(
        JOB + '\n[privacy]\nmode = "sample"\ntarget_epsilon = 8.0\ndelta = 1e-5\n'
        "max_grad_norm = 1.0\n"
    )
    assert spec.privacy is not None
    assert spec.privacy.rounds == 3
    config = spec.instruction_config()
    assert config["privacy.mode"] == "sample"
    assert config["privacy.target_epsilon"] == 8.0
    assert config["privacy.rounds"] == 3
    assert config["privacy.min_replies"] == 3
    again = JobSpec.from_json(spec.to_json())
    assert again == spec
    assert type(spec.build_strategy()).__name__ == "FedAdam"  # sample mode: sites do DP-SGD


def test_privacy_client_mode_wraps_the_strategy_in_dpfedavg() -> None:
    from biofed.strategies import DPFedAvg

    spec = JobSpec.from_toml(
        JOB + '\n[privacy]\nmode = "client"\nnoise_multiplier = 1.2\ndelta = 1e-5\n'
        'max_grad_norm = 0.5\nnoise = "distributed"\n'
    )
    strategy = spec.build_strategy()
    assert isinstance(strategy, DPFedAvg)
    assert strategy.noise == "distributed"
    assert strategy.clip_norm == 0.5
    assert type(strategy.inner).__name__ == "FedAdam"
    described = spec.privacy.describe() if spec.privacy else {}
    assert described["protects"] == "each site's participation"


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('mode = "sample"\ndelta = 1e-5\n', "exactly one of target_epsilon"),
        (
            'mode = "sample"\ndelta = 1e-5\ntarget_epsilon = 1.0\nnoise_multiplier = 1.0\n',
            "exactly one of",
        ),
        ('mode = "row"\ndelta = 1e-5\ntarget_epsilon = 1.0\n', "mode must be one of"),
        ('mode = "sample"\ndelta = 2.0\ntarget_epsilon = 1.0\n', "delta"),
        ('mode = "sample"\ntarget_epsilon = 1.0\n', "[privacy] delta is required"),
        ('mode = "sample"\ndelta = 1e-5\ntarget_epsilon = -1.0\n', "target_epsilon"),
        (
            'mode = "sample"\ndelta = 1e-5\ntarget_epsilon = 1.0\nnoise = "distributed"\n',
            "client mode only",
        ),
        ('mode = "sample"\ndelta = 1e-5\ntarget_epsilon = 1.0\nepsilon = 3\n', "unknown [privacy]"),
        ('mode = "client"\ndelta = 1e-5\ntarget_epsilon = 1.0\naccountant = "x"\n', "accountant"),
    ],
)
def test_bad_privacy_tables_are_refused(table: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[")):
        JobSpec.from_toml(JOB + "\n[privacy]\n" + table)


def test_sample_dp_refuses_batch_gradient_clipping() -> None:
    job = JOB.replace('optimizer = "adam"', 'optimizer = "adam"\nmax_grad_norm = 1.0')
    with pytest.raises(ConfigurationError, match="cannot be combined with sample-level DP"):
        JobSpec.from_toml(
            job + '\n[privacy]\nmode = "sample"\ndelta = 1e-5\ntarget_epsilon = 3.0\n'
        )
