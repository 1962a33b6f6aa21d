"""Output control and request parsing of the site policy (pure; no kits, no files)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pytest

from biofed.core import (
    SCAFFOLD_CONTROL_DELTA,
    Instruction,
    MessageKind,
    ParameterSet,
    PolicyViolation,
    Reply,
)
from biofed.governance import (
    Bundle,
    OutputPolicy,
    Party,
    RegisteredDataset,
    SignedAgreement,
    StudyAgreement,
)
from biofed.governance._policy import RULES, Clearance, control_reply, requested_metrics

PARAMS = ParameterSet({"w": np.zeros(3), "b": np.zeros(1)})


def _clearance(*, metrics: tuple[str, ...] = ("c_index",), per_site: bool = True) -> Clearance:
    def party(name: str, role: str) -> Party:
        return Party(name=name, role=role, fingerprint=f"{ord(name[0]):02x}" * 32)

    agreement = StudyAgreement(
        agreement_id="s",
        title="t",
        purpose="p",
        legal_basis="l",
        consortium="t",
        coordinator=party("coordinator", "coordinator"),
        parties=(party("a", "site"),),
        datasets={"a": "d"},
        approved_bundles=(),
        outputs=OutputPolicy(metrics=metrics, per_site_metrics=per_site),
        expires=dt.date(2099, 1, 1),
    )
    dataset = RegisteredDataset(
        name="d",
        path="/x",
        format="csv",
        columns=(),
        num_rows=100,
        sha256="0" * 64,
        size=1,
        registered_at=0.0,
    )
    return Clearance(
        agreement=SignedAgreement(agreement=agreement),
        dataset=dataset,
        bundle=Bundle.from_files({"task.py": b"def make_task(): ...\n"}),
    )


def _pair(kind: MessageKind = MessageKind.TRAIN, **reply: Any) -> tuple[Reply, Instruction]:
    inst = Instruction(run_id="r", round=1, node_id="a", kind=kind, parameters=PARAMS)
    fields: dict[str, Any] = {"parameters": PARAMS if kind is MessageKind.TRAIN else None}
    fields.update(reply)
    return Reply(run_id="r", round=1, node_id="a", kind=kind, **fields), inst


def test_rules_are_in_order() -> None:
    assert RULES == ("agreement", "dataset", "cohort", "bundle", "outputs", "privacy")


def test_allowed_metrics_pass_and_others_are_dropped() -> None:
    reply, inst = _pair(metrics={"c_index": 0.7, "train_loss": 1.0, "rows_seen": 3.0})
    out, dropped = control_reply(reply, inst, _clearance())
    assert dict(out.metrics) == {"c_index": 0.7}
    assert dropped == ("rows_seen", "train_loss")
    assert out.parameters is PARAMS


def test_no_metrics_leave_without_per_site_permission() -> None:
    reply, inst = _pair(metrics={"c_index": 0.7})
    out, dropped = control_reply(reply, inst, _clearance(per_site=False))
    assert dict(out.metrics) == {}
    assert dropped == ("c_index",)


def test_scaffold_delta_of_the_model_spec_may_leave() -> None:
    reply, inst = _pair(extras={SCAFFOLD_CONTROL_DELTA: PARAMS})
    out, _ = control_reply(reply, inst, _clearance())
    assert set(out.extras) == {SCAFFOLD_CONTROL_DELTA}


@pytest.mark.parametrize(
    ("kind", "reply", "match"),
    [
        (MessageKind.TRAIN, {"parameters": ParameterSet({"w": np.zeros(3)})}, "spec"),
        (
            MessageKind.TRAIN,
            {"parameters": ParameterSet({"w": np.zeros(4), "b": np.zeros(1)})},
            "spec",
        ),
        (
            MessageKind.TRAIN,
            {"parameters": ParameterSet({"w": np.zeros(3, np.float32), "b": np.zeros(1)})},
            "spec",
        ),
        (MessageKind.TRAIN, {"parameters": None}, "spec"),
        (MessageKind.TRAIN, {"extras": {"data": PARAMS}}, "extras"),
        (
            MessageKind.TRAIN,
            {"extras": {SCAFFOLD_CONTROL_DELTA: ParameterSet({"x": np.zeros(9)})}},
            "extras",
        ),
        (MessageKind.EVALUATE, {"parameters": PARAMS}, "may not carry parameters"),
    ],
)
def test_payloads_outside_the_model_are_withheld(
    kind: MessageKind, reply: dict[str, Any], match: str
) -> None:
    built, inst = _pair(kind, **reply)
    with pytest.raises(PolicyViolation, match=f"^outputs: .*{match}"):
        control_reply(built, inst, _clearance())


def test_requested_metrics() -> None:
    assert requested_metrics({}) is None
    assert requested_metrics({"metrics": " loss, c_index ,,"}) == ("c_index", "loss")
    with pytest.raises(PolicyViolation, match=r"^outputs:"):
        requested_metrics({"metrics": 3})
