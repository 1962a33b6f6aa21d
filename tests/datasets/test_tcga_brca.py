"""Tests of the bundled Fed-TCGA-BRCA dataset against FLamby's recipe and README."""

from __future__ import annotations

import csv
import hashlib
import io
import time
from collections.abc import Iterator
from importlib import resources

import numpy as np
import pytest

from biofed.core import DataError
from biofed.data import FederatedDataset
from biofed.datasets import (
    TCGA_BRCA_REGIONS,
    TCGA_BRCA_SITES,
    _tcga_brca,
    flamby_tcga_brca_baselines,
    load_tcga_brca,
)

TRAIN = [248, 156, 164, 129, 129, 40]
TEST = [63, 40, 42, 33, 33, 11]
EVENTS_TRAIN = [45, 35, 14, 16, 7, 2]
EVENTS_TEST = [14, 4, 8, 3, 2, 1]
SHA256 = {
    "brca.csv": "07cb53423f7d579d33cfdbf2cba57b2aee75318b85866c68ce39a75b1f1ba020",
    "train_test_split.csv": "1249c6543a4060ff0fdaf8510fc37017755836db6c9fc5e6af96057c36510990",
    "centers.csv": "d610df2dae0203ea229c9579747ed3eb8d28e137c5378f55acc6fe6b4632bb1d",
    "flamby_baselines.csv": "ef44be57ba81318201fa430cd0170e8c2286679057975080086aa52c29c2cdd2",
}


def _bundled(name: str) -> bytes:
    return (resources.files("biofed.datasets") / "fed_tcga_brca" / name).read_bytes()


def _csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_bundled(name).decode())))


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    load_tcga_brca.cache_clear()
    yield
    load_tcga_brca.cache_clear()


def test_sites_regions_and_counts() -> None:
    fed = load_tcga_brca()
    assert isinstance(fed, FederatedDataset)
    assert fed.name == "tcga-brca"
    assert tuple(fed.sites) == TCGA_BRCA_SITES == tuple(f"center-{k}" for k in range(6))
    assert TCGA_BRCA_REGIONS == ("Northeast", "South", "West", "Midwest", "Europe", "Canada")
    for k, (site, data) in enumerate(fed.sites.items()):
        assert data.test is not None
        assert (len(data.train), len(data.test)) == (TRAIN[k], TEST[k])
        assert data.train.target("event").sum() == EVENTS_TRAIN[k]
        assert data.test.target("event").sum() == EVENTS_TEST[k]
        assert data.train.name == f"tcga-brca-{site}-train"
        assert data.test.name == f"tcga-brca-{site}-test"
    assert len(fed.pooled("train")) == 866
    assert len(fed.pooled("test")) == 222


def test_features_and_targets() -> None:
    pooled = load_tcga_brca().pooled("train")
    assert pooled.num_features == 39
    assert pooled.features.dtype == np.float32
    header = next(csv.reader(io.StringIO(_bundled("brca.csv").decode())))
    assert pooled.feature_names == tuple(header[1:40])
    assert pooled.feature_names[0] == "age_at_index"
    assert "primary_diagnosis_Infiltrating duct carcinoma, NOS" in pooled.feature_names
    age = pooled.features[:, 0]
    assert age.min() >= 26  # unscaled
    assert age.max() <= 90
    assert set(np.unique(pooled.features[:, 1:])) <= {0.0, 1.0}
    assert set(np.unique(pooled.target("event"))) == {0.0, 1.0}
    assert pooled.target("time").dtype == np.float64
    assert pooled.target("time").min() >= 0
    assert not pooled.features.flags.writeable


def test_matches_flamby_recipe_row_by_row() -> None:
    """Rebuild each split independently with the csv module and compare exactly."""
    by_pid = {row["pid"]: row for row in _csv("brca.csv")}
    split = _csv("train_test_split.csv")
    fed = load_tcga_brca()
    for k, site in enumerate(TCGA_BRCA_SITES):
        for which in ("train", "test"):
            pids = [r["pid"] for r in split if r["fold2"] == f"{which}_{k}"]
            rows = [by_pid[p] for p in pids]
            ds = fed.sites[site].split(which)
            want = np.array([[float(r[c]) for c in ds.feature_names] for r in rows], np.float32)
            np.testing.assert_array_equal(ds.features, want)
            np.testing.assert_array_equal(ds.target("event"), [float(r["E"]) for r in rows])
            np.testing.assert_array_equal(ds.target("time"), [float(r["T"]) for r in rows])


def test_extra_rows_excluded() -> None:
    brca = _csv("brca.csv")
    split_pids = {r["pid"] for r in _csv("train_test_split.csv")}
    extra = [r for r in brca if r["pid"] not in split_pids]
    assert len(brca) == 1096
    assert len(split_pids) == 1088
    assert len(extra) == 8
    assert {r["pid"].split("-")[1] for r in extra} == {"PL", "JL", "5L"}
    fed = load_tcga_brca()
    assert sum(len(d.train) + len(d.split("test")) for d in fed.sites.values()) == 1088


def test_bundled_files_checksums() -> None:
    for name, digest in SHA256.items():
        assert hashlib.sha256(_bundled(name)).hexdigest() == digest, name
    readme = _bundled("README.md").decode()
    for digest in SHA256.values():
        assert digest in readme


@pytest.mark.usefixtures("fresh_cache")
@pytest.mark.parametrize("name", ["brca.csv", "train_test_split.csv"])
def test_modified_file_rejected(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = _tcga_brca._read_bundled

    def tampered(filename: str) -> bytes:
        data = real(filename)
        return data.replace(b",90,", b",91,", 1) + b"\n" if filename == name else data

    monkeypatch.setattr(_tcga_brca, "_read_bundled", tampered)
    with pytest.raises(DataError, match=f"bundled file fed_tcga_brca/{name} was modified"):
        load_tcga_brca()


@pytest.mark.usefixtures("fresh_cache")
def test_missing_file_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_tcga_brca, "_FOLDER", "no_such_folder")
    with pytest.raises(DataError, match=r"missing.*reinstall biofed"):
        load_tcga_brca()


@pytest.mark.usefixtures("fresh_cache")
def test_cached_and_fast() -> None:
    start = time.perf_counter()
    first = load_tcga_brca()
    elapsed = time.perf_counter() - start
    assert load_tcga_brca() is first
    assert elapsed < 2.0  # generous bound for slow CI; typically a few tens of milliseconds


def test_flamby_baselines() -> None:
    baselines = flamby_tcga_brca_baselines()
    expected_methods = [
        "Pooled Training",
        *(f"Local {k}" for k in range(6)),
        "FedAvg",
        "FedProx",
        "Scaffold",
        "Cyclic",
        "FedAdam",
        "FedYogi",
        "FedAdagrad",
    ]
    assert list(baselines) == expected_methods
    fedadam = baselines["FedAdam"]
    assert fedadam["mean_of_local_tests"] == pytest.approx(0.8152)
    assert fedadam["std"] == pytest.approx(0.0256)
    assert fedadam["pooled_test_mean"] == pytest.approx(0.8421)
    assert (fedadam["min_seed"], fedadam["max_seed"]) == (0.7769, 0.8408)
    assert baselines["Pooled Training"]["mean_of_local_tests"] == pytest.approx(0.6759)
    for row in baselines.values():
        assert {"mean_of_local_tests", "std", "min_seed", "max_seed", "pooled_test_mean"} <= set(
            row
        )
        assert row["min_seed"] <= row["mean_of_local_tests"] <= row["max_seed"]
        means = [row[f"client_test_{k}_mean"] for k in range(6)]
        assert np.mean(means) == pytest.approx(row["mean_of_local_tests"], abs=2e-4)
    baselines["FedAdam"]["std"] = -1.0
    assert flamby_tcga_brca_baselines()["FedAdam"]["std"] == pytest.approx(0.0256)
