"""Tests of biofed.data's table loaders and per-site files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biofed.core import ConfigurationError, DataError
from biofed.data import (
    Dataset,
    FederatedDataset,
    SiteData,
    load_site_file,
    load_split_table,
    load_table,
    write_site_files,
)

CSV = """id,age,smoker,stage,hospital,E,T
p1,61,true,2,Hôpital Nord,1,100.5
p2,45,false,1,St. Mary's,0,200.0
p3,70,true,3,Hôpital Nord,1,50.25
p4,38,false,1,St. Mary's,0,365.0
p5,52,true,2,Charité,0,120.0
"""


@pytest.fixture
def csv_path(tmp_path: Path) -> Path:
    path = tmp_path / "cohort.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


def _write(tmp_path: Path, text: str, name: str = "bad.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_csv_single_dataset(csv_path: Path) -> None:
    ds = load_table(
        csv_path,
        target_columns={"event": "E", "time": "T"},
        id_column="id",
        exclude=("hospital",),
    )
    assert isinstance(ds, Dataset)
    assert ds.name == "cohort"
    assert ds.feature_names == ("age", "smoker", "stage")
    assert ds.features.dtype == np.float32
    np.testing.assert_array_equal(ds.features[:, 1], [1, 0, 1, 0, 1])  # bool → 0/1
    np.testing.assert_array_equal(ds.features[:, 0], [61, 45, 70, 38, 52])
    np.testing.assert_array_equal(ds.target("event"), [1, 0, 1, 0, 0])
    np.testing.assert_allclose(ds.target("time"), [100.5, 200.0, 50.25, 365.0, 120.0])
    assert ds.target("time").dtype == np.float64


def test_explicit_feature_columns_keep_order(csv_path: Path) -> None:
    ds = load_table(
        csv_path, feature_columns=["stage", "age"], target_columns={"label": "E"}, name="x"
    )
    assert ds.feature_names == ("stage", "age")
    assert ds.name == "x"
    np.testing.assert_array_equal(ds.features[0], [2, 61])


def test_natural_split_by_site(csv_path: Path) -> None:
    sites = load_table(
        csv_path, target_columns={"event": "E", "time": "T"}, site_column="hospital", id_column="id"
    )
    assert list(sites) == ["Hopital-Nord", "St.-Mary-s", "Charite"]  # first-seen order
    assert [len(d) for d in sites.values()] == [2, 2, 1]
    assert sites["Hopital-Nord"].name == "cohort-Hopital-Nord"
    np.testing.assert_array_equal(sites["St.-Mary-s"].features[:, 0], [45, 38])
    assert "hospital" not in sites["Charite"].feature_names


def test_integer_site_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "x,site,y\n1,3,0\n2,1,1\n3,3,1\n", "ints.csv")
    sites = load_table(path, target_columns={"label": "y"}, site_column="site")
    assert list(sites) == ["3", "1"]
    np.testing.assert_array_equal(sites["3"].target("label"), [0, 1])


def test_site_names_that_collide_or_vanish(tmp_path: Path) -> None:
    clash = _write(tmp_path, "x,site\n1,a b\n2,a-b\n", "clash.csv")
    with pytest.raises(DataError, match="both become site 'a-b'"):
        load_table(clash, site_column="site")
    empty = _write(tmp_path, "x,site\n1,***\n", "empty.csv")
    with pytest.raises(DataError, match="cannot turn"):
        load_table(empty, site_column="site")
    missing = _write(tmp_path, "x,site\n1,\n2,a\n", "missing.csv")
    with pytest.raises(DataError, match="site column 'site' has 1 missing"):
        load_table(missing, site_column="site")


def test_parquet_roundtrip_and_types(tmp_path: Path) -> None:
    table = pa.table(
        {
            "a": pa.array([1.5, 2.5, 3.5], pa.float32()),
            "b": pa.array([1, 2, 3], pa.int16()),
            "flag": pa.array([True, False, True]),
            "y": pa.array([0, 1, 0], pa.int8()),
        }
    )
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, row_group_size=2)  # several chunks
    ds = load_table(path, target_columns={"label": "y"})
    np.testing.assert_array_equal(ds.features, [[1.5, 1, 1], [2.5, 2, 0], [3.5, 3, 1]])
    np.testing.assert_array_equal(ds.target("label"), [0, 1, 0])
    same = load_table(tmp_path / "t.parquet", format="parquet", target_columns={"label": "y"})
    np.testing.assert_array_equal(same.features, ds.features)


def test_loading_does_not_import_pandas(csv_path: Path) -> None:
    # pyarrow's to_numpy imports pandas when installed (half a second); the loader avoids it.
    code = (
        "import sys; from biofed.data import load_table; "
        f"load_table({str(csv_path)!r}, site_column='hospital', id_column='id', "
        "target_columns={'e': 'E'}); assert 'pandas' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b\n1,x\n2,y\n", "feature column 'b' has type string.*one-hot encode"),
        ("a,b\n1,\n2,3\n3,\n", "feature column 'b' has 2 missing values"),
        ("a,b\n1,NaN\n2,3\n", "feature column 'b' has 1 missing"),
        ("a,b\n1,inf\n2,3\n", "feature column 'b' has 1 infinite"),
        ("a,y\n1,x\n2,y\n", "target column 'y' has type string"),
        ("a,y\n1,\n2,1\n", "target column 'y' has 1 missing"),
        ("a,a\n1,2\n", "duplicate column names"),
        ("a,y\n", "has no rows"),
        ("", "cannot read"),
        ("a,y\n1,2,3,4\n", "cannot read"),
    ],
)
def test_bad_csv(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=match):
        load_table(path, target_columns={"t": "y"} if ",y" in text.split("\n")[0] else None)


def test_unknown_columns_listed(csv_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown columns \['nope'\].*'age'"):
        load_table(csv_path, target_columns={"label": "nope"})
    with pytest.raises(DataError, match="unknown feature columns"):
        load_table(csv_path, feature_columns=["age", "weight"])
    with pytest.raises(DataError, match="unknown excluded columns"):
        load_table(csv_path, exclude=["weight"])
    with pytest.raises(DataError, match="unknown columns"):
        load_table(csv_path, site_column="region")


def test_feature_columns_must_not_leak_targets(csv_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="overlap"):
        load_table(csv_path, feature_columns=["age", "E"], target_columns={"event": "E"})
    with pytest.raises(DataError, match="no feature columns"):
        load_table(csv_path, exclude=["age", "smoker", "stage", "hospital", "id", "E", "T"])


def test_file_and_format_errors(tmp_path: Path, csv_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="cannot tell the format"):
        load_table(_write(tmp_path, "a\n1\n", "data.txt"))
    with pytest.raises(DataError, match="unsupported format"):
        load_table(csv_path, format="excel")  # type: ignore[call-overload]
    with pytest.raises(DataError, match="cannot read"):
        load_table(csv_path, format="parquet")
    with pytest.raises(DataError, match="is not a file"):
        load_table(tmp_path)


def _federation() -> FederatedDataset:
    rng = np.random.default_rng(0)

    def ds(name: str, n: int) -> Dataset:
        return Dataset(
            name=name,
            features=rng.normal(size=(n, 3)).astype(np.float32),
            feature_names=("age, years", "x 1", "z"),
            targets={"event": rng.integers(0, 2, n).astype(np.float64), "time": rng.random(n)},
        )

    return FederatedDataset(
        name="fed",
        sites={
            "a": SiteData(train=ds("a-train", 7), test=ds("a-test", 3)),
            "b": SiteData(train=ds("b-train", 4)),
        },
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_site_files_roundtrip(tmp_path: Path, fmt: str) -> None:
    fed = _federation()
    paths = write_site_files(fed, tmp_path / "out", format=fmt)  # type: ignore[arg-type]
    assert paths == {s: tmp_path / "out" / f"{s}.{fmt}" for s in ("a", "b")}
    for site, path in paths.items():
        back = load_site_file(path, target_columns={"event": "event", "time": "time"})
        original = fed.sites[site]
        for which in ("train", "test"):
            want = original.test if which == "test" else original.train
            got = back.test if which == "test" else back.train
            if want is None:
                assert got is None
                continue
            assert got is not None
            assert got.name == f"{site}-{which}"
            assert got.feature_names == want.feature_names
            np.testing.assert_array_equal(got.features, want.features)  # float32 exact
            for key in ("event", "time"):
                np.testing.assert_array_equal(got.target(key), want.target(key))


def test_site_file_errors(tmp_path: Path) -> None:
    bad = _write(tmp_path, "x,split\n1,train\n2,validation\n")
    with pytest.raises(DataError, match="must hold 'train'"):
        load_site_file(bad)
    only_test = _write(tmp_path, "x,split\n1,test\n", "t.csv")
    with pytest.raises(DataError, match="must hold 'train'"):
        load_site_file(only_test)
    clash = FederatedDataset(
        name="f",
        sites={
            "s": SiteData(
                train=Dataset(name="d", features=np.ones((2, 1)), feature_names=("split",))
            )
        },
    )
    with pytest.raises(DataError, match="rename the clashing feature"):
        write_site_files(clash, tmp_path)
    with pytest.raises(ConfigurationError, match="format"):
        write_site_files(_federation(), tmp_path, format="xlsx")  # type: ignore[arg-type]


def test_load_split_table(tmp_path: Path) -> None:
    path = tmp_path / "all.csv"
    path.write_text(
        "site,split,pid,x,y\n"
        + "".join(
            f"{'AB'[i % 2]},{'test' if i % 4 < 2 else 'train'},{i},{i / 10},{i % 3 == 0:d}\n"
            for i in range(16)
        )
    )
    sites = load_split_table(
        path,
        site_column="site",
        split_column="split",
        id_column="pid",
        target_columns={"label": "y"},
    )
    assert list(sites) == ["A", "B"]
    a = sites["A"]
    assert a.train.feature_names == ("x",)
    assert a.test is not None
    assert a.train.features[:, 0].tolist() == pytest.approx([0.2, 0.6, 1.0, 1.4])
    assert a.test.features[:, 0].tolist() == pytest.approx([0.0, 0.4, 0.8, 1.2])
    path.write_text("site,split,x,y\nA,train,1,0\nA,dev,2,1\n")
    with pytest.raises(DataError, match="'dev'"):
        load_split_table(
            path, site_column="site", split_column="split", target_columns={"label": "y"}
        )
