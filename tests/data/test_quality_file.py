"""The file variant of the quality checks: schema, missingness, binary events, ranges and
allowed values, each counted exactly."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biofed.core import ConfigurationError
from biofed.data import FileExpectations, StudySpec, run_quality_checks


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    file = tmp_path / "cohort.parquet"
    n = 40
    pq.write_table(
        pa.table(
            {
                "age": [50.0 + i if i % 10 else None for i in range(n)],  # 4 missing
                "bmi": [float("nan") if i < 25 else 25.0 for i in range(n)],  # 25 NaN
                "event": [2 if i < 3 else i % 2 for i in range(n)],  # 3 coded 2
                "time": [-1.0 if i == 7 else 10.0 + i for i in range(n)],  # 1 negative
                "split": ["train" if i % 4 else "test" for i in range(n - 1)] + ["valid"],
            }
        ),
        file,
    )
    return file


def test_each_file_check_counts_exactly(cohort: Path) -> None:
    expect = FileExpectations(
        columns=(("age", "double"), ("event", "double"), ("site", "string")),
        required=("event", "time", "split"),
        binary=("event",),
        ranges={"time": (0.0, None), "age": (0.0, 85.0)},
        allowed={"split": ("train", "test")},
    )
    report = run_quality_checks(cohort, expect=expect)
    got = {c.key: (c.violated, c.total, c.passed, c.fatal) for c in report.checks}
    assert got["missingness:cohort.age"] == (4, 40, True, False)
    assert got["missingness:cohort.bmi"] == (25, 40, False, False)  # > 50% missing
    assert got["isRequired:cohort.event"] == (0, 40, True, True)
    assert got["isBinary:cohort.event"] == (3, 40, False, True)
    assert got["plausibleValueLow:cohort.time"] == (1, 40, False, False)
    assert got["plausibleValueHigh:cohort.age"] == (4, 36, False, False)  # 86…89
    assert got["allowedValues:cohort.split"] == (1, 40, False, True)
    assert got["columnType:cohort.event"] == (1, 1, False, False)  # int64, not double
    assert got["columnPresent:cohort.site"] == (1, 1, False, False)
    assert [c.key for c in report.fatal_failures] == [
        "isBinary:cohort.event",
        "allowedValues:cohort.split",
    ]


def test_without_expectations_only_missingness_is_checked(cohort: Path) -> None:
    report = run_quality_checks(str(cohort))
    assert {c.name for c in report.checks} == {"missingness"}
    assert report.source == "file"


def test_bad_expectations_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="low > high"):
        FileExpectations(ranges={"x": (2.0, 1.0)})
    with pytest.raises(ConfigurationError, match="max_missing"):
        FileExpectations(max_missing=2.0)


def test_a_file_study_spec_gives_the_expectations(cohort: Path) -> None:
    spec = StudySpec.from_mapping(
        {
            "study": {"name": "s", "source": "file"},
            "columns": {"split": "split", "features": ["age", "bmi", "weight"]},
            "outcome": {"kind": "time_to_event", "time": "time", "event": "event"},
        }
    )
    expect = FileExpectations.from_study(spec)
    report = run_quality_checks(cohort, expect=expect)
    assert [c.key for c in report.fatal_failures] == [
        "columnPresent:cohort.weight",
        "isBinary:cohort.event",
        "allowedValues:cohort.split",
    ]
    assert report.get("plausibleValueLow:cohort.time").violated == 1
