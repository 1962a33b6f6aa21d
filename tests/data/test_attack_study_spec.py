"""Attacks on the study spec (issue 13): every string field, resource exhaustion, names that
collide with derived feature names. A spec crosses into every site inside the job, so each
attack must end in one ConfigurationError line naming the field — never another exception."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from biofed.core import ConfigurationError
from biofed.data import StudySpec, load_study_spec
from biofed.datasets import gi_bleed_study


def spec_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(gi_bleed_study().to_json())
    change(data)
    return data


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigurationError) as info:
        StudySpec.from_mapping(data)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("study", "name", "x'; DROP TABLE person; --"),
        ("study", "name", "a\nb"),
        ("study", "source", "omop; ATTACH 'x'"),
        ("cohort", "entry_domain", "drug_exposure --"),
        ("cohort", "exclude_domain", "condition' OR 1=1"),
        ("outcome", "domain", "death) UNION SELECT 1 --"),
        ("outcome", "kind", "binary'"),
    ],
)
def test_sql_in_any_string_field_is_refused_naming_it(section: str, key: str, value: str) -> None:
    message = refused(spec_with(lambda d: d[section].__setitem__(key, value)))
    assert f"[{section}]" in message
    assert key in message


def test_a_covariate_name_or_kind_carrying_sql_is_refused() -> None:
    bad_name = {"name": "age) FROM person; --", "kind": "age"}
    assert "name" in refused(spec_with(lambda d: d["covariates"].append(bad_name)))
    bad_kind = {"name": "x", "kind": "measurement; DROP TABLE concept"}
    assert "kind" in refused(spec_with(lambda d: d["covariates"].append(bad_kind)))


@pytest.mark.parametrize(
    "name", ["sex=female", "age__missing", "sex=other", "x__y", "age missing", "", "a" * 129]
)
def test_covariate_names_that_could_collide_with_derived_features_are_refused(name: str) -> None:
    # one-hot features are "<name>=<category>", indicators "<name>__missing"
    refused(spec_with(lambda d: d["covariates"].append({"name": name, "kind": "age"})))


def test_a_covariate_named_twice_is_refused() -> None:
    message = refused(spec_with(lambda d: d["covariates"].append({"name": "age", "kind": "age"})))
    assert "two covariates" in message


def test_a_file_feature_colliding_with_a_one_hot_name_is_refused_before_any_fit() -> None:
    data = {
        "study": {"name": "f", "source": "file"},
        "columns": {"features": ["sex", "sex=female"], "categorical": ["sex"]},
        "outcome": {"kind": "binary", "label": "y"},
    }
    with pytest.raises(ConfigurationError, match="sex=female"):
        StudySpec.from_mapping(data)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("cohort", "prior_observation_days"),
        ("cohort", "exclude_window_days"),
        ("outcome", "window_start_days"),
        ("outcome", "window_end_days"),
        ("study", "seed"),
    ],
)
@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, 1.5, True, "1"])
def test_extreme_or_mistyped_integers_are_refused(section: str, key: str, value: object) -> None:
    assert key in refused(spec_with(lambda d: d[section].__setitem__(key, value)))


def test_an_enormous_concept_list_is_refused_before_any_site_queries_it() -> None:
    concepts = list(range(1, 200_001))
    message = refused(spec_with(lambda d: d["cohort"].__setitem__("entry_concepts", concepts)))
    assert "entry_concepts" in message
    assert "at most" in message


def test_an_enormous_covariate_list_is_refused() -> None:
    many = [{"name": f"c{i}", "kind": "age"} for i in range(20_000)]
    assert "at most" in refused(spec_with(lambda d: d.__setitem__("covariates", many)))


def test_an_enormous_file_feature_list_is_refused() -> None:
    data = {
        "study": {"name": "f", "source": "file"},
        "columns": {"features": [f"c{i}" for i in range(20_000)]},
        "outcome": {"kind": "binary", "label": "y"},
    }
    with pytest.raises(ConfigurationError, match="at most"):
        StudySpec.from_mapping(data)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # deeper than the JSON parser's recursion
        '{"study": {"seed": ' + "9" * 5000 + "}}",  # int longer than Python converts
        " " * (2 << 20),  # longer than any instruction carries
        '{"study": {"name": "x", "test_fraction": NaN}}',
    ],
    ids=["deep", "long-int", "huge", "nan"],
)
def test_hostile_spec_json_is_refused_in_one_line(text: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        StudySpec.from_json(text)
    assert "\n" not in str(info.value)


def test_a_toml_spec_nested_too_deeply_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "deep.toml"
    file.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match="TOML"):
        load_study_spec(file)
