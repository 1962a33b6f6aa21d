"""Invalid jobs are refused at submit by a real coordinator over mTLS (issue 10, classes 1-3).

A researcher submits jobs that used to stop the runner for good (``evaluate_every = -1``),
OOM the sites (``num_features = 3e9``) or break ``ListRuns`` for everyone (``rounds = 1e12``),
and others from finding 3, as the JSON a client sends. Each is answered INVALID_ARGUMENT with
a one-line message naming the field, nothing is stored, the coordinator's ``[limits]`` from
its kit.toml are applied, and the run list stays usable: a valid job is accepted afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from biofed.core import ConfigurationError
from biofed.transport.grpc._gen import federation_pb2 as pb
from biofed.transport.grpc._gen import federation_pb2_grpc as pb_grpc

from .conftest import Federation, job, raw_channel, wait_terminal

pytestmark = pytest.mark.slow


def _edited(**tables: dict[str, Any]) -> str:
    """The JSON of the conftest job with some keys of some tables replaced."""
    mapping: dict[str, Any] = job().to_mapping()
    for table, values in tables.items():
        mapping.setdefault(table, {}).update(values)
    return json.dumps(mapping)


INVALID = {
    "evaluate_every=-1": (_edited(run={"evaluate_every": -1}), "[run] evaluate_every"),
    "num_features=3e9": (_edited(task={"num_features": 3_000_000_000}), "max_model_bytes"),
    "rounds=1e12": (_edited(run={"rounds": 1_000_000_000_000}), "[run] rounds"),
    "batch_size=0": (_edited(train={"batch_size": 0}), "[train] batch_size"),
    "learning_rate=1e300": (_edited(train={"learning_rate": 1e300}), "[train] learning_rate"),
    "num_features='39'": (_edited(task={"num_features": "39"}), "[task] num_features"),
    "optimizer=nope": (_edited(train={"optimizer": "nope"}), "[train] optimizer"),
    "unknown [train] key": (_edited(train={"colour": 1}), "unknown [train] key 'colour'"),
    "seed=true": (_edited(run={"seed": True}), "[run] seed"),
    "round_timeout='abc'": (_edited(run={"round_timeout": "abc"}), "[run] round_timeout"),
    "over the kit's max_rounds": (_edited(run={"rounds": 51}), "[limits] max_rounds"),
    "JSON nested 5000 deep": ('{"run": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),
    "duplicate key": ('{"run": {"rounds": 1, "rounds": 1000000000000}}', "appears twice"),
}


@pytest.fixture
def federation(make_federation: Callable[..., Federation]) -> Federation:
    """A consortium whose coordinator's kit.toml caps rounds at 50."""
    federation = make_federation(sites=["center-0"])
    kit_toml = federation.kit("coordinator") / "kit.toml"
    kit_toml.write_text(kit_toml.read_text() + "\n[limits]\nmax_rounds = 50\n")
    federation.start_coordinator()
    return federation


def test_invalid_jobs_are_refused_and_the_run_list_stays_usable(federation: Federation) -> None:
    client = federation.control()
    for case, (spec_json, fragment) in INVALID.items():
        with pytest.raises(ConfigurationError) as caught:
            client.submit_run(spec_json)
        message = str(caught.value)
        assert "\n" not in message, (case, message)
        assert fragment in message, (case, message)
        assert message.startswith("coordinator: configuration: "), (case, message)
    assert client.list_runs() == []
    many = _edited(train={f"{'k' * 40}{i}": i for i in range(500)}, run={"rounds": 0})
    with pytest.raises(ConfigurationError) as caught:
        client.submit_run(many)
    lines = str(caught.value).splitlines()
    assert 2 <= len(lines) <= 21
    assert "[run] rounds must be" in lines[0]
    assert lines[-1].endswith("more errors")
    assert client.list_runs() == []

    run = client.submit_run(job(rounds=50).to_json())  # at the cap: accepted
    assert run.status in ("pending", "running")
    assert run.total_rounds == 50
    assert [r.run_id for r in client.list_runs()] == [run.run_id]
    assert client.get_run(run.run_id).run_id == run.run_id
    client.cancel_run(run.run_id)  # the runner is alive: it waits for sites, then stops
    assert wait_terminal(client, run.run_id, timeout=30) == "cancelled"


def test_the_status_code_is_invalid_argument_with_one_line(federation: Federation) -> None:
    channel = raw_channel(federation.address, federation.tls("researcher"))
    try:
        stub = pb_grpc.ControlServiceStub(channel)
        for spec_json, fragment in (
            INVALID["evaluate_every=-1"],
            INVALID["rounds=1e12"],
            INVALID["JSON nested 5000 deep"],
            (b'{"run": {"name": "caf\xe9"}}', "UTF-8"),  # not UTF-8: refused by us, not protobuf
        ):
            data = spec_json.encode() if isinstance(spec_json, str) else spec_json
            with pytest.raises(grpc.RpcError) as caught:
                stub.SubmitRun(pb.SubmitRunRequest(spec_json=data), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = caught.value.details() or ""
            assert "\n" not in details
            assert fragment in details
        listed = stub.ListRuns(pb.ListRunsRequest(), timeout=10)
        assert list(listed.runs) == []
    finally:
        channel.close()
