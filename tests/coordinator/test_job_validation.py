"""Every job field is validated at submit (issue 10, finding classes 1-3): one line per error
naming the field and what it may be, no traceback for any file content, the operator's
[limits] honoured, and the schema kept in step with the code it feeds."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from biofed.coordinator import Coordinator, InMemoryStateStore, JobLimits, JobSpec
from biofed.coordinator._job_schema import PRIVACY, SECURE_AGGREGATION, STRATEGY, TASK, TRAIN
from biofed.core import ConfigurationError
from biofed.privacy import DPSettings
from biofed.secagg._settings import SecureAggregationSettings
from biofed.strategies import STRATEGIES
from biofed.tasks import LocalTrainingConfig, make_task, parameter_spec
from biofed.transport.grpc import Peer

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
ALICE = Peer(name="alice", role="researcher")

JOB = """\
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

[evaluate]
split = "test"
"""
DP = '\n[privacy]\nmode = "sample"\ndelta = 1e-5\ntarget_epsilon = 8.0\n'
SECURE = "\n[secure_aggregation]\nclip_range = 2.0\n"


def sub(old: str, new: str, base: str = JOB) -> str:
    """``base`` with ``old`` replaced (which must be there: a typo must not pass silently)."""
    assert old in base, old
    return base.replace(old, new, 1)


def add(table: str, line: str) -> str:
    """``JOB`` with ``line`` added at the top of ``[table]``."""
    return sub(f"[{table}]\n", f"[{table}]\n{line}\n")


# (text of the job file, a fragment that the one-line error must contain)
INVALID: dict[str, tuple[str | bytes, str]] = {
    # -- finding 1 (the job-file half) and 2
    "evaluate_every=-1": (add("run", "evaluate_every = -1"), "[run] evaluate_every must be"),
    "num_features=3e9": (sub("num_features = 39", "num_features = 3000000000"), "max_model_bytes"),
    "rounds=1e12": (sub("rounds = 3", "rounds = 1000000000000"), "[run] rounds must be"),
    # -- finding 3
    "batch_size=0": (sub("batch_size = 8", "batch_size = 0"), "[train] batch_size must be"),
    "batch_size=-8": (sub("batch_size = 8", "batch_size = -8"), "[train] batch_size must be"),
    "learning_rate=-1": (sub("learning_rate = 0.003", "learning_rate = -1"), "learning_rate"),
    "learning_rate=1e300": (sub("learning_rate = 0.003", "learning_rate = 1e300"), "(0, 100]"),
    "num_features='39'": (sub("num_features = 39", 'num_features = "39"'), "[task] num_features"),
    "num_features=-1": (sub("num_features = 39", "num_features = -1"), "[task] num_features"),
    "optimizer=nope": (sub('optimizer = "adam"', 'optimizer = "nope"'), "[train] optimizer"),
    "unknown [train] key": (add("train", "colour = 1"), "unknown [train] key 'colour'"),
    "seed=true": (sub("seed = 7", "seed = true"), "[run] seed must be an integer"),
    "round_timeout=true": (sub("round_timeout = 30", "round_timeout = true"), "round_timeout"),
    "target_epsilon=1e-300": (
        JOB + DP.replace("8.0", "1e-300"),
        "[privacy] target_epsilon must be a number in [0.01, 1000]",
    ),
    "round_timeout='abc'": (sub("round_timeout = 30", 'round_timeout = "abc"'), "round_timeout"),
    "not UTF-8": (JOB.encode() + b"\n# caf\xe9\n", "not UTF-8 text"),
    "TOML nested 5000 arrays": ("a = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    "TOML nested 5000 tables": ("a = " + "{b = " * 5000 + "1" + "}" * 5000, "nested too deeply"),
    # -- [run]
    "rounds=0": (sub("rounds = 3", "rounds = 0"), "an integer from 1 to 2147483647, got 0"),
    "rounds=3.0": (sub("rounds = 3", "rounds = 3.0"), "[run] rounds must be an integer"),
    "rounds=true": (sub("rounds = 3", "rounds = true"), "got true"),
    "rounds=array": (sub("rounds = 3", "rounds = [1, 2]"), "got an array"),
    "rounds=date": (sub("rounds = 3", "rounds = 1979-05-27"), "got a date"),
    "rounds=5000 digits": (sub("rounds = 3", "rounds = " + "9" * 5000), "not valid TOML"),
    "seed=-1": (sub("seed = 7", "seed = -1"), "[run] seed"),
    "seed=2**64": (sub("seed = 7", f"seed = {2**64}"), "[run] seed"),
    "min_nodes=0": (sub("min_nodes = 4", "min_nodes = 0"), "[run] min_nodes"),
    "min_replies>min_nodes": (sub("min_replies = 3", "min_replies = 9"), "[run] min_replies"),
    "round_timeout=-1": (sub("round_timeout = 30", "round_timeout = -1"), "round_timeout"),
    "round_timeout=inf": (sub("round_timeout = 30", "round_timeout = inf"), "got inf"),
    "round_timeout=nan": (sub("round_timeout = 30", "round_timeout = nan"), "got nan"),
    "name too long": (sub('name = "tcga"', f'name = "{"n" * 120}"'), "[run] name"),
    "name with a path": (sub('name = "tcga"', 'name = "../etc"'), "[run] name"),
    "dataset empty": (sub('dataset = "tcga-brca"', 'dataset = ""'), "[run] dataset"),
    "dataset a number": (sub('dataset = "tcga-brca"', "dataset = 39"), "[run] dataset"),
    "bundle not a digest": (add("run", 'bundle = "xyz"'), "[run] bundle"),
    "agreement with a space": (add("run", 'agreement = "a b"'), "[run] agreement"),
    "unknown [run] key": (add("run", "speed = 1"), "unknown [run] key 'speed'"),
    "missing dataset": (sub('dataset = "tcga-brca"\n', ""), "[run] dataset is required"),
    # -- [task]
    "num_features=39.0": (sub("num_features = 39", "num_features = 39.0"), "[task] num_features"),
    "num_features=2**40": (sub("num_features = 39", f"num_features = {2**40}"), "num_features"),
    "task=mlp": (sub('name = "cox_ph"', 'name = "mlp"'), "[task] name must be one of"),
    "unknown [task] key": (add("task", "lr = 0.1"), "unknown [task] key 'lr' for cox_ph"),
    "l2 on cox_ph": (add("task", "l2 = 0.1"), "unknown [task] key 'l2'"),
    "device=cuda": (
        sub('name = "cox_ph"', 'name = "cox_ph_torch"\ndevice = "cuda"'),
        "[task] device",
    ),
    "missing num_features": (sub("num_features = 39\n", ""), "[task] num_features is required"),
    # -- [strategy]
    "strategy=nope": (sub('name = "fedadam"', 'name = "nope"'), "[strategy] name must be"),
    "tau=-1": (sub("tau = 0.01", "tau = -1.0"), "[strategy] tau"),
    "server_learning_rate=1e300": (
        sub("server_learning_rate = 0.3", "server_learning_rate = 1e300"),
        "[strategy] server_learning_rate",
    ),
    "unknown [strategy] key": (add("strategy", "colour = 1"), "unknown [strategy] key 'colour'"),
    "min_train_nodes": (add("strategy", "min_train_nodes = 1"), "[run] min_replies sets it"),
    "fraction_train=0": (add("strategy", "fraction_train = 0"), "[strategy] fraction_train"),
    "fedprox without mu": (
        sub('name = "fedadam"\nserver_learning_rate = 0.3\ntau = 0.01', 'name = "fedprox"'),
        "[strategy] proximal_mu is required",
    ),
    # -- [train]
    "learning_rate=0": (sub("learning_rate = 0.003", "learning_rate = 0"), "learning_rate"),
    "momentum=1": (add("train", "momentum = 1.0"), "[train] momentum"),
    "dp key in [train]": (add("train", "dp_noise_multiplier = 1.0"), "from [privacy]"),
    "seed in [train]": (add("train", "seed = 3"), "[run] seed sets it"),
    "dataset in [train]": (add("train", 'dataset = "other"'), "unknown [train] key 'dataset'"),
    "local_steps over the cap": (
        sub("local_steps = 100", "local_steps = 1000000000"),
        "[limits] max_local_steps",
    ),
    "nested [train] table": (JOB + "\n[train.nested]\nx = 1\n", "unknown [train] key 'nested'"),
    # -- [evaluate]
    "split=validation": (sub('split = "test"', 'split = "validation"'), "[evaluate] split"),
    "metrics=a;b": (add("evaluate", 'metrics = "a;b"'), "[evaluate] metrics"),
    "metrics too long": (
        add("evaluate", f'metrics = "{"m," * 600}m"'),
        "got a string of 1201 characters",
    ),
    "unknown [evaluate] key": (add("evaluate", "batch_size = 4"), "unknown [evaluate] key"),
    # -- [privacy]
    "delta=0": (JOB + DP.replace("1e-5", "0"), "[privacy] delta"),
    "mode=row": (JOB + DP.replace('"sample"', '"row"'), "[privacy] mode"),
    "noise_multiplier=nan": (
        JOB + DP.replace("target_epsilon = 8.0", "noise_multiplier = nan"),
        "[privacy] noise_multiplier",
    ),
    "unknown [privacy] key": (JOB + DP + "epsilon = 3\n", "unknown [privacy] key 'epsilon'"),
    # -- [secure_aggregation]
    "unknown [secure_aggregation] key": (JOB + SECURE + "bits = 3\n", "[secure_aggregation]"),
    "clip_range=-1": (JOB + SECURE.replace("2.0", "-1.0"), "[secure_aggregation] clip_range"),
    "secagg ring overflow": (
        JOB + SECURE.replace("2.0", "1e9") + "quantisation_step = 1e-9\n",
        "could wrap around",
    ),
    # -- the file's shape
    "unknown section": (JOB + "\n[tsak]\nx = 1\n", "unknown section [tsak]"),
    "[run] not a table": ("run = 3\n" + JOB[JOB.index("[task]") :], "[run] must be a table"),
    "TOML syntax": (sub("[run]", "[run"), "not valid TOML"),
    "NUL byte": (sub("seed = 7", "seed = 7\x00"), "not valid TOML"),
}


def _refused(text: str | bytes, limits: JobLimits | None = None) -> str:
    with pytest.raises(ConfigurationError) as caught:
        JobSpec.from_toml(text, limits=limits or JobLimits())
    return str(caught.value)


@pytest.mark.parametrize("case", sorted(INVALID))
def test_each_invalid_job_is_refused_with_one_line_naming_the_field(case: str) -> None:
    text, fragment = INVALID[case]
    message = _refused(text)
    assert "\n" not in message, message
    assert fragment in message, message
    assert len(message) < 400, message


def _as_json(text: str | bytes) -> str | None:
    """The JSON a client would send for a job file (None if TOML cannot parse it)."""
    try:
        data = tomllib.loads(text.decode() if isinstance(text, bytes) else text)
    except (ValueError, RecursionError):
        return None
    return json.dumps(data, default=str)


SUBMITTABLE = sorted(case for case, (text, _) in INVALID.items() if _as_json(text) is not None)


@pytest.mark.parametrize("case", SUBMITTABLE)
def test_the_coordinator_refuses_each_before_storing_anything(case: str) -> None:
    coordinator = Coordinator(InMemoryStateStore())  # runner not started
    text, _ = INVALID[case]
    spec_json = _as_json(text)
    assert spec_json is not None
    with pytest.raises(ConfigurationError) as caught:
        coordinator.submit_run(ALICE, spec_json)
    assert "\n" not in str(caught.value)
    assert coordinator.list_runs(ALICE) == []


@pytest.mark.parametrize(
    "spec_json",
    [
        "[" * 5000 + "]" * 5000,
        '{"run": ' * 5000 + "1" + "}" * 5000,
        '{"run": {"dataset": "d", "rounds": 1, "rounds": 1000000000000}}',
        '{"run": {"dataset": "d", "rounds": NaN}, "task": {"name": "cox_ph", "num_features": 3}}',
        '{"run": {"dataset": "d", "rounds": 1e999}, "task": {"name": "cox_ph", "num_features": 3}}',
        '{"run": {"dataset": "d", "rounds": 5.0}, "task": {"name": "cox_ph", "num_features": 3}}',
        '{"run": {"dataset": "\\ud800"}, "task": {"name": "cox_ph", "num_features": 3}}',
        '"a string"',
        "",
        "{" + " " * (1 << 20) + "}",
    ],
    ids=[
        "array 5000 deep",
        "object 5000 deep",
        "duplicate key",
        "NaN",
        "1e999",
        "5.0 rounds",
        "lone surrogate",
        "not an object",
        "empty",
        "over 1 MiB",
    ],
)
def test_json_at_the_coordinator_is_refused_in_one_line(spec_json: str) -> None:
    coordinator = Coordinator(InMemoryStateStore())
    with pytest.raises(ConfigurationError) as caught:
        coordinator.submit_run(ALICE, spec_json)
    assert "\n" not in str(caught.value), str(caught.value)
    assert coordinator.list_runs(ALICE) == []


def test_several_errors_give_one_line_each_naming_its_field() -> None:
    text = sub("rounds = 3", "rounds = 0")
    text = sub("seed = 7", "seed = true", text)
    text = sub("batch_size = 8", "batch_size = -8", text)
    text = sub("[train]\n", "[train]\ncolour = 1\n", text)
    lines = _refused(text).splitlines()
    assert len(lines) == 4, lines
    for fragment in ("[run] rounds", "[run] seed", "[train] batch_size", "[train] key 'colour'"):
        assert sum(fragment in line for line in lines) == 1, (fragment, lines)


def test_the_error_list_is_bounded() -> None:
    keys = "".join(f"k{i} = {i}\n" for i in range(500))
    message = _refused(sub("[train]\n", "[train]\n" + keys))
    lines = message.splitlines()
    assert len(lines) <= 21
    assert lines[-1] == f"… and {500 - len(lines) + 1} more errors"
    long_keys = "".join(f"{'k' * 40}{i} = {i}\n" for i in range(500))
    message = _refused(sub("[strategy]\n", "[strategy]\n" + long_keys))
    assert len(message) < 4500  # it travels in a gRPC status (8 KiB of metadata)


def test_an_empty_job_names_both_required_fields() -> None:
    lines = _refused("").splitlines()
    assert any(line.startswith("[run] dataset is required") for line in lines), lines
    assert any(line.startswith("[task] name is required") for line in lines), lines


def test_a_huge_model_is_refused_instantly_without_allocating_it() -> None:
    text = sub("num_features = 39", "num_features = 3000000000")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        message = _refused(text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 5_000_000, peak  # the model would be 12 GB
    assert "[task] num_features must be at most 268435455" in message
    assert "got 3000000000 (a model of 11.2 GiB)" in message
    # the largest allowed size is exactly the cap
    spec = JobSpec.from_toml(sub("num_features = 39", "num_features = 268435455"))
    assert JobLimits().check(spec) is spec


# -- what is accepted ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("job-*.toml")), ids=str)
def test_the_example_jobs_are_accepted_under_the_default_limits(path: Path) -> None:
    spec = JobSpec.from_file(path, limits=JobLimits())
    assert JobSpec.from_json(spec.to_json(), limits=JobLimits()) == spec


def test_the_demo_job_is_accepted() -> None:
    from biofed.cli._demo import _job

    governance = SimpleNamespace(agreement_id="brca-study", bundle="ab" * 32)
    spec = _job(5, "fedadam", governance)
    assert JobLimits().check(spec) is spec
    assert spec.evaluate["metrics"] == "c_index"


def test_values_are_normalised_and_round_trip() -> None:
    spec = JobSpec.from_toml(sub('name = "fedadam"', 'name = "FedAdam"'))
    assert spec.strategy == "fedadam"
    assert spec.round_timeout == 30.0
    assert isinstance(spec.round_timeout, float)
    spec = JobSpec.from_toml(sub("learning_rate = 0.003", "learning_rate = 1"))
    assert spec.train["learning_rate"] == 1.0
    assert isinstance(spec.train["learning_rate"], float)
    assert JobSpec.from_json(spec.to_json()) == spec


def test_direct_construction_is_checked_by_the_same_schema() -> None:
    spec = JobSpec.from_toml(JOB)
    with pytest.raises(ConfigurationError, match=r"\[run\] evaluate_every must be"):
        dataclasses.replace(spec, evaluate_every=-1)
    with pytest.raises(ConfigurationError, match=r"\[train\] batch_size must be"):
        dataclasses.replace(spec, train={"batch_size": 0})
    with pytest.raises(ConfigurationError, match=r"\[task\] options"):
        dataclasses.replace(spec, task_options={"name": "x", "num_features": 3})


# -- the operator's limits -----------------------------------------------------------------------
def test_limits_name_the_field_and_the_cap() -> None:
    limits = JobLimits(max_rounds=2, max_min_nodes=3, max_round_timeout=10.0, max_local_steps=50)
    spec = JobSpec.from_toml(sub("local_steps = 100\n", ""))
    lines = limits.errors(spec)
    assert lines == [
        "[run] rounds must be at most 2 on this coordinator ([limits] max_rounds), got 3",
        "[run] min_nodes must be at most 3 on this coordinator ([limits] max_min_nodes), got 4",
        "[run] round_timeout must be at most 10.0 on this coordinator ([limits] "
        "max_round_timeout), got 30.0",
        "[train] local_steps (default 100) must be at most 50 on this coordinator ([limits] "
        "max_local_steps), got 100",
    ]
    with pytest.raises(ConfigurationError) as caught:
        JobSpec.from_json(spec.to_json(), limits=limits)
    assert str(caught.value).splitlines() == lines


def _kit(tmp_path: Path, limits: str) -> Path:
    (tmp_path / "kit.toml").write_text(f'name = "coordinator"\nrole = "coordinator"\n{limits}')
    return tmp_path


def test_limits_are_read_from_the_kit(tmp_path: Path) -> None:
    assert JobLimits.from_kit(_kit(tmp_path, "")) == JobLimits()
    kit = _kit(tmp_path, "[limits]\nmax_rounds = 2\nmax_model_bytes = 100\nmax_round_timeout = 5\n")
    limits = JobLimits.from_kit(kit)
    assert limits == JobLimits(max_rounds=2, max_model_bytes=100, max_round_timeout=5.0)
    message = _refused(JOB, limits)
    assert "[limits] max_rounds" in message
    assert "[task] num_features must be at most 24 for cox_ph" in message  # 4 × (24 + 1) = 100
    coordinator = Coordinator(InMemoryStateStore(), limits=limits)
    with pytest.raises(ConfigurationError, match="max_round_timeout"):
        coordinator.submit_run(ALICE, JobSpec.from_toml(JOB).to_json())
    fits = sub("rounds = 3", "rounds = 2")
    fits = sub("round_timeout = 30", "round_timeout = 5", fits)
    fits = sub("num_features = 39", "num_features = 24", fits)
    run = coordinator.submit_run(ALICE, JobSpec.from_toml(fits).to_json())
    assert run.status == "pending"


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("[limits]\nmax_rounds = 0\n", "[limits] max_rounds must be an integer from 1"),
        ("[limits]\nmax_rounds = true\n", "[limits] max_rounds"),
        ("[limits]\nmax_round = 3\n", "unknown [limits] key 'max_round'"),
        ("[limits]\nmax_round_timeout = nan\n", "[limits] max_round_timeout"),
        ("limits = 3\n", "[limits] must be a table"),
        ("[limits\n", "not readable TOML"),
    ],
)
def test_bad_limits_refuse_to_start_with_one_line(
    tmp_path: Path, table: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        JobLimits.from_kit(_kit(tmp_path, table))
    assert "\n" not in str(caught.value)
    assert fragment in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_a_stored_run_stays_readable_when_the_limits_are_lowered() -> None:
    store = InMemoryStateStore()
    run = Coordinator(store).submit_run(ALICE, JobSpec.from_toml(JOB).to_json())
    stricter = Coordinator(store, limits=JobLimits(max_rounds=1, max_model_bytes=8))
    assert [r.run_id for r in stricter.list_runs(ALICE)] == [run.run_id]
    assert stricter.get_run(ALICE, run.run_id).total_rounds == 3


# -- the CLI --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe[run]\n",
        ("a = " + "[" * 5000 + "]" * 5000).encode(),
        b'[run]\nround_timeout = "abc"\n',
    ],
    ids=["not UTF-8", "nested 5000", "round_timeout=abc"],
)
def test_run_submit_prints_errors_and_no_traceback(tmp_path: Path, content: bytes) -> None:
    from typer.testing import CliRunner

    from biofed.cli import app

    job = tmp_path / "job.toml"
    job.write_bytes(content)
    result = CliRunner().invoke(app, ["run", "submit", str(job), "--kit", str(tmp_path / "no-kit")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ")
    assert isinstance(result.exception, SystemExit)


def test_run_submit_reads_a_valid_job_then_needs_a_kit(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from biofed.cli import app

    job = ROOT / "examples" / "job-tcga-fedadam.toml"
    result = CliRunner().invoke(app, ["run", "submit", str(job), "--kit", str(tmp_path / "none")])
    assert result.exit_code == 2, result.output
    assert "a biofed kit?" in " ".join(result.output.split())  # the job passed; no kit


def test_from_file_names_an_unreadable_or_oversized_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        JobSpec.from_file(tmp_path / "missing.toml")
    with pytest.raises(ConfigurationError, match="cannot read"):
        JobSpec.from_file(tmp_path)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigurationError, match="larger than 1048576 bytes"):
        JobSpec.from_file(big)


# -- the schema is the code's -------------------------------------------------------------------
def _keywords(cls: type) -> dict[str, object]:
    """Keyword parameters of a strategy's constructor chain, with their defaults."""
    out: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                out[p.name] = p.default
    for internal in ("train_config", "evaluate_config", "min_train_nodes"):
        out.pop(internal)
    return out


def _declared(fields: tuple[object, ...]) -> dict[str, object]:
    return {f.name: (inspect.Parameter.empty if f.required else f.default) for f in fields}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_options_are_the_constructor_keywords(name: str) -> None:
    declared = _declared(STRATEGY.fields_of(name))
    declared.pop("name")
    assert declared == _keywords(STRATEGIES[name])


@pytest.mark.parametrize("name", sorted(TASK.variants))
def test_task_options_are_the_constructor_arguments(name: str) -> None:
    from biofed.tasks._registry import _LAYOUTS

    declared = _declared(TASK.variants[name])
    signature = inspect.signature(_LAYOUTS[name]).parameters
    assert declared == {n: p.default for n, p in signature.items()}
    if not name.endswith("_torch"):
        built = inspect.signature(make_task.__globals__["BUILTIN_TASKS"][name]).parameters
        assert declared == {n: p.default for n, p in built.items()}


def test_train_keys_are_what_the_adapters_read() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(LocalTrainingConfig)}
    for key in ("dp_noise_multiplier", "dp_max_grad_norm", "dp_seeded"):
        defaults.pop(key)  # set by each site from [privacy], never by the job
    assert _declared(TRAIN.fields) == defaults


def test_privacy_and_secure_aggregation_keys_are_the_settings_fields() -> None:
    settings = {f.name: f.default for f in dataclasses.fields(DPSettings)}
    for run_level in ("rounds", "min_replies"):
        settings.pop(run_level)
    for key in ("mode", "delta"):
        settings[key] = inspect.Parameter.empty
    assert _declared(PRIVACY.fields) == settings
    secure = {f.name: f.default for f in dataclasses.fields(SecureAggregationSettings)}
    assert _declared(SECURE_AGGREGATION.fields) == secure


@pytest.mark.parametrize("name", sorted(TASK.variants))
def test_parameter_spec_is_the_built_model_layout(name: str) -> None:
    import numpy as np

    if name.endswith("_torch"):
        pytest.importorskip("torch")
    for init in ("zeros", "uniform"):
        built = make_task(name, num_features=7, init=init).init_parameters(np.random.default_rng(0))
        assert parameter_spec(name, num_features=7, init=init) == built.spec
    with pytest.raises(ConfigurationError):
        parameter_spec(name, num_features=7, colour=1)


def test_bounds_fit_the_wire_and_the_store() -> None:
    import sqlalchemy as sa

    from biofed.coordinator._job_schema import RUN
    from biofed.coordinator._store_sql import RUNS
    from biofed.transport.grpc._gen import federation_pb2 as pb

    uint32 = pb.RunInfo.DESCRIPTOR.fields_by_name["total_rounds"].type
    assert uint32 == pb.RunInfo.DESCRIPTOR.fields_by_name["total_rounds"].TYPE_UINT32
    rounds = next(f for f in RUN.fields if f.name == "rounds").rule
    assert rounds.hi <= 2**31 - 1  # PostgreSQL INTEGER, uint32 wire
    assert isinstance(RUNS.c.completed_rounds.type, sa.Integer)
    features = pb.DatasetInfo.DESCRIPTOR.fields_by_name["num_features"]
    assert features.type == features.TYPE_UINT32
    assert TASK.variants["cox_ph"][0].rule.hi == 2**32 - 1
    assert math.isfinite(next(f for f in RUN.fields if f.name == "round_timeout").rule.hi)


def test_the_committed_reference_is_up_to_date() -> None:
    page = ROOT / "docs" / "job-reference.md"
    assert page.read_text(encoding="utf-8") == JobSpec.reference(), (
        "docs/job-reference.md is out of date: run python scripts/gen_job_reference.py"
    )


def test_the_reference_documents_every_key() -> None:
    text = JobSpec.reference()
    for section in ("run", "task", "strategy", "train", "evaluate", "privacy", "limits"):
        assert f"## `[{section}]`" in text
    for key in ("evaluate_every", "num_features", "proximal_mu", "max_model_bytes", "metrics"):
        assert f"| `{key}` |" in text


_: Callable[..., object] = JobSpec.from_file  # the CLI's entry point stays public
