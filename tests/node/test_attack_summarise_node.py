"""Attacks on a site's SUMMARISE path through the real node chain (issue 13): a hostile
coordinator's summarise instructions. The node must answer each with an error reply (one
line, no record-level data) — never raise, never answer with anything but a summary."""

from __future__ import annotations

import hashlib
import json

import pytest

from biofed.core import Instruction, MessageKind, ParameterSet, Reply
from biofed.core.sections import JobSection, RoundDirectives, StudySection
from biofed.datasets import gi_bleed_study, write_eunomia_sites
from biofed.node import NodeApp, NodeConfig

SPEC = gi_bleed_study().to_json()
GOOD = json.dumps({"pass_no": 1, "numeric": {"age": {}}, "categorical": ["sex"]})


def study(text: str) -> StudySection:
    return StudySection(spec=text, digest=hashlib.sha256(text.encode()).hexdigest())


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> NodeApp:
    cdms = write_eunomia_sites(tmp_path_factory.mktemp("cdm"), 2)
    site, file = sorted(cdms.items())[0]
    return NodeApp(site, NodeConfig(datasets={}), data={"cdm": file})


def summarise(
    app: NodeApp,
    request: str | None = GOOD,
    job: JobSection | None = None,
    *,
    round_no: int = 1,
    kind: MessageKind = MessageKind.SUMMARISE,
) -> Reply:
    return app.handle(
        Instruction(
            run_id="attack",
            round=round_no,
            node_id=app.node_id,
            kind=kind,
            parameters=ParameterSet({}),
            job=job or JobSection(dataset="cdm", study=study(SPEC)),
            directives=RoundDirectives(summary_request=request),
        )
    )


def refused(reply: Reply) -> str:
    assert not reply.ok
    assert reply.parameters is None or not len(reply.parameters)
    message = str(reply.error)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def test_an_honest_request_is_answered_with_a_summary_only(app: NodeApp) -> None:
    reply = summarise(app)
    assert reply.ok
    assert reply.parameters is not None
    assert all(
        k.split("/")[0] in ("records", "outcome", "numeric", "categorical", "suppressed")
        for k in reply.parameters
    )
    assert not reply.metrics


def test_a_summarise_without_a_study_is_refused(app: NodeApp) -> None:
    assert "study" in refused(summarise(app, job=JobSection(dataset="cdm")))


def test_a_summarise_for_a_dataset_the_site_does_not_hold_is_refused(app: NodeApp) -> None:
    message = refused(summarise(app, job=JobSection(dataset="other", study=study(SPEC))))
    assert "other" in message


def test_a_summarise_without_a_request_is_refused(app: NodeApp) -> None:
    assert "summary request" in refused(summarise(app, None))


@pytest.mark.parametrize(
    "request_text",
    [
        json.dumps({"pass_no": 1, "numeric": {"person_id": {}}}),  # not in the spec
        json.dumps({"pass_no": 1, "numeric": {"age": {"edges": list(range(4097, 0, -1))}}}),
        '{"pass_no": 1, "numeric": {"age": {"clip": [NaN, 1]}}}',
        '{"pass_no":' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["column", "edges", "nan", "deep"],
)
def test_a_hostile_request_is_refused(app: NodeApp, request_text: str) -> None:
    refused(summarise(app, request_text))


@pytest.mark.parametrize(
    "spec",
    [
        "{" + '"a":' + "[" * 100_000 + "]" * 100_000 + "}",  # deeper than the JSON parser
        SPEC.replace('"entry_domain":"drug"', '"entry_domain":"drug_exposure; --"'),
        SPEC.replace("[1118084,1124300]", json.dumps(list(range(1, 100_001)))),
    ],
    ids=["deep", "sql", "huge-concept-list"],
)
def test_a_hostile_spec_in_a_summarise_is_refused_without_querying(app: NodeApp, spec: str) -> None:
    message = refused(summarise(app, job=JobSection(dataset="cdm", study=study(spec))))
    assert "study" in message


def test_a_preprocessing_that_does_not_match_the_study_is_refused_for_training(
    app: NodeApp,
) -> None:
    other = json.dumps(
        {
            "columns": [
                {
                    "center": 0,
                    "clip": None,
                    "fill": None,
                    "indicator": False,
                    "kind": "numeric",
                    "log": False,
                    "name": "person_id",
                    "scale": 1,
                }
            ],
            "format": 1,
            "outcome_kind": "binary",
        },
        separators=(",", ":"),
    )
    job = JobSection(
        dataset="cdm", task="logistic_regression", study=study(SPEC), preprocessing=other
    )
    message = refused(summarise(app, None, job, kind=MessageKind.TRAIN))
    assert "person_id" in message


def test_a_replayed_request_in_a_later_round_releases_nothing_new(app: NodeApp) -> None:
    first = summarise(app, round_no=1)
    again = summarise(app, round_no=9)
    assert first.ok
    assert again.ok
    assert first.parameters is not None
    assert again.parameters is not None
    assert sorted(first.parameters) == sorted(again.parameters)
    for name, value in first.parameters.items():
        assert (value == again.parameters[name]).all()


def test_a_preprocessing_that_drops_a_covariate_of_the_study_is_refused(app: NodeApp) -> None:
    fitted = {
        "columns": [
            {
                "center": 60.0,
                "clip": None,
                "fill": 60.0,
                "indicator": False,
                "kind": "numeric",
                "log": False,
                "name": "age",
                "scale": 10.0,
            }
        ],
        "format": 1,
        "outcome_kind": "binary",
    }
    job = JobSection(
        dataset="cdm",
        task="logistic_regression",
        study=study(SPEC),
        preprocessing=json.dumps(fitted, separators=(",", ":")),
    )
    message = refused(summarise(app, None, job, kind=MessageKind.TRAIN))
    assert "not fitted for this study" in message
