"""A study job over the network: node processes compile the job's spec against their own
files, the coordinator fits the preprocessing through their chains before round 1, the run
trains, and the result carries the fitted preprocessing beside the model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from biofed.coordinator import JobSpec
from biofed.core import decode_metadata, decode_parameters
from biofed.data import Preprocessing
from biofed.datasets import gi_bleed_study, write_eunomia_sites
from biofed.tasks import parameter_spec

from .conftest import DATASET, Federation, events_of, format_events, wait_online, wait_terminal

pytestmark = pytest.mark.slow

SITES = ["center-0", "center-1"]
SPEC = """
[study]
name = "brca-age"
source = "file"
test_fraction = 0.3
seed = 5

[columns]
split = "split"
features = ["age_at_index", "race_white"]

[outcome]
kind = "time_to_event"
time = "time"
event = "event"
"""


def test_a_study_job_trains_over_grpc_and_its_result_holds_the_preprocessing(
    make_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    federation = make_federation(sites=SITES)
    federation.start_coordinator()
    for site in SITES:
        federation.node_process(site)
    client = federation.control(timeout=30.0)
    wait_online(client, SITES, timeout=120)
    (tmp_path / "study.toml").write_text(SPEC, encoding="utf-8")
    job = JobSpec.from_mapping(
        {
            "run": {
                "name": "study",
                "dataset": DATASET,
                "rounds": 2,
                "seed": 3,
                "min_nodes": 2,
                "min_replies": 2,
                "round_timeout": 120.0,
            },
            "study": {"spec": "study.toml"},
            "task": {"name": "cox_ph"},
            "train": {"local_steps": 10, "batch_size": 16, "learning_rate": 0.05},
        },
        base=tmp_path,
    )
    run_id = client.submit_run(job.to_json()).run_id
    status = wait_terminal(client, run_id, timeout=300)
    events = events_of(client, run_id)
    assert status == "finished", format_events(events)

    kinds = [e.kind for e in events]
    assert kinds.index("preprocessing_fitted") < kinds.index("round_completed")
    summaries = json.loads(next(e.message for e in events if e.kind == "data_summaries"))
    assert sorted(summaries) == SITES
    passes = {e.round for e in events if e.kind == "reply_rejected"}
    assert not passes, format_events(events)

    result = client.download_result(run_id)
    fitted = Preprocessing.from_json(decode_metadata(result)["preprocessing"])
    assert fitted.feature_names[:1] == ("age_at_index",)
    assert len(fitted.feature_names) >= 2
    model = decode_parameters(result)
    expected = parameter_spec("cox_ph", num_features=len(fitted.feature_names))
    expected.validate(model)  # the model's layout is the fitted preprocessing's width


def test_a_gi_bleed_study_trains_over_grpc_from_each_sites_omop_cdm(
    make_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    cdms = write_eunomia_sites(tmp_path / "cdm", len(SITES))
    federation = make_federation(sites=SITES)
    for site, cdm in zip(SITES, cdms.values(), strict=True):
        kit = federation.kit(site)
        shutil.copyfile(cdm, kit / "data" / "cdm.duckdb")
        (kit / "node.toml").write_text('[datasets.cdm]\nomop = "data/cdm.duckdb"\n')
    federation.start_coordinator()
    for site in SITES:
        federation.node_process(site)
    client = federation.control(timeout=30.0)
    wait_online(client, SITES, timeout=120)
    (tmp_path / "study.json").write_text(gi_bleed_study().to_json(), encoding="utf-8")
    job = JobSpec.from_mapping(
        {
            "run": {
                "name": "gi-bleed",
                "dataset": "cdm",
                "rounds": 2,
                "seed": 3,
                "min_nodes": 2,
                "min_replies": 2,
                "round_timeout": 120.0,
            },
            "study": {"spec": "study.json"},
            "task": {"name": "logistic_regression"},
            "train": {"local_steps": 20, "batch_size": 32, "learning_rate": 0.1},
        },
        base=tmp_path,
    )
    run_id = client.submit_run(job.to_json()).run_id
    status = wait_terminal(client, run_id, timeout=300)
    events = events_of(client, run_id)
    assert status == "finished", format_events(events)
    final = [e for e in events if e.kind == "round_completed"][-1]
    assert "roc_auc" in final.message, format_events(events)
    fitted = Preprocessing.from_json(
        decode_metadata(client.download_result(run_id))["preprocessing"]
    )
    assert "age" in fitted.feature_names
