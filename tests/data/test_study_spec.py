"""The study dataset spec: parsing, canonical JSON and digest, and refusal of hostile specs."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from biofed.core import ConfigurationError
from biofed.data import StudySpec, load_study_spec

GI_BLEED_TOML = """
[study]
name = "gi-bleed-nsaid"
source = "omop"
test_fraction = 0.25
seed = 0

[cohort]
entry_concepts = [1118084, 1124300]
entry_domain = "drug"
first_occurrence = true
prior_observation_days = 365
exclude_concepts = [192671]
exclude_domain = "condition"
exclude_window_days = 0

[outcome]
kind = "binary"
concepts = [192671]
domain = "condition"
window_start_days = 1
window_end_days = 365

[[covariates]]
name = "age"
kind = "age"
[[covariates]]
name = "sex"
kind = "sex"
[[covariates]]
name = "prior_gi_condition"
kind = "condition"
concepts = [4027663]
window_start_days = -365
window_end_days = -1
[[covariates]]
name = "bmi"
kind = "measurement"
concepts = [3038553]
window_start_days = -365
window_end_days = 0
unit_concepts = [9531]

[transforms.age]
winsorise = [0.01, 0.99]
log = false
impute = "median"
missing_indicator = true
standardise = true
[transforms.sex]
one_hot = true
min_count = 10
[transforms."*"]
standardise = true
"""

FILE_SPEC: dict[str, Any] = {
    "study": {"name": "dialysis", "source": "file", "seed": 3},
    "columns": {
        "id": "patient_id",
        "split": "split",
        "features": ["age", "centre_type", "diabetic"],
        "categorical": ["centre_type"],
        "binary": ["diabetic"],
    },
    "outcome": {"kind": "time_to_event", "time": "t", "event": "e"},
}


@pytest.fixture
def gi_bleed(tmp_path: Path) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(GI_BLEED_TOML)
    return path


def _doc() -> dict[str, Any]:
    import tomllib

    return tomllib.loads(GI_BLEED_TOML)


def test_toml_spec_parses_with_kinds(gi_bleed: Path) -> None:
    spec = load_study_spec(gi_bleed)
    assert spec.name == "gi-bleed-nsaid"
    assert spec.source == "omop"
    assert spec.cohort is not None
    assert spec.cohort.entry_concepts == (1118084, 1124300)
    assert spec.outcome_kind == "binary"
    assert dict(spec.covariate_kinds) == {
        "age": "numeric",
        "sex": "categorical",
        "prior_gi_condition": "binary",
        "bmi": "numeric",
    }
    assert spec.covariates[3].unit_concepts == (9531,)
    age = spec.transform_for("age")
    assert age is not None
    assert age.winsorise == (0.01, 0.99)
    assert age.impute == "median"
    star = spec.transform_for("bmi")
    assert star is not None
    assert star.standardise is True
    assert star.impute is None


def test_canonical_json_round_trips_and_digest_is_stable(gi_bleed: Path, tmp_path: Path) -> None:
    spec = load_study_spec(gi_bleed)
    text = spec.to_json()
    assert " " not in text
    assert json.loads(text)["study"]["name"] == "gi-bleed-nsaid"
    again = StudySpec.from_json(text)
    assert again == spec
    assert again.to_json() == text
    assert again.digest == spec.digest
    # the same study written as JSON, keys in another order, defaults left out → same digest
    doc = _doc()
    del doc["cohort"]["first_occurrence"], doc["study"]["seed"]
    doc["cohort"]["entry_concepts"] = [1124300, 1118084]
    path = tmp_path / "study.json"
    path.write_text(json.dumps(dict(reversed(list(doc.items()))), indent=2))
    assert load_study_spec(path).digest == spec.digest
    # any change of meaning changes the digest
    doc["outcome"]["window_end_days"] = 364
    assert StudySpec.from_mapping(doc, where="x").digest != spec.digest


def test_file_spec_parses() -> None:
    spec = StudySpec.from_mapping(FILE_SPEC, where="file.toml")
    assert spec.columns is not None
    assert spec.columns.id == "patient_id"
    assert spec.outcome_kind == "time_to_event"
    assert dict(spec.covariate_kinds) == {
        "age": "numeric",
        "centre_type": "categorical",
        "diabetic": "binary",
    }
    assert StudySpec.from_json(spec.to_json()) == spec


def _set(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("study.colour", "red", r"\[study\] unknown key\(s\): colour"),
        ("extra", {}, r"unknown key\(s\): extra"),
        ("study.name", "x'; DROP TABLE person; --", r"\[study\] name must be 1-128"),
        ("study.name", 7, r"\[study\] name must be a non-empty string"),
        ("study.source", "csv", r"\[study\] source must be one of file, omop"),
        ("study.test_fraction", 1.0, r"test_fraction must be in \[0, 1\)"),
        ("study.test_fraction", "0.2", r"test_fraction must be a number"),
        ("study.seed", -1, r"seed must be between 0"),
        ("study.seed", True, r"seed must be an integer"),
        (
            "cohort.entry_concepts",
            [1118084, "1124300) OR 1=1"],
            r"entry_concepts\[1\] must be an integer",
        ),
        ("cohort.entry_concepts", [1.5], r"entry_concepts\[0\] must be an integer"),
        ("cohort.entry_concepts", [True], r"entry_concepts\[0\] must be an integer"),
        ("cohort.entry_concepts", [2**40], r"entry_concepts\[0\] must be a concept id in"),
        ("cohort.entry_concepts", [], r"entry_concepts must name at least one"),
        ("cohort.entry_concepts", "1118084", r"entry_concepts must be a list"),
        ("cohort.entry_domain", "drug_exposure; --", r"entry_domain must be one of"),
        ("cohort.prior_observation_days", -1, r"prior_observation_days must be between 0"),
        ("cohort.exclude_domain", _DELETE, r"exclude_domain is required"),
        ("cohort.circe", "cohort.json", r"\[cohort\] circe cohort definitions are not supported"),
        (
            "outcome.window_start_days",
            400,
            r"\[outcome\] window_start_days \(400\) must not be after",
        ),
        ("outcome.window_start_days", -3, r"\[outcome\] window_start_days must be between 0"),
        ("outcome.kind", "count", r"\[outcome\] kind must be one of"),
        ("outcome.label", "y", r"\[outcome\] label is for source = 'file'"),
        ("covariates.2.window_end_days", -400, r"\[covariates\[2\]\] window_start_days \(-365\)"),
        ("covariates.1.name", "age", r"\[covariates\[1\]\] name 'age' is used by two"),
        ("covariates.1.name", "a b", r"\[covariates\[1\]\] name must be 1-128"),
        ("covariates.1.kind", "genome", r"\[covariates\[1\]\] kind must be one of"),
        ("covariates.1.concepts", [1], r"\[covariates\[1\]\] concepts does not apply"),
        (
            "covariates.2.unit_concepts",
            [9531],
            r"unit_concepts applies only to kind = 'measurement'",
        ),
        ("covariates.3.unit_concepts", ["kg"], r"unit_concepts\[0\] must be an integer"),
        ("covariates.3.size", 3, r"\[covariates\[3\]\] unknown key\(s\): size"),
        ("transforms.weight", {"standardise": True}, r"\[transforms.weight\] names no covariate"),
        ("transforms.age.impute", "mode", r"\[transforms.age\] impute must be one of"),
        ("transforms.age.clip", [0, 100], r"\[transforms.age\] give clip or winsorise"),
        ("transforms.age.winsorise", [0.9, 0.1], r"winsorise must have lo <= hi"),
        ("transforms.sex.min_count", 0, r"\[transforms.sex\] min_count must be between 1"),
        ("transforms.sex.impute", "constant", r"impute_value is required"),
    ],
)
def test_bad_omop_specs_give_one_line_errors(path: str, value: object, expected: str) -> None:
    doc = _set(_doc(), path, value)
    with pytest.raises(ConfigurationError, match=expected) as info:
        StudySpec.from_mapping(doc, where="study.toml")
    message = str(info.value)
    assert message.startswith("study.toml: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("columns.features", [], r"features must name at least one"),
        ("columns.categorical", ["sex"], r"categorical must be a subset of features"),
        ("columns.binary", ["centre_type"], r"both categorical and binary"),
        ("columns.id", "age", r"id column 'age' must not also be a feature"),
        ("columns.features", ["age", "t"], r"outcome column\(s\) \['t'\]"),
        ("columns.features", ["age", "age"], r"features names a column twice"),
        ("columns.features", ["a\nb"], r"features\[0\] must be a column name"),
        ("outcome.event", "t", r"time and event must be different"),
        ("outcome.label", "y", r"label is for kind = 'binary'"),
        ("outcome.concepts", [1], r"concepts is for source = 'omop'"),
        ("cohort", {"entry_concepts": [1]}, r"\[cohort\] is for source = 'omop'"),
    ],
)
def test_bad_file_specs_give_one_line_errors(path: str, value: object, expected: str) -> None:
    doc = _set(FILE_SPEC, path, value)
    if path == "columns.features" and value == ["age", "t"]:
        doc["columns"]["categorical"] = []
        doc["columns"]["binary"] = []
    with pytest.raises(ConfigurationError, match=expected):
        StudySpec.from_mapping(doc, where="f.toml")


def test_missing_sections_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"\[outcome\] is required"):
        StudySpec.from_mapping({"study": {"name": "a", "source": "file"}}, where="x")
    doc = _doc()
    del doc["cohort"]
    with pytest.raises(ConfigurationError, match=r"\[cohort\] is required for source = 'omop'"):
        StudySpec.from_mapping(doc, where="x")
    bad = tmp_path / "s.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(ConfigurationError, match=r"s.toml: not valid TOML"):
        load_study_spec(bad)
    with pytest.raises(ConfigurationError, match=r"must be a .toml or .json file"):
        load_study_spec(tmp_path / "s.yaml")
    with pytest.raises(ConfigurationError, match=r"not valid JSON"):
        StudySpec.from_json("{")
    with pytest.raises(ConfigurationError, match=r"must be a JSON object"):
        StudySpec.from_json("[1]")
