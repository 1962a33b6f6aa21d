"""extract() on CSV/Parquet study sources: columns by role, kinds, targets, split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biofed.core import DataError
from biofed.data import StudySpec, extract

SPEC: dict[str, Any] = {
    "study": {"name": "dialysis", "source": "file", "seed": 3, "test_fraction": 0.3},
    "columns": {
        "id": "patient_id",
        "features": ["age", "centre", "diabetic", "albumin"],
        "categorical": ["centre"],
        "binary": ["diabetic"],
    },
    "outcome": {"kind": "time_to_event", "time": "t", "event": "e"},
}
CSV = """patient_id,age,centre,diabetic,albumin,t,e,note
10,61,A,1,3.5,100,1,x
11,70,B,0,,20.5,0,y
12,55,,true,4.1,300,0,z
13,48,A,0,2.9,7,1,w
"""


def _spec(**changes: Any) -> StudySpec:
    doc = {k: dict(v) for k, v in SPEC.items()}
    for key, value in changes.items():
        section, field = key.split("__")
        doc[section][field] = value
    return StudySpec.from_mapping(doc, where="t")


def _csv(tmp_path: Path, text: str = CSV) -> Path:
    path = tmp_path / "site.csv"
    path.write_text(text.replace(",true,", ",1,"))
    return path


def test_csv_columns_by_role(tmp_path: Path) -> None:
    table = extract(_spec(), _csv(tmp_path))
    assert table.ids.tolist() == [10, 11, 12, 13]
    assert table.covariate_names == ("age", "centre", "diabetic", "albumin")
    assert table.columns["centre"].tolist() == ["A", "B", None, "A"]
    np.testing.assert_array_equal(table.columns["albumin"], [3.5, np.nan, 4.1, 2.9])
    assert table.columns["diabetic"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert table.targets["time"].tolist() == [100, 20.5, 300, 7]
    assert table.targets["event"].tolist() == [1, 0, 0, 1]
    assert dict(table.kinds)["centre"] == "categorical"
    assert table.outcome_kind == "time_to_event"
    assert "note" not in table.columns  # only the listed features are used
    with pytest.raises(ValueError, match="read-only"):
        table.columns["age"][0] = 0  # read-only


def test_parquet_with_booleans_and_split_column(tmp_path: Path) -> None:
    path = tmp_path / "site.parquet"
    pq.write_table(
        pa.table(
            {
                "patient_id": [1, 2, 3],
                "age": [50.0, None, 70.0],
                "centre": ["x", "y", "x"],
                "diabetic": [True, False, None],
                "albumin": [1, 2, 3],
                "t": [5.0, 6.0, 7.0],
                "e": [True, False, True],
                "split": ["train", "test", "train"],
            }
        ),
        path,
    )
    table = extract(_spec(columns__split="split"), path)
    assert table.is_test.tolist() == [False, True, False]
    assert table.targets["event"].tolist() == [1.0, 0.0, 1.0]
    np.testing.assert_array_equal(table.columns["diabetic"], [1.0, 0.0, np.nan])


def test_hash_split_is_deterministic_per_id(tmp_path: Path) -> None:
    rows = "\n".join(f"{i},{i % 90},A,0,1.0,{i + 1},{i % 2}" for i in range(2000))
    path = _csv(tmp_path, "patient_id,age,centre,diabetic,albumin,t,e\n" + rows + "\n")
    a = extract(_spec(), path)
    assert 0.27 < a.is_test.mean() < 0.33
    shuffled = tmp_path / "shuffled.csv"
    lines = path.read_text().splitlines()
    shuffled.write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    b = extract(_spec(), shuffled)
    assert dict(zip(b.ids.tolist(), b.is_test.tolist(), strict=False)) == dict(
        zip(a.ids.tolist(), a.is_test.tolist(), strict=False)
    )
    c = extract(_spec(study__seed=4), path)
    assert (c.is_test != a.is_test).any()


@pytest.mark.parametrize(
    ("old", "new", "changes", "expected"),
    [
        ("100,1,x", "100,3,x", {}, r"event column 'e' must be coded 0/1 or true/false"),
        ("20.5,0", "-1,0", {}, r"time column 't' has negative values"),
        ("20.5,0", ",0", {}, r"time column 't' has missing"),
        ("11,70", "10,70", {}, r"duplicate ids"),
        ("11,70", "eleven,70", {}, r"id column 'patient_id' must hold integers"),
        (",1,3.5", ",5,3.5", {}, r"binary feature column 'diabetic' must be coded 0/1"),
        ("", "", {"columns__categorical": []}, r"feature column 'centre' holds .*categorical"),
        ("", "", {"columns__split": "note"}, r"split column 'note' must hold 'train' or 'test'"),
        ("", "", {"columns__features": ["age", "weight"]}, r"no column\(s\) \['weight'\]"),
    ],
)
def test_bad_tables_name_the_fix(
    tmp_path: Path, old: str, new: str, changes: dict[str, Any], expected: str
) -> None:
    text = CSV.replace(old, new, 1) if old else CSV
    if changes.get("columns__features"):
        changes = {**changes, "columns__categorical": [], "columns__binary": []}
    with pytest.raises(DataError, match=expected):
        extract(_spec(**changes), _csv(tmp_path, text))


def test_event_coded_one_two_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = CSV.replace("100,1,x", "100,2,x").replace("20.5,0", "20.5,1").replace("300,0", "300,1")
    text = text.replace("7,1,w", "7,2,w")
    with pytest.raises(DataError, match=r"event column 'e' is coded 1/2 .*recode it as 0/1"):
        extract(_spec(), _csv(tmp_path, text))


def test_binary_label(tmp_path: Path) -> None:
    spec = StudySpec.from_mapping(
        {
            "study": {"name": "cls", "source": "file"},
            "columns": {"features": ["age"]},
            "outcome": {"kind": "binary", "label": "e"},
        },
        where="t",
    )
    table = extract(spec, _csv(tmp_path))
    assert table.targets["label"].tolist() == [1, 0, 0, 1]
    assert table.ids.tolist() == [0, 1, 2, 3]  # row numbers without an id column
