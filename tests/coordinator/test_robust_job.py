"""The job file's ``[robust]`` table and the coordinator's trusted data (issue 15): valid
tables build the Robust wrapper, every refusal is one line naming the keys, trusted data is
an operator-registered file that must fit the job's task, and a job naming an unknown or
unfitting trusted dataset is refused at submit before anything is stored."""

from __future__ import annotations

import dataclasses
import inspect
import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from biofed.coordinator import (
    Coordinator,
    InMemoryStateStore,
    JobSpec,
    TrustedData,
    trusted_data_from_kit,
)
from biofed.coordinator._job_schema import ROBUST, SINGLE_UPDATE_AGGREGATORS, STRATEGY
from biofed.coordinator._trusted import TASK_TARGETS
from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.data import Dataset, FederatedDataset, SiteData
from biofed.datasets import load_tcga_brca
from biofed.simulation import TamperingBackend, simulate
from biofed.strategies import ROBUST_AGGREGATORS, FedAvg, Robust, UpdateValidation
from biofed.tasks import BUILTIN_TASKS
from biofed.transport.grpc import Peer

ALICE = Peer(name="alice", role="researcher")
RUN = {"dataset": "tcga-brca", "min_nodes": 6, "min_replies": 4}
TASK = {"name": "cox_ph", "num_features": 39}
VALIDATED = {"validation": True, "trusted_dataset": "tcga-reference"}


def job(robust: dict[str, Any] | None, **tables: Any) -> JobSpec:
    data: dict[str, Any] = {"run": dict(RUN), "task": dict(TASK), **tables}
    if robust is not None:
        data["robust"] = robust
    return JobSpec.from_mapping(data)


@cache
def held_out() -> tuple[FederatedDataset, Dataset]:
    """The six TCGA-BRCA sites keeping the even rows of their test split, and the trusted
    set held out from them: the odd rows of every site's test split (109 patients)."""
    fed = load_tcga_brca()
    sites, trusted = {}, []
    for name, data in fed.sites.items():
        assert data.test is not None
        rows = np.arange(len(data.test))
        sites[name] = SiteData(train=data.train, test=data.test.subset(rows[rows % 2 == 0]))
        trusted.append(data.test.subset(rows[rows % 2 == 1]))
    return FederatedDataset(name=fed.name, sites=sites), Dataset.concat(trusted, name="trusted")


def trusted_rows() -> Dataset:
    return held_out()[1]


def write_table(path: Path, data: Dataset, *, drop: tuple[str, ...] = (), **extra: Any) -> Path:
    columns: dict[str, Any] = {n: data.features[:, j] for j, n in enumerate(data.feature_names)}
    columns.update({k: np.asarray(v) for k, v in data.targets.items()})
    for name in drop:
        columns.pop(name)
    columns.update(extra)
    pacsv.write_csv(pa.table(columns), path)
    return path


def flip_boosted(instruction: Instruction, reply: Reply) -> Reply:
    """center-0's lie: ``x − 10·(xᵢ − x)`` instead of its trained model."""
    if instruction.kind is not MessageKind.TRAIN or reply.parameters is None:
        return reply
    x, honest = instruction.parameters, reply.parameters
    assert x is not None
    lie = {k: (x[k] - 10.0 * (honest[k] - x[k])).astype(x[k].dtype) for k in x}
    return dataclasses.replace(reply, parameters=ParameterSet(lie))


# -- parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "robust",
    [
        {"aggregator": "median"},
        {"aggregator": "trimmed_mean", "trim": 0.2},
        {"aggregator": "trimmed_mean", "f": 1},
        {"aggregator": "krum", "f": 1},
        {"aggregator": "multi_krum", "f": 1, "multi_krum_m": 3},
        {"aggregator": "geometric_median", "gm_iters": 50, "gm_eps": 1e-6},
        {"aggregator": "centered_clipping", "cc_tau": 2.0, "cc_iters": 3},
        {"aggregator": "norm_bound", "norm_bound": 1.5},
        {"aggregator": "median", "norm_bound": 1.5},
        {"aggregator": "mean", "norm_bound": 1.5},
        {"aggregator": "fltrust", "trusted_dataset": "tcga-reference"},
        {**VALIDATED},
        {**VALIDATED, "aggregator": "krum", "max_drop": 0.1, "action": "downweight"},
    ],
    ids=lambda r: "-".join(f"{k}={v}" for k, v in r.items()),
)
def test_a_valid_robust_table_round_trips_and_builds_robust(robust: dict[str, Any]) -> None:
    spec = job(robust, strategy={"name": "fedadam", "max_weight": 500})
    assert JobSpec.from_json(spec.to_json()) == spec
    assert spec.robust is not None
    assert spec.robust["aggregator"] == robust.get("aggregator", "mean")
    assert spec.needs_trusted == ("trusted_dataset" in robust)
    trusted = (
        TrustedData(spec, trusted_rows(), name="tcga-reference") if spec.needs_trusted else None
    )
    strategy = spec.build_strategy(trusted=trusted)
    assert isinstance(strategy, Robust)
    assert strategy.aggregator == robust.get("aggregator", "mean")
    assert strategy.inner.name == "fedadam"
    assert strategy.max_weight == 500  # the common [strategy] option reaches the wrapper
    assert isinstance(strategy.validation, UpdateValidation) == bool(robust.get("validation"))
    if strategy.validation is not None:
        assert strategy.validation.max_drop == robust.get("max_drop", 0.05)
        assert strategy.validation.action == robust.get("action", "reject")
    for key in ("f", "trim", "multi_krum_m", "gm_iters", "gm_eps", "cc_tau", "cc_iters"):
        if key in robust:
            assert getattr(strategy, key) == robust[key]


def test_max_weight_is_a_common_strategy_option() -> None:
    strategy = job(None, strategy={"name": "fedprox", "proximal_mu": 0.1, "max_weight": 7})
    assert strategy.build_strategy().max_weight == 7
    with pytest.raises(ConfigurationError, match=r"\[strategy\] max_weight must be an integer"):
        job(None, strategy={"name": "fedavg", "max_weight": 0})


def test_a_validating_job_without_the_trusted_data_cannot_build_its_strategy() -> None:
    spec = job(dict(VALIDATED))
    with pytest.raises(ConfigurationError, match=r"\[robust\] trusted_dataset 'tcga-reference'"):
        spec.build_strategy()


SECURE = {"secure_aggregation": {}}
REFUSALS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "unknown aggregator": ({"aggregator": "bulyan"}, {}, r"\[robust\] aggregator must be one of"),
    "option of another aggregator": (
        {"aggregator": "krum", "trim": 0.2},
        {},
        r"unknown \[robust\] key 'trim' for krum; allowed:",
    ),
    "trim of one half": (
        {"aggregator": "trimmed_mean", "trim": 0.5},
        {},
        r"\[robust\] trim must be a number in \[0, 0.5\)",
    ),
    "centered clipping without tau": (
        {"aggregator": "centered_clipping"},
        {},
        r"\[robust\] cc_tau is required",
    ),
    "norm_bound aggregator without a bound": (
        {"aggregator": "norm_bound"},
        {},
        r'\[robust\] aggregator "norm_bound" needs \[robust\] norm_bound',
    ),
    "a plain mean": ({}, {}, r'\[robust\] aggregator "mean" needs norm_bound or validation'),
    "negative norm bound": (
        {"aggregator": "median", "norm_bound": -1.0},
        {},
        r"\[robust\] norm_bound must be a number in \(0,",
    ),
    "validation without trusted data": (
        {"validation": True},
        {},
        r"\[robust\] validation needs trusted_dataset",
    ),
    "fltrust without trusted data": (
        {"aggregator": "fltrust"},
        {},
        r'\[robust\] aggregator "fltrust" needs trusted_dataset',
    ),
    "trusted data nobody uses": (
        {"aggregator": "median", "trusted_dataset": "tcga-reference"},
        {},
        r"\[robust\] trusted_dataset is used only by validation",
    ),
    "max_drop without validation": (
        {"aggregator": "median", "max_drop": 0.1},
        {},
        r"\[robust\] max_drop applies only with \[robust\] validation = true",
    ),
    "max_drop above one": (
        {**VALIDATED, "max_drop": 1.5},
        {},
        r"\[robust\] max_drop must be a number in \[0, 1\]",
    ),
    "bad action": ({**VALIDATED, "action": "ignore"}, {}, r"\[robust\] action must be one of"),
    "path as trusted dataset": (
        {**VALIDATED, "trusted_dataset": "/etc/passwd"},
        {},
        r"\[robust\] trusted_dataset must be 1-128 letters",
    ),
    "median under secure aggregation": (
        {"aggregator": "median"},
        SECURE,
        r'\[robust\] aggregator "median" needs each site\'s update on its own and cannot run '
        r"with \[secure_aggregation\]",
    ),
    "fltrust under secure aggregation": (
        {"aggregator": "fltrust", "trusted_dataset": "tcga-reference"},
        SECURE,
        r'\[robust\] aggregator "fltrust" needs each site\'s update .* \[secure_aggregation\]',
    ),
    "scaffold inside": (
        {"aggregator": "median"},
        {"strategy": {"name": "scaffold"}},
        r"\[robust\] cannot wrap \[strategy\] scaffold",
    ),
    "client-level DP": (
        {"aggregator": "norm_bound", "norm_bound": 1.0},
        {"privacy": {"mode": "client", "delta": 1e-5, "noise_multiplier": 1.0}},
        r'\[robust\] cannot be combined with \[privacy\] mode = "client"',
    ),
    "trusted data with a bundle": (
        dict(VALIDATED),
        {"run": {**RUN, "bundle": "ab" * 32}},
        r"\[robust\] trusted_dataset cannot be used with \[run\] bundle: bundle code never runs "
        r"at the coordinator",
    ),
    "not a table": ("median", {}, r"\[robust\] must be a table"),  # type: ignore[dict-item]
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_each_bad_robust_table_is_refused_in_one_line_naming_the_key(case: str) -> None:
    robust, tables, message = REFUSALS[case]
    with pytest.raises(ConfigurationError, match=message) as caught:
        job(robust, **tables)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("aggregator", sorted(ROBUST_AGGREGATORS))
def test_secure_aggregation_is_refused_exactly_for_the_single_update_aggregators(
    aggregator: str,
) -> None:
    extra = {"cc_tau": 1.0} if aggregator == "centered_clipping" else {}
    built = Robust(FedAvg(), aggregator, norm_bound=1.0, trusted=trusted_for_fltrust(), **extra)
    assert (aggregator in SINGLE_UPDATE_AGGREGATORS) == (not built.supports_secure_aggregation)
    if built.supports_secure_aggregation:  # with validation of the aggregate
        robust = {"aggregator": aggregator, "norm_bound": 1.0, **VALIDATED}
        spec = job(robust, **SECURE)
        assert spec.secure_aggregation is not None
        strategy = spec.build_strategy(trusted=TrustedData(spec, trusted_rows()))
        assert strategy.supports_secure_aggregation


def trusted_for_fltrust() -> TrustedData:
    return TrustedData(job(None), trusted_rows())


def _keywords() -> dict[str, object]:
    out = {}
    for p in inspect.signature(Robust.__init__).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            out[p.name] = p.default
    return out


def test_robust_options_are_the_constructor_keywords() -> None:
    keywords = _keywords()
    for internal in (
        "trusted",
        "validation",
        "max_updates_bytes",
        "secure_tolerance",
        "secure_value_error",  # from [secure_aggregation]
    ):
        keywords.pop(internal)  # the coordinator's: trusted data, validation, memory bounds
    declared: dict[str, object] = {}
    for variant in ROBUST.variants:
        for field in ROBUST.fields_of(variant):
            if field.name in ("aggregator", "validation", "max_drop", "action", "trusted_dataset"):
                continue
            declared[field.name] = inspect.Parameter.empty if field.required else field.default
    declared["cc_tau"] = None  # required for centered_clipping, None in the constructor
    assert declared == keywords
    assert set(ROBUST.variants) == set(ROBUST_AGGREGATORS)
    assert any(f.name == "max_weight" for f in STRATEGY.common)


def test_validation_defaults_are_update_validations() -> None:
    fields = {f.name: f.default for f in ROBUST.common}
    signature = inspect.signature(UpdateValidation.__init__).parameters
    assert fields["max_drop"] == signature["max_drop"].default
    assert fields["action"] == signature["action"].default


# -- trusted data --------------------------------------------------------------------------------
def test_trusted_data_scores_with_the_primary_metric_and_trains_reproducibly(
    tmp_path: Path,
) -> None:
    spec = job(dict(VALIDATED), train={"local_steps": 20, "optimizer": "adam"})
    path = write_table(tmp_path / "ref.csv", trusted_rows())
    data = TrustedData(spec, path, name="tcga-reference")
    assert (data.metric, data.num_examples) == ("c_index", 109)
    x = spec.initial_parameters()
    assert data.score(x) == pytest.approx(0.5)  # the zero model ties every pair
    trained = data.train(x, 1)
    assert data.train(x, 1) == trained  # seeded by the job's seed and the round
    assert data.train(x, 2) != trained
    assert data.score(trained) > 0.6
    assert all(isinstance(k, str) for k in TASK_TARGETS)
    assert set(TASK_TARGETS) == set(BUILTIN_TASKS)


def _refusal(tmp_path: Path, spec: JobSpec, **table: Any) -> str:
    path = write_table(tmp_path / "ref.csv", trusted_rows(), **table)
    with pytest.raises(ConfigurationError) as caught:
        TrustedData(spec, path, name="ref")
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("[robust] trusted_dataset")
    return text


def test_trusted_data_that_does_not_fit_the_task_is_refused(tmp_path: Path) -> None:
    spec = job(dict(VALIDATED))
    rows = trusted_rows()
    assert "unknown columns ['time']" in _refusal(tmp_path, spec, drop=("time",))
    assert "40 feature columns; the job's [task] num_features is 39" in _refusal(
        tmp_path, spec, extra=np.zeros(len(rows))
    )
    assert "column 'event' must hold only 0 and 1" in _refusal(
        tmp_path, spec, drop=("event",), event=np.full(len(rows), 2.0)
    )
    assert "column 'time' has negative values" in _refusal(
        tmp_path, spec, drop=("time",), time=-np.ones(len(rows))
    )
    assert "'note'" in _refusal(tmp_path, spec, note=["x"] * len(rows))
    no_events = _refusal(tmp_path, spec, drop=("event",), event=np.zeros(len(rows)))
    assert "gives no finite c_index for the job's initial model" in no_events
    empty = write_table(tmp_path / "empty.csv", rows.subset(np.arange(0)))
    with pytest.raises(ConfigurationError, match=r"'ref': .*empty.csv' has no rows"):
        TrustedData(spec, empty, name="ref")
    with pytest.raises(ConfigurationError, match="'ref' is empty: it needs at least one row"):
        TrustedData(spec, rows.subset(np.arange(0)), name="ref")
    with pytest.raises(ConfigurationError, match="'ref': no such file"):
        TrustedData(spec, tmp_path / "missing.csv", name="ref")


def test_a_bundle_task_is_refused_because_bundle_code_never_runs_at_the_coordinator() -> None:
    spec = job({"aggregator": "median"}, run={**RUN, "bundle": "ab" * 32})
    with pytest.raises(ConfigurationError, match="bundle code never runs at the coordinator"):
        TrustedData(spec, trusted_rows())


def test_the_kit_registers_trusted_data_by_name(tmp_path: Path) -> None:
    (tmp_path / "trusted").mkdir()
    write_table(tmp_path / "trusted" / "ref.csv", trusted_rows())
    (tmp_path / "kit.toml").write_text('[trusted_data]\ntcga-reference = "trusted/ref.csv"\n')
    assert trusted_data_from_kit(tmp_path) == {"tcga-reference": tmp_path / "trusted" / "ref.csv"}
    (tmp_path / "kit.toml").write_text('name = "c"\n')
    assert trusted_data_from_kit(tmp_path) == {}
    (tmp_path / "kit.toml").write_text('[trusted_data]\nref = "nope.csv"\n"bad name" = "x"\n')
    with pytest.raises(ConfigurationError) as caught:
        trusted_data_from_kit(tmp_path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert "[trusted_data] ref: no such file" in lines[0] or "no such file" in lines[1]
    assert any("[trusted_data] name must be 1-128 letters" in line for line in lines)
    (tmp_path / "kit.toml").write_text("trusted_data = 3\n")
    with pytest.raises(ConfigurationError, match=r"\[trusted_data\] must be a table"):
        trusted_data_from_kit(tmp_path)


def test_the_coordinator_refuses_an_unknown_or_unfitting_trusted_dataset_at_submit(
    tmp_path: Path,
) -> None:
    path = write_table(tmp_path / "ref.csv", trusted_rows(), extra=np.zeros(109))
    coordinator = Coordinator(InMemoryStateStore(), trusted_data={"tcga-reference": path})
    unknown = job({**VALIDATED, "trusted_dataset": "elsewhere"}).to_json()
    with pytest.raises(
        ConfigurationError,
        match=r"\[robust\] trusted_dataset 'elsewhere' is not registered at this coordinator "
        r"\(kit.toml \[trusted_data\] lists: tcga-reference\)",
    ):
        coordinator.submit_run(ALICE, unknown)
    with pytest.raises(ConfigurationError, match="40 feature columns"):
        coordinator.submit_run(ALICE, job(dict(VALIDATED)).to_json())
    secure = json.loads(job({"aggregator": "norm_bound", "norm_bound": 1.0}).to_json())
    secure["robust"]["aggregator"] = "krum"
    secure["secure_aggregation"] = {}
    with pytest.raises(ConfigurationError, match=r"krum.*\[secure_aggregation\]"):
        coordinator.submit_run(ALICE, json.dumps(secure))
    assert coordinator.list_runs(ALICE) == []


def test_an_fltrust_job_trains_on_the_trusted_data_and_outvotes_a_liar() -> None:
    fed, rows = held_out()
    spec = JobSpec.from_mapping(
        {
            "run": {"dataset": "tcga-brca", "rounds": 5, "min_nodes": 6},
            "task": dict(TASK),
            "train": {"batch_size": 8, "learning_rate": 0.01, "optimizer": "adam"},
            "robust": {"aggregator": "fltrust", "trusted_dataset": "tcga-reference"},
        }
    )
    trusted = TrustedData(spec, rows, name="tcga-reference")
    liar = TamperingBackend({"center-0": flip_boosted})
    undefended = dataclasses.replace(spec, robust=None)
    report = simulate(fed, job=spec, trusted=trusted, backend=liar, baselines=False)
    plain = simulate(
        fed, job=undefended, backend=TamperingBackend({"center-0": flip_boosted}), baselines=False
    )
    assert plain.federated.pooled_metric < 0.35  # measured 0.294
    assert report.federated.pooled_metric > 0.78  # measured 0.799 (honest FedAvg: 0.821)
