"""Core value types are immutable and validate their input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import biofed.core as core
from biofed.core import (
    ConfigurationError,
    Instruction,
    MessageKind,
    NodeInfo,
    ParameterSet,
    Reply,
    check_id,
)


def test_public_api() -> None:
    assert set(core.__all__) == {
        "ALLOWED_DTYPES",
        "MAX_PAYLOAD_BYTES",
        "SCAFFOLD_CONTROL_DELTA",
        "SCAFFOLD_SERVER_CONTROL",
        "Array",
        "BiofedError",
        "Config",
        "ConfigurationError",
        "DataError",
        "Instruction",
        "MessageKind",
        "Metrics",
        "NodeInfo",
        "ParameterMismatch",
        "ParameterSet",
        "ParameterSpec",
        "PayloadError",
        "PolicyViolation",
        "PrivacyBudgetExceeded",
        "ProtocolError",
        "Reply",
        "RoundFailed",
        "Scalar",
        "SecureAggregationError",
        "TaskError",
        "TransportError",
        "check_id",
        "decode_metadata",
        "decode_parameters",
        "encode_parameters",
        "encode_segments",
        "freeze_config",
        "freeze_metrics",
        "weighted_mean_metrics",
    }


def test_error_tree_matches_builtins() -> None:
    assert issubclass(core.ConfigurationError, ValueError)
    assert issubclass(core.ParameterMismatch, core.PayloadError)
    assert issubclass(core.TransportError, ConnectionError)
    assert issubclass(core.PrivacyBudgetExceeded, core.PolicyViolation)
    for name in ("ConfigurationError", "PayloadError", "ProtocolError", "TaskError", "RoundFailed"):
        assert issubclass(getattr(core, name), core.BiofedError)


def test_parameter_set_is_read_only_and_does_not_copy() -> None:
    source = np.arange(4, dtype=np.float32)
    params = ParameterSet({"w": source})
    with pytest.raises(ValueError, match="read-only"):
        params["w"][0] = 1.0
    assert np.shares_memory(params["w"], source)
    with pytest.raises(TypeError):
        params["x"] = source  # type: ignore[index]


def test_parameter_set_refuses_objects_and_bad_names() -> None:
    with pytest.raises(ConfigurationError, match="cannot travel"):
        ParameterSet({"w": np.array(["a"], dtype=object)})
    with pytest.raises(ConfigurationError, match="non-empty"):
        ParameterSet({"": np.zeros(1)})


def test_ids_are_checked() -> None:
    assert check_id("site-1.a_b") == "site-1.a_b"
    for bad in ("", "-x", "a b", "a/b", "x" * 129, "é", "site\n"):
        with pytest.raises(ConfigurationError):
            check_id(bad)


def test_messages_are_frozen_and_configs_read_only() -> None:
    config = {"local_steps": 5}
    inst = Instruction(
        run_id="r1",
        round=1,
        node_id="a",
        kind=MessageKind.TRAIN,
        parameters=ParameterSet({"w": np.zeros(2)}),
        config=config,
    )
    config["local_steps"] = 99
    assert inst.config["local_steps"] == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.round = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        inst.config["x"] = 1  # type: ignore[index]
    with pytest.raises(ConfigurationError, match="bool, int, float or str"):
        Instruction(
            run_id="r",
            round=1,
            node_id="a",
            kind="train",
            parameters=ParameterSet(),
            config={"x": [1, 2]},
        )  # type: ignore[dict-item]


def test_reply_answers_its_instruction_only() -> None:
    inst = Instruction(run_id="r", round=3, node_id="a", kind="train", parameters=ParameterSet())
    assert Reply(run_id="r", round=3, node_id="a", kind="train").answers(inst)
    assert not Reply(run_id="r", round=2, node_id="a", kind="train").answers(inst)
    assert not Reply(run_id="q", round=3, node_id="a", kind="train").answers(inst)
    with pytest.raises(ConfigurationError):
        Reply(run_id="r", round=3, node_id="a", kind="train", num_examples=-1)
    with pytest.raises(ConfigurationError, match="not a number"):
        Reply(run_id="r", round=3, node_id="a", kind="train", metrics={"x": "y"})  # type: ignore[dict-item]


def test_node_info_validation() -> None:
    with pytest.raises(ConfigurationError):
        NodeInfo(node_id="a", num_examples=-1)
