"""Acceptance: the study table each Eunomia site extracts equals, person by person, a
reference extraction written independently in plain DuckDB SQL over the pooled CDM.

The reference below is hand-written with a different query shape from biofed's compiler
(window functions, ordered aggregates, ANTI JOIN and FILTER clauses instead of grouped
common table expressions and NOT EXISTS), with the study's constants inline.
"""

from __future__ import annotations

import copy
from pathlib import Path

import duckdb
import numpy as np
import pytest

from biofed.core import ConfigurationError, DataError
from biofed.data import ExtractedTable, OmopDatabase, StudySpec, extract
from biofed.datasets import copy_cdm, eunomia_path, gi_bleed_study, write_eunomia_sites

REFERENCE = """
WITH
nsaid AS (
  SELECT descendant_concept_id AS cid FROM concept_ancestor
  WHERE ancestor_concept_id IN (1118084, 1124300)
  UNION SELECT 1118084 UNION SELECT 1124300),
bleed AS (
  SELECT descendant_concept_id AS cid FROM concept_ancestor WHERE ancestor_concept_id = 192671
  UNION SELECT 192671),
ulcer AS (
  SELECT descendant_concept_id AS cid FROM concept_ancestor WHERE ancestor_concept_id = 4027663
  UNION SELECT 4027663),
colitis AS (
  SELECT descendant_concept_id AS cid FROM concept_ancestor WHERE ancestor_concept_id = 81893
  UNION SELECT 81893),
paracetamol AS (
  SELECT descendant_concept_id AS cid FROM concept_ancestor WHERE ancestor_concept_id = 1127433
  UNION SELECT 1127433),
ranked AS (
  SELECT person_id, drug_exposure_start_date AS d,
         row_number() OVER (PARTITION BY person_id ORDER BY drug_exposure_start_date) AS k
  FROM drug_exposure WHERE drug_concept_id IN (SELECT cid FROM nsaid)),
firsts AS (SELECT person_id, d AS index_date FROM ranked WHERE k = 1),
observed AS (
  SELECT f.person_id, f.index_date, max(op.observation_period_end_date) AS obs_end
  FROM firsts f, observation_period op
  WHERE op.person_id = f.person_id
    AND date_diff('day', op.observation_period_start_date, f.index_date) >= 365
    AND op.observation_period_end_date >= f.index_date
  GROUP BY ALL),
prior_bleed AS (
  SELECT DISTINCT o.person_id FROM observed o JOIN condition_occurrence co
    ON co.person_id = o.person_id AND co.condition_start_date < o.index_date
  WHERE co.condition_concept_id IN (SELECT cid FROM bleed)),
cohort AS (
  SELECT o.* FROM observed o ANTI JOIN prior_bleed b ON b.person_id = o.person_id
  SEMI JOIN person p ON p.person_id = o.person_id),
outcomes AS (
  SELECT c.person_id,
         min(co.condition_start_date) FILTER (
           WHERE date_diff('day', c.index_date, co.condition_start_date) BETWEEN 1 AND 365
         ) AS first_bleed
  FROM cohort c LEFT JOIN condition_occurrence co
    ON co.person_id = c.person_id AND co.condition_concept_id IN (SELECT cid FROM bleed)
  GROUP BY c.person_id),
features AS (
  SELECT c.person_id,
    year(c.index_date) - any_value(p.year_of_birth) AS age,
    CASE any_value(p.gender_concept_id) WHEN 8507 THEN 'male' WHEN 8532 THEN 'female'
      ELSE 'other' END AS sex,
    coalesce(bool_or(co.condition_concept_id IN (SELECT cid FROM ulcer)
      AND co.condition_start_date <= c.index_date), false)::INT AS peptic_ulcer,
    coalesce(bool_or(co.condition_concept_id IN (SELECT cid FROM colitis)
      AND date_diff('day', c.index_date, co.condition_start_date) BETWEEN -1825 AND 0),
      false)::INT AS ulcerative_colitis
  FROM cohort c JOIN person p USING (person_id)
  LEFT JOIN condition_occurrence co ON co.person_id = c.person_id
  GROUP BY c.person_id, c.index_date),
drugs AS (
  SELECT c.person_id, count(de.person_id) > 0 AS acetaminophen
  FROM cohort c LEFT JOIN drug_exposure de
    ON de.person_id = c.person_id AND de.drug_concept_id IN (SELECT cid FROM paracetamol)
    AND de.drug_exposure_start_date BETWEEN c.index_date - INTERVAL 365 DAY
                                        AND c.index_date - INTERVAL 1 DAY
  GROUP BY c.person_id)
SELECT c.person_id, f.age, f.sex, f.peptic_ulcer, f.ulcerative_colitis,
       d.acetaminophen::INT AS acetaminophen,
       (o.first_bleed IS NOT NULL)::INT AS label,
       o.first_bleed, c.index_date, c.obs_end
FROM cohort c JOIN features f USING (person_id) JOIN drugs d USING (person_id)
JOIN outcomes o USING (person_id)
ORDER BY c.person_id
"""

COVARIATES = ("age", "sex", "peptic_ulcer", "ulcerative_colitis", "acetaminophen")


def reference(path: Path) -> dict[str, np.ndarray]:
    with duckdb.connect(str(path), read_only=True) as con:
        got = con.execute(REFERENCE).fetchnumpy()
    return {k.lower(): np.asarray(v) for k, v in got.items()}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return reference(eunomia_path())


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_eunomia_sites(tmp_path_factory.mktemp("eunomia-sites"), 5, seed=0)


def _concat(tables: list[ExtractedTable]) -> dict[str, np.ndarray]:
    order = np.argsort(np.concatenate([t.ids for t in tables]))
    out = {"person_id": np.concatenate([t.ids for t in tables])[order]}
    for key in tables[0].columns:
        out[key] = np.concatenate([t.columns[key] for t in tables])[order]
    for key in tables[0].targets:
        out[key] = np.concatenate([t.targets[key] for t in tables])[order]
    out["is_test"] = np.concatenate([t.is_test for t in tables])[order]
    return out


def test_per_site_extraction_equals_independent_pooled_reference(
    ref: dict[str, np.ndarray], sites: dict[str, Path]
) -> None:
    spec = gi_bleed_study()
    tables = [extract(spec, str(path), name=site) for site, path in sites.items()]
    assert all(len(t) > 50 for t in tables)  # every site holds a real share of the cohort
    got = _concat(tables)
    # plausible, non-trivial cohort: thousands of new users, hundreds of bleeds
    assert 500 < len(ref["person_id"]) < 2694
    assert 50 < ref["label"].sum() < len(ref["label"]) / 2
    np.testing.assert_array_equal(got["person_id"], ref["person_id"])
    np.testing.assert_array_equal(got["label"], ref["label"])
    np.testing.assert_array_equal(got["age"], ref["age"])
    assert got["sex"].tolist() == ref["sex"].tolist()
    for key in ("peptic_ulcer", "ulcerative_colitis", "acetaminophen"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
        assert 0 < ref[key].sum() < len(ref[key]), key  # each indicator varies
    for t in tables:
        assert dict(t.kinds) == {
            "age": "numeric",
            "sex": "categorical",
            "peptic_ulcer": "binary",
            "ulcerative_colitis": "binary",
            "acetaminophen": "binary",
        }
        assert t.outcome_kind == "binary"
        assert t.ids.dtype == np.int64
    # the split is a property of the person, the same whichever site holds them
    pooled = extract(spec, str(eunomia_path()))
    np.testing.assert_array_equal(pooled.ids, got["person_id"])
    np.testing.assert_array_equal(pooled.is_test, got["is_test"])
    assert 0.2 < pooled.is_test.mean() < 0.3


def test_time_to_event_equals_reference(ref: dict[str, np.ndarray], sites: dict[str, Path]) -> None:
    spec = gi_bleed_study("time_to_event")
    got = _concat([extract(spec, str(p)) for p in sites.values()])
    # Eunomia's death table is a placeholder without columns: censoring at min(index + 365,
    # end of observation)
    index = ref["index_date"].astype("datetime64[D]")
    censor = np.minimum(index + np.timedelta64(365, "D"), ref["obs_end"].astype("datetime64[D]"))
    has = ref["label"] == 1
    bleed_d = np.where(has, ref["first_bleed"], ref["index_date"]).astype("datetime64[D]")
    event = has & (bleed_d <= censor)
    time = np.where(event, bleed_d - index, censor - index).astype("timedelta64[D]").astype(float)
    np.testing.assert_array_equal(got["event"], event.astype(float))
    np.testing.assert_array_equal(got["time"], time)
    assert event.sum() > 50
    assert (time[~event] < 365).any()
    assert (time >= 1).all()


def _planted(tmp: Path) -> Path:
    """A copy of Eunomia with planted measurement values: Eunomia ships none."""
    path = copy_cdm(tmp / "planted.duckdb")
    with duckdb.connect(str(path)) as con:
        con.execute(
            "UPDATE measurement SET value_as_number = CAST((hash(measurement_id) % 1000) / 10.0 "
            "AS VARCHAR), unit_concept_id = CASE hash(measurement_id) % 3 WHEN 0 THEN 9529 "
            "ELSE 8582 END WHERE measurement_concept_id = 3006322"
        )
        # two values on one day for some persons: ties go to the highest measurement_id
        con.execute(
            "INSERT INTO measurement SELECT * REPLACE (measurement_id + 1e9 AS measurement_id, "
            "'999.5' AS value_as_number) FROM measurement "
            "WHERE measurement_concept_id = 3006322 AND person_id % 7 = 0"
        )
    return path


def test_latest_measurement_with_unit_filter(tmp_path: Path) -> None:
    path = _planted(tmp_path)
    doc = gi_bleed_study().to_mapping()
    doc["covariates"] = [
        {
            "name": "lab",
            "kind": "measurement",
            "concepts": [3006322],
            "window_start_days": -3650,
            "window_end_days": 0,
            "unit_concepts": [8582],
        },
        {
            "name": "lab_any_unit",
            "kind": "measurement",
            "concepts": [3006322],
            "window_start_days": -3650,
            "window_end_days": 0,
        },
    ]
    table = extract(StudySpec.from_mapping(doc, where="t"), str(path))
    ref_sql = """
    WITH idx AS (SELECT person_id, index_date FROM ({cohort}))
    SELECT i.person_id,
      (SELECT CAST(m.value_as_number AS DOUBLE) FROM measurement m
        WHERE m.person_id = i.person_id AND m.measurement_concept_id = 3006322
          AND m.value_as_number IS NOT NULL AND m.unit_concept_id {unit}
          AND m.measurement_date BETWEEN i.index_date - 3650 AND i.index_date
        ORDER BY m.measurement_date DESC, m.measurement_id DESC LIMIT 1) AS v
    FROM idx i ORDER BY i.person_id
    """
    cohort = REFERENCE.rsplit("SELECT c.person_id, f.age", 1)[0] + "SELECT * FROM cohort"
    with duckdb.connect(str(path), read_only=True) as con:
        units = (("lab", "= 8582"), ("lab_any_unit", "IS NOT DISTINCT FROM unit_concept_id"))
        for name, unit in units:
            got = con.execute(ref_sql.format(cohort=cohort, unit=unit)).fetchnumpy()
            v = got["v"]
            expected = np.asarray(v.filled(np.nan) if hasattr(v, "filled") else v, dtype=float)
            np.testing.assert_array_equal(table.ids, got["PERSON_ID"])
            np.testing.assert_array_equal(table.columns[name], expected, err_msg=name)
    lab, any_unit = table.columns["lab"], table.columns["lab_any_unit"]
    assert np.isfinite(lab).sum() > 100
    assert np.isnan(lab).sum() > 0
    assert (np.isfinite(any_unit) >= np.isfinite(lab)).all()
    assert (any_unit == 999.5).any()  # the planted same-day duplicates win their ties


def test_hostile_sources_are_refused(tmp_path: Path) -> None:
    spec = gi_bleed_study()
    with pytest.raises(ConfigurationError, match="no OMOP CDM database at"):
        extract(spec, str(tmp_path / "missing.duckdb"))
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    with pytest.raises(DataError, match=r"the OMOP CDM has no person, observation_period"):
        extract(spec, str(empty))
    # the connection is read-only: the study's SQL (or anyone's) cannot change the CDM
    with OmopDatabase.open(str(eunomia_path())) as db, pytest.raises(DataError, match="read-only"):
        db.query("DELETE FROM person")


def test_spec_values_are_bound_not_pasted() -> None:
    from biofed.data._extract import compile_omop

    spec = gi_bleed_study("time_to_event")
    sql, params, roles = compile_omop(spec)
    assert "1118084" not in sql
    assert "192671" not in sql
    assert "365" not in sql
    assert "gi-bleed" not in sql
    assert "peptic_ulcer" not in sql
    assert sql.count("?") == len(params)
    assert 1118084 in params
    assert roles[:3] == ["person_id", "time", "event"]
    bad = copy.deepcopy(spec.to_mapping())
    bad["covariates"][2]["concepts"] = ["4027663) OR (1=1"]
    with pytest.raises(ConfigurationError, match=r"concepts\[0\] must be an integer"):
        StudySpec.from_mapping(bad, where="t")


def test_time_to_event_censors_at_death(tmp_path: Path) -> None:
    """A real death table (Eunomia ships a placeholder): death ends follow-up, and an
    outcome recorded after death is no event."""
    path = copy_cdm(tmp_path / "deaths.duckdb")
    spec = gi_bleed_study("time_to_event")
    before = extract(spec, str(path))
    index = {int(r[0]): r[1] for r in _index_dates(path)}
    bleeders = before.ids[before.targets["event"] == 1][:20]
    quiet = before.ids[(before.targets["event"] == 0) & (before.targets["time"] > 100)][:20]
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE death")
        con.execute("CREATE TABLE death (person_id BIGINT, death_date DATE)")
        insert = "INSERT INTO death SELECT ?, CAST(? AS DATE) + ?"
        con.executemany(insert, [(int(p), index[int(p)], 50) for p in bleeders])
        con.executemany(insert, [(int(p), index[int(p)], 30) for p in quiet])
    after = extract(spec, str(path))
    np.testing.assert_array_equal(after.ids, before.ids)
    pos = {int(p): i for i, p in enumerate(after.ids)}
    for p in quiet:
        assert after.targets["time"][pos[int(p)]] == 30
        assert after.targets["event"][pos[int(p)]] == 0
    early = before.targets["time"][[pos[int(p)] for p in bleeders]] <= 50
    assert early.any()  # both cases below happen
    assert not early.all()
    for p in bleeders:
        i = pos[int(p)]
        if before.targets["time"][i] <= 50:  # bled before dying: still an event
            assert after.targets["event"][i] == 1
            assert after.targets["time"][i] == before.targets["time"][i]
        else:  # the bleed came after death: censored at death
            assert after.targets["event"][i] == 0
            assert after.targets["time"][i] == 50
    untouched = np.isin(after.ids, np.concatenate([bleeders, quiet]), invert=True)
    np.testing.assert_array_equal(
        after.targets["time"][untouched], before.targets["time"][untouched]
    )


def _index_dates(path: Path) -> list[tuple[int, object]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(
            "SELECT person_id, min(drug_exposure_start_date) FROM drug_exposure "
            "WHERE drug_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor "
            "WHERE ancestor_concept_id IN (1118084, 1124300)) GROUP BY person_id"
        ).fetchall()


def test_first_qualifying_event_when_not_first_occurrence(tmp_path: Path) -> None:
    """first_occurrence = false: the index is the first entry event meeting the criteria."""
    path = copy_cdm(tmp_path / "repeat.duckdb")
    with duckdb.connect(str(path)) as con:  # Eunomia has one NSAID start per person: add more
        con.execute(
            "INSERT INTO drug_exposure SELECT * REPLACE (drug_exposure_id + 1e8 AS "
            "drug_exposure_id, drug_exposure_start_date + 3000 AS drug_exposure_start_date) "
            "FROM drug_exposure WHERE drug_concept_id IN (1118084, 1124300) AND person_id % 2 = 0"
        )
    doc = gi_bleed_study().to_mapping()
    doc["cohort"]["first_occurrence"] = False
    doc["cohort"]["prior_observation_days"] = 14600  # 40 years: later exposures may qualify
    table = extract(StudySpec.from_mapping(doc, where="t"), str(path))
    doc["cohort"]["first_occurrence"] = True
    first = extract(StudySpec.from_mapping(doc, where="t"), str(path))
    with duckdb.connect(str(path), read_only=True) as con:
        got = con.execute(
            """
            WITH ev AS (
              SELECT d.person_id, d.drug_exposure_start_date AS d FROM drug_exposure d
              WHERE d.drug_concept_id IN (SELECT descendant_concept_id FROM concept_ancestor
                                          WHERE ancestor_concept_id IN (1118084, 1124300))),
            ok AS (
              SELECT ev.person_id, ev.d FROM ev
              SEMI JOIN observation_period op ON op.person_id = ev.person_id
                AND op.observation_period_start_date <= ev.d - INTERVAL 14600 DAY
                AND op.observation_period_end_date >= ev.d
              WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence c
                WHERE c.person_id = ev.person_id AND c.condition_start_date < ev.d
                AND c.condition_concept_id IN (SELECT descendant_concept_id
                  FROM concept_ancestor WHERE ancestor_concept_id = 192671)))
            SELECT person_id, year(min(d)) - any_value(p.year_of_birth) AS age
            FROM ok JOIN person p USING (person_id) GROUP BY person_id ORDER BY person_id
            """
        ).fetchall()
    assert table.ids.tolist() == [r[0] for r in got]
    assert table.columns["age"].tolist() == [float(r[1]) for r in got]
    assert len(table) > len(first)  # later qualifying exposures add persons
