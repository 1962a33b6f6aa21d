"""A study job's sections and a summary request on the wire: the flat scalar map carries the
spec with its digest, the fitted preprocessing and the request, and a SUMMARISE instruction
with no model and its summary reply survive the gRPC codec."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from biofed.core import ConfigurationError, Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import (
    PREPROCESSING_KEY,
    STUDY_DIGEST_KEY,
    STUDY_SPEC_KEY,
    SUMMARY_REQUEST_KEY,
    JobSection,
    RoundDirectives,
    StudySection,
    flat_sections,
    split_flat,
)
from biofed.transport.grpc._serde import (
    Reassembler,
    chunks,
    instruction_from_wire,
    instruction_header,
    pack,
    reply_from_wire,
    reply_header,
)

SPEC = json.dumps({"study": {"name": "s", "source": "file"}}, separators=(",", ":"))
DIGEST = hashlib.sha256(SPEC.encode()).hexdigest()
PREP = '{"features":["age"]}'
REQUEST = '{"pass_no":1}'


def _study_instruction() -> Instruction:
    return Instruction(
        run_id="run-1",
        round=1,
        node_id="a",
        kind=MessageKind.SUMMARISE,
        parameters=ParameterSet({}),
        job=JobSection(
            dataset="cdm",
            task="logistic_regression",
            study=StudySection(spec=SPEC, digest=DIGEST),
            preprocessing=PREP,
        ),
        directives=RoundDirectives(summary_request=REQUEST),
        config={"seed": 3},
    )


def _blobs(header, payload):  # type: ignore[no-untyped-def]
    r = Reassembler("t", [(b.name, b.size) for b in header.blobs], payload.size, max_bytes=10**6)
    for c in chunks("t", payload):
        r.add(c)
    return r.finish()


def test_the_sections_travel_as_flat_keys_and_come_back() -> None:
    inst = _study_instruction()
    flat = flat_sections(inst.job, inst.directives)
    assert flat[STUDY_SPEC_KEY] == SPEC
    assert flat[STUDY_DIGEST_KEY] == DIGEST
    assert flat[PREPROCESSING_KEY] == PREP
    assert flat[SUMMARY_REQUEST_KEY] == REQUEST
    job, directives, task = split_flat({**flat, "seed": 3})
    assert JobSection(**job) == inst.job
    assert RoundDirectives(**directives) == inst.directives
    assert task == {"seed": 3}


def test_a_summarise_instruction_and_its_reply_cross_the_grpc_codec() -> None:
    inst = _study_instruction()
    payload = pack(inst.parameters, {})
    header = instruction_header(inst, "t", payload)
    back = instruction_from_wire(header, _blobs(header, payload), "a", max_bytes=10**6)
    assert back.kind is MessageKind.SUMMARISE
    assert back.job == inst.job
    assert back.directives == inst.directives
    assert len(back.parameters) == 0
    summary = ParameterSet({"records": np.array(40, np.int64), "numeric/age/mean": [61.5]})
    reply = Reply.answering(back, parameters=summary, num_examples=40)
    payload = pack(reply.parameters, {})
    header2 = reply_header(reply, "t", payload)
    got = reply_from_wire(header2, _blobs(header2, payload), "a", max_bytes=10**6)
    assert got.kind is MessageKind.SUMMARISE
    assert got.parameters == summary


@pytest.mark.parametrize(
    ("flat", "fragment"),
    [
        ({STUDY_SPEC_KEY: SPEC, STUDY_DIGEST_KEY: "0" * 64}, "not the SHA-256 of its spec"),
        ({STUDY_SPEC_KEY: SPEC}, "come together"),
        ({STUDY_SPEC_KEY: SPEC, STUDY_DIGEST_KEY: DIGEST.upper()}, "64 lowercase hex"),
        ({PREPROCESSING_KEY: PREP}, "needs a study spec"),
        ({STUDY_SPEC_KEY: 3, STUDY_DIGEST_KEY: DIGEST}, "must be JSON text"),
        ({SUMMARY_REQUEST_KEY: "[1]"}, "must be a JSON object"),
        ({SUMMARY_REQUEST_KEY: "{" + " " * (1 << 20) + "}"}, "longer than"),
    ],
)
def test_a_forged_or_malformed_study_section_is_refused(
    flat: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        Instruction(
            run_id="r",
            round=1,
            node_id="a",
            kind="summarise",
            parameters=ParameterSet({}),
            config=flat,  # type: ignore[arg-type]
        )
