"""An instruction's typed sections: filled from the flat form older code writes, built
directly, changed by ``dataclasses.replace``, parsed by the packages that own them, and on
the wire byte for byte what the flat form was."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import (
    JobSection,
    PrivacySection,
    RoundDirectives,
    SecAggStage,
    flat_sections,
    split_flat,
)
from biofed.privacy import DPSettings
from biofed.secagg import SecureAggregationSettings
from biofed.transport.grpc._serde import instruction_header, pack

DP = DPSettings.from_table(
    {"mode": "client", "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 0.5},
    rounds=3,
    min_replies=2,
)
SECURE = SecureAggregationSettings(clip_range=2.0, threshold=3)
FLAT = {
    "dataset": "brca",
    "task": "cox_ph",
    "task.num_features": 39,
    "agreement": "study-1",
    "bundle": "ab" * 32,
    "metrics": "c_index",
    **DP.to_config(),
    **SECURE.to_config(),
    "dp.clip_norm": 0.5,
    "dp.noise_std_share": 0.25,
    "secagg.stage": "masked_input",
    "secagg.weighting": "equal",
    "local_steps": 5,
    "seed": 7,
}


def _inst(**fields: object) -> Instruction:
    return Instruction(
        run_id="r",
        round=2,
        node_id="a",
        kind=MessageKind.TRAIN,
        parameters=ParameterSet({"w": np.zeros(3)}),
        **fields,  # type: ignore[arg-type]
    )


def test_the_flat_form_fills_every_section_and_reads_back_unchanged() -> None:
    inst = _inst(config=FLAT)
    assert inst.job.dataset == "brca"
    assert inst.job.task == "cox_ph"
    assert dict(inst.job.task_options) == {"num_features": 39}
    assert inst.job.agreement == "study-1"
    assert inst.job.metrics == "c_index"
    assert DPSettings.from_section(inst.job.privacy) == DP
    assert SecureAggregationSettings.from_section(inst.job.secure_aggregation) == SECURE
    assert inst.directives == RoundDirectives(
        clip_norm=0.5,
        noise_std_share=0.25,
        secagg_stage=SecAggStage.MASKED_INPUT,
        secagg_weighting="equal",
    )
    assert dict(inst.task_config) == {"local_steps": 5, "seed": 7}
    assert dict(inst.config) == FLAT  # readers of the flat form see what was written


def test_sections_built_directly_read_back_as_the_same_flat_form() -> None:
    typed = _inst(
        job=JobSection(
            dataset="brca",
            task="cox_ph",
            task_options={"num_features": 39},
            agreement="study-1",
            bundle="ab" * 32,
            metrics="c_index",
            privacy=DP.to_section(),
            secure_aggregation=SECURE.to_section(),
        ),
        directives=RoundDirectives(
            clip_norm=0.5,
            noise_std_share=0.25,
            secagg_stage=SecAggStage.MASKED_INPUT,
            secagg_weighting="equal",
        ),
        config={"local_steps": 5, "seed": 7},
    )
    flat = _inst(config=FLAT)
    assert typed == flat
    # on the wire: the very bytes the flat form gave
    header = instruction_header(typed, "t", pack(typed.parameters, {}))
    assert (
        header.config_json == instruction_header(flat, "t", pack(flat.parameters, {})).config_json
    )


def test_replace_changes_what_it_names() -> None:
    inst = _inst(config=FLAT)
    moved = dataclasses.replace(inst, config={**inst.config, "dataset": "other"})
    assert moved.job.dataset == "other"
    assert moved.job.privacy == inst.job.privacy
    renamed = dataclasses.replace(inst, job=dataclasses.replace(inst.job, dataset="third"))
    assert renamed.job.dataset == "third"
    assert renamed.config["dataset"] == "third"
    assert renamed.directives == inst.directives
    trained = dataclasses.replace(inst, kind=MessageKind.EVALUATE)
    assert (trained.job, trained.directives) == (inst.job, inst.directives)
    copied = Instruction(
        run_id="r",
        round=3,
        node_id="b",
        kind=MessageKind.TRAIN,
        parameters=inst.parameters,
        config=inst.config,  # another instruction's config carries its sections
    )
    assert (copied.job, copied.directives) == (inst.job, inst.directives)


def test_split_and_flatten_are_inverse() -> None:
    job, directives, task = split_flat(FLAT)
    back = flat_sections(JobSection(**job), RoundDirectives(**directives))
    assert {**task, **back} == FLAT


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"dataset": 3}, "dataset must be a string"),
        ({"dp.clip_norm": "big"}, "clip norm must be a number"),
        ({"dp.noise_std_share": True}, "noise std share must be a number"),
        ({"secagg.stage": "peek"}, "unknown secure-aggregation stage 'peek'"),
        ({"privacy.mode": [1]}, "bool, int, float or str"),
    ],
)
def test_malformed_sections_are_refused_with_one_line(
    config: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        _inst(config=config)


def test_the_owners_parse_their_sections() -> None:
    assert DPSettings.from_section(None) is None
    assert SecureAggregationSettings.from_section(None) is None
    with pytest.raises(ConfigurationError, match=r"privacy\.rounds"):
        DPSettings.from_section(PrivacySection(table={"mode": "client", "delta": 1e-5}))
    with pytest.raises(ConfigurationError, match="unknown"):
        DPSettings.from_section(PrivacySection(table={**DP.to_section().table, "eps": 1.0}))
    with pytest.raises(ConfigurationError, match="needs its settings"):
        PrivacySection(table={})


def test_replies_answer_their_instruction() -> None:
    inst = _inst(config=FLAT)
    reply = Reply.error_for(inst, ConfigurationError("bad"), node_id="a2")
    assert (reply.run_id, reply.round, reply.node_id, reply.kind) == ("r", 2, "a2", inst.kind)
    assert reply.error == "configuration: bad"
    assert Reply.error_for(inst, "task: failed").error == "task: failed"
    stage = Reply.answering(inst, kind=MessageKind.SECAGG, num_examples=3)
    assert stage.answers(dataclasses.replace(inst, kind=MessageKind.SECAGG))
    assert stage.num_examples == 3
