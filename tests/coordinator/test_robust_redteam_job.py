"""Red team of the job file's ``[robust]`` table and the coordinator's trusted data (issue
15): what a researcher's job or an operator's file can do to the defence.

A table that parses but leaves the defence off is worse than a refusal: the run reports
"robust" and aggregates like FedAvg. Each refusal is one line naming the keys."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from biofed.coordinator import JobSpec, TrustedData, trusted_data_from_kit
from biofed.core import ConfigurationError, DataError
from biofed.data import Dataset
from biofed.datasets import load_tcga_brca
from biofed.strategies import Robust

#: The attacks overflow float64 on purpose (that is what they test); numpy says so.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

RUN = {"dataset": "tcga-brca", "min_nodes": 6, "min_replies": 4}
TASK = {"name": "cox_ph", "num_features": 39}
VALIDATED = {"validation": True, "trusted_dataset": "tcga-reference"}


def job(robust: Any, **tables: Any) -> JobSpec:
    data: dict[str, Any] = {"run": dict(RUN), "task": dict(TASK), **tables}
    if robust is not None:
        data["robust"] = robust
    return JobSpec.from_mapping(data)


#: Tables that parsed and silently aggregated as the plain mean (or passed every update).
SILENT: dict[str, tuple[dict[str, Any], str]] = {
    "trimmed mean trimming nothing (trim = 0)": (
        {"aggregator": "trimmed_mean", "trim": 0.0},
        r"\[robust\] trimmed_mean with trim = 0 drops nothing",
    ),
    "trimmed mean trimming nothing (f = 0)": (
        {"aggregator": "trimmed_mean", "f": 0},
        r"\[robust\] trimmed_mean with f = 0 drops nothing",
    ),
    "multi-krum averaging everyone (f = 0)": (
        {"aggregator": "multi_krum", "f": 0},
        r"\[robust\] multi_krum with f = 0 and no multi_krum_m averages every update",
    ),
    "validation that passes everything (max_drop 0.5)": (
        {**VALIDATED, "aggregator": "median", "max_drop": 0.5},
        r"\[robust\] max_drop 0.5 lets one update take",
    ),
}


@pytest.mark.parametrize("case", sorted(SILENT))
def test_a_table_that_would_silently_disable_the_defence_is_refused(case: str) -> None:
    robust, message = SILENT[case]
    with pytest.raises(ConfigurationError, match=message) as caught:
        job(robust)
    assert "\n" not in str(caught.value)


#: Absurd values the schema must refuse (held on int15; kept as regressions).
ABSURD: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "trusted dataset walking up": (
        {**VALIDATED, "trusted_dataset": "../kit.toml"},
        {},
        r"\[robust\] trusted_dataset must be",
    ),
    "trusted dataset with a slash": (
        {**VALIDATED, "trusted_dataset": "a/../../b"},
        {},
        r"\[robust\] trusted_dataset must be",
    ),
    "f as a bool": ({"aggregator": "krum", "f": True}, {}, r"\[robust\] f must be"),
    "negative f": ({"aggregator": "krum", "f": -1}, {}, r"\[robust\] f must be"),
    "NaN norm bound": ({"aggregator": "median", "norm_bound": math.nan}, {}, r"norm_bound"),
    "infinite norm bound": ({"aggregator": "median", "norm_bound": math.inf}, {}, r"norm_bound"),
    "NaN cc_tau": ({"aggregator": "centered_clipping", "cc_tau": math.nan}, {}, r"cc_tau"),
    "zero gm_iters": ({"aggregator": "geometric_median", "gm_iters": 0}, {}, r"gm_iters"),
    "NaN max_drop": ({**VALIDATED, "max_drop": math.nan}, {}, r"max_drop"),
    "memory bound from the job": (
        {"aggregator": "median", "max_updates_bytes": 1 << 40},
        {},
        r"unknown \[robust\] key 'max_updates_bytes'",
    ),
    "max_weight zero": (
        {"aggregator": "median"},
        {"strategy": {"name": "fedavg", "max_weight": 0}},
        r"max_weight",
    ),
    "max_weight as a bool": (
        {"aggregator": "median"},
        {"strategy": {"name": "fedavg", "max_weight": True}},
        r"max_weight",
    ),
}


@pytest.mark.parametrize("case", sorted(ABSURD))
def test_absurd_robust_values_are_refused(case: str) -> None:
    robust, tables, message = ABSURD[case]
    with pytest.raises(ConfigurationError, match=message) as caught:
        job(robust, **tables)
    assert "\n" not in str(caught.value)


def test_downweight_with_zero_max_drop_is_refused_naming_robust() -> None:
    """UpdateValidation's own refusal escaped wrap_robust without the ``[robust]`` prefix."""
    with pytest.raises(ConfigurationError, match=r"^\[robust\] max_drop must be > 0"):
        job({**VALIDATED, "aggregator": "median", "action": "downweight", "max_drop": 0.0})


def test_a_table_that_keeps_the_defence_still_builds() -> None:
    for robust in (
        {"aggregator": "trimmed_mean", "f": 1},
        {"aggregator": "multi_krum", "f": 0, "multi_krum_m": 2},
        {"aggregator": "multi_krum"},
        {"aggregator": "norm_bound", "norm_bound": 1.0},
    ):
        assert isinstance(job(robust).build_strategy(), Robust)


# -- the operator's trusted-data file --------------------------------------------------------


def _write(path: Path, features: np.ndarray, names: list[str], targets: dict[str, Any]) -> Path:
    columns = {n: features[:, j] for j, n in enumerate(names)}
    columns.update(targets)
    pacsv.write_csv(pa.table(columns), path)
    return path


def test_trusted_file_with_missing_feature_values_is_refused(tmp_path: Path) -> None:
    """NaN features made every trusted score / training NaN: FLTrust's server update then
    failed every round and validation could score nothing. Refused when loaded, naming the
    dataset."""
    data = load_tcga_brca().sites["center-0"].train
    features = np.array(data.features, dtype=np.float64, copy=True)
    features[3, 5] = np.nan
    path = _write(
        tmp_path / "t.csv",
        features,
        list(data.feature_names),
        {k: np.asarray(v) for k, v in data.targets.items()},
    )
    with pytest.raises(ConfigurationError, match=r"\[robust\] trusted_dataset 'ref'.*missing") as c:
        TrustedData(job({**VALIDATED, "aggregator": "median"}), path, name="ref")
    assert "\n" not in str(c.value)


def test_a_trusted_dataset_with_infinite_features_cannot_even_be_built() -> None:
    """A Dataset handed over directly (simulate(trusted=…), the CLI) skips the file loader,
    but Dataset itself refuses NaN and ±inf features (held on int15)."""
    data = load_tcga_brca().sites["center-0"].test
    assert data is not None
    features = np.array(data.features, dtype=np.float64, copy=True)
    features[0, 0] = np.inf
    with pytest.raises(DataError, match="missing or infinite"):
        Dataset(
            features=features,
            targets=dict(data.targets),
            feature_names=list(data.feature_names),
            name="bad",
        )


def test_kit_names_are_identifiers_and_cannot_smuggle_a_path(tmp_path: Path) -> None:
    (tmp_path / "kit.toml").write_text('[trusted_data]\n"../up" = "t.csv"\n')
    with pytest.raises(ConfigurationError, match="trusted_data"):
        trusted_data_from_kit(tmp_path)


# -- the audit of decisions ------------------------------------------------------------------


def test_a_huge_liars_krum_decision_can_be_written_to_the_signed_audit_log(
    tmp_path: Path,
) -> None:
    """One site sending finite 1e300 values against Krum: its Krum score overflows to inf.
    The coordinator's audit log refuses non-finite numbers (``allow_nan=False``), so the
    decision event ``update_rejected`` → entry ``update.rejected`` raised in the run's
    listener and one liar failed the whole run. The decision is written as the executor
    writes it (the engine's JSON message, parsed, under ``run_id`` and ``round``)."""
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from biofed.core import MessageKind, ParameterSet, Reply
    from biofed.governance import AuditLog
    from biofed.governance._audit._signer import AuditSigner
    from biofed.strategies import FedAvg

    x = ParameterSet({"w": np.zeros(3)})
    values = [(1.0, 2.0, -1.0), (1.2, 1.8, -0.9), (0.9, 2.1, -1.1), (1.1, 2.2, -1.0)]
    values += [(1.0, 1.9, -1.2), (1e300, 1e300, 1e300)]
    strategy = Robust(FedAvg(), "krum")
    agg = strategy.begin_train_aggregation(1, x, strategy.init_state(x), len(values))
    for i, v in enumerate(values):
        agg.add(
            Reply(
                run_id="r",
                round=1,
                node_id=f"s{i}",
                kind=MessageKind.TRAIN,
                parameters=ParameterSet({"w": np.asarray(v)}),
                num_examples=10,
            )
        )
    result = agg.finish()
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    audit = AuditLog(tmp_path / "audit.jsonl", AuditSigner("coordinator", key))
    for decision in result.decisions:
        message = json.dumps(decision.to_dict(), sort_keys=True)  # the engine's event
        audit.append(
            f"update.{decision.action}", {"run_id": "r", "round": 1, **json.loads(message)}
        )
    entries, _ = audit.follower().read()
    assert len(entries) == len(values)
    assert {d.node_id: d.action for d in result.decisions}["s5"] == "rejected"
