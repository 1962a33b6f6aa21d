"""Eunomia as federated OMOP sites: an exact, skewed partition of the persons, and a scaled CDM."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from biofed.core import ConfigurationError
from biofed.data import OmopDatabase, extract
from biofed.datasets import (
    EUNOMIA_PERSONS,
    eunomia_path,
    gi_bleed_study,
    scale_cdm,
    write_eunomia_sites,
)


def _persons(path: Path, table: str = "person") -> np.ndarray:
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(f"SELECT person_id FROM {table}").fetchall()
    return np.array(sorted(r[0] for r in rows), dtype=np.int64)


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_eunomia_sites(tmp_path_factory.mktemp("sites"), 5, seed=0)


def test_sites_partition_persons_exactly(sites: dict[str, Path]) -> None:
    assert list(sites) == [f"site-{k}" for k in range(5)]
    per_site = {name: _persons(path) for name, path in sites.items()}
    everyone = np.concatenate(list(per_site.values()))
    assert len(everyone) == EUNOMIA_PERSONS
    np.testing.assert_array_equal(np.sort(everyone), _persons(eunomia_path()))
    sizes = [len(p) for p in per_site.values()]
    assert sizes == sorted(sizes)
    assert sizes[-1] > 3 * sizes[0]
    births = []
    for name, path in sites.items():
        with duckdb.connect(str(path), read_only=True) as con:
            births.append(con.execute("SELECT avg(year_of_birth) FROM person").fetchone()[0])
            # every clinical table holds only the site's persons; vocabularies are whole
            for table in ("condition_occurrence", "drug_exposure", "observation_period"):
                got = con.execute(f"SELECT DISTINCT person_id FROM {table}").fetchall()
                assert {r[0] for r in got} <= set(per_site[name].tolist()), table
            assert con.execute("SELECT count(*) FROM concept_ancestor").fetchone()[0] == 65690
    assert births == sorted(births)
    assert births[-1] - births[0] > 5
    # all clinical rows are kept, across the sites
    with duckdb.connect(str(eunomia_path()), read_only=True) as con:
        total = con.execute(
            "SELECT count(*) FROM condition_occurrence WHERE person_id IN "
            "(SELECT person_id FROM person)"
        ).fetchone()[0]
    counts = []
    for path in sites.values():
        with OmopDatabase.open(str(path)) as db:
            counts.append(db.describe().row_counts["condition_occurrence"])
    assert sum(counts) == total


def test_site_extractions_concatenate_to_the_pooled_one(sites: dict[str, Path]) -> None:
    spec = gi_bleed_study("time_to_event")
    pooled = extract(spec, str(eunomia_path()))
    parts = [extract(spec, str(p)) for p in sites.values()]
    ids = np.concatenate([t.ids for t in parts])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], pooled.ids)
    for key in pooled.columns:
        got = np.concatenate([t.columns[key] for t in parts])[order]
        assert got.tolist() == pooled.columns[key].tolist(), key
    for key in pooled.targets:
        got = np.concatenate([t.targets[key] for t in parts])[order]
        np.testing.assert_array_equal(got, pooled.targets[key])


@pytest.mark.slow
def test_same_seed_same_sites_other_seed_other_sites(
    sites: dict[str, Path], tmp_path: Path
) -> None:
    again = write_eunomia_sites(tmp_path / "a", 5, seed=0)
    other = write_eunomia_sites(tmp_path / "b", 5, seed=1)
    np.testing.assert_array_equal(_persons(again["site-2"]), _persons(sites["site-2"]))
    assert not np.array_equal(_persons(other["site-2"]), _persons(sites["site-2"]))
    with pytest.raises(ConfigurationError, match=r"num_sites must be an integer in 2\.\.50"):
        write_eunomia_sites(tmp_path / "c", 1)


def test_scaled_cdm_copies_persons_with_new_ids(tmp_path: Path) -> None:
    path = scale_cdm(tmp_path / "x3.duckdb", 3)
    persons = _persons(path)
    assert len(persons) == 3 * EUNOMIA_PERSONS
    assert len(np.unique(persons)) == len(persons)
    spec = gi_bleed_study()
    base = extract(spec, str(eunomia_path()))
    big = extract(spec, str(path))
    assert len(big) == 3 * len(base)
    copy2 = big.ids >= 2 * 10**10
    np.testing.assert_array_equal(big.ids[copy2] - 2 * 10**10, base.ids)
    for key in base.columns:
        assert big.columns[key][copy2].tolist() == base.columns[key].tolist(), key
    np.testing.assert_array_equal(big.targets["label"][copy2], base.targets["label"])


def test_example_spec_file_is_the_gi_bleed_study() -> None:
    from biofed.data import load_study_spec

    example = Path(__file__).parents[2] / "examples" / "gi-bleed-study.toml"
    assert load_study_spec(example).digest == gi_bleed_study().digest
