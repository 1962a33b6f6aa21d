"""OMOP study extraction and federated preprocessing against a bare DuckDB query.

Builds 5 non-IID Eunomia sites and a 20× scaled Eunomia CDM in a temporary folder, then per
CDM times (best of ``--repeats``, default 15):

* ``bare``: one hand-written DuckDB query producing the same GI-bleed study matrix (first
  celecoxib/diclofenac exposure, 365 days prior observation, no earlier GI bleed; label:
  bleed in days 1–365; age, sex, three indicators), fetched to numpy on an open connection
  — the floor;
* ``extract``: :func:`biofed.data.extract` on an open :class:`biofed.data.OmopDatabase`
  (spec compiled to SQL, run, converted, split);
* ``prep``: this site's share of the federated preprocessing (``summarise`` for every pass
  of the fit, then ``Preprocessing.apply``), fitted across the CDMs of the same group.

It checks that ``extract`` returns the bare query's matrix, and prints ``extract / bare``
and ``(extract + prep) / bare`` (target ≤ 2).

    python -u benchmarks/omop_extract.py [--json] [--repeats 15] [--factor 20]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from _common import best_of, emit, machine, parser
from biofed.data import (
    ExtractedTable,
    OmopDatabase,
    Preprocessing,
    PreprocessingFit,
    SiteSummary,
    extract,
    summarise,
)
from biofed.datasets import gi_bleed_study, scale_cdm, write_eunomia_sites

BARE = """
WITH nsaid AS (SELECT descendant_concept_id AS cid FROM concept_ancestor
               WHERE ancestor_concept_id IN (1118084, 1124300)),
bleed AS (SELECT descendant_concept_id AS cid FROM concept_ancestor
          WHERE ancestor_concept_id = 192671),
idx AS (SELECT person_id, min(drug_exposure_start_date) AS d FROM drug_exposure
        WHERE drug_concept_id IN (SELECT cid FROM nsaid) GROUP BY person_id),
cohort AS (
  SELECT i.person_id, i.d FROM idx i JOIN observation_period op ON op.person_id = i.person_id
   AND op.observation_period_start_date <= i.d - 365 AND op.observation_period_end_date >= i.d
  WHERE NOT EXISTS (SELECT 1 FROM condition_occurrence c WHERE c.person_id = i.person_id
    AND c.condition_concept_id IN (SELECT cid FROM bleed) AND c.condition_start_date < i.d)),
cond AS (
  SELECT k.person_id,
    max(CASE WHEN c.condition_concept_id IN (SELECT cid FROM bleed)
        AND c.condition_start_date BETWEEN k.d + 1 AND k.d + 365 THEN 1 ELSE 0 END) AS label,
    max(CASE WHEN c.condition_concept_id = 4027663 AND c.condition_start_date <= k.d
        THEN 1 ELSE 0 END) AS ulcer,
    max(CASE WHEN c.condition_concept_id = 81893
        AND c.condition_start_date BETWEEN k.d - 1825 AND k.d THEN 1 ELSE 0 END) AS colitis
  FROM cohort k LEFT JOIN condition_occurrence c ON c.person_id = k.person_id
  GROUP BY k.person_id),
drug AS (
  SELECT k.person_id, max(CASE WHEN e.drug_exposure_start_date BETWEEN k.d - 365 AND k.d - 1
                          THEN 1 ELSE 0 END) AS acetaminophen
  FROM cohort k LEFT JOIN drug_exposure e ON e.person_id = k.person_id
   AND e.drug_concept_id = 1127433
  GROUP BY k.person_id)
SELECT k.person_id, year(k.d) - p.year_of_birth AS age,
  CASE p.gender_concept_id WHEN 8507 THEN 'male' WHEN 8532 THEN 'female' ELSE 'other' END
    AS sex,
  c.ulcer, c.colitis, g.acetaminophen, c.label
FROM cohort k JOIN person p USING (person_id) JOIN cond c USING (person_id)
JOIN drug g USING (person_id)
ORDER BY k.person_id
"""


def _bare(con: duckdb.DuckDBPyConnection) -> dict[str, np.ndarray]:
    return {k.lower(): np.asarray(v) for k, v in con.execute(BARE).fetchnumpy().items()}


def _check(table: ExtractedTable, bare: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(table.ids, bare["person_id"])
    np.testing.assert_array_equal(table.targets["label"], bare["label"])
    np.testing.assert_array_equal(table.columns["age"], bare["age"])
    assert table.columns["sex"].tolist() == bare["sex"].tolist()
    np.testing.assert_array_equal(table.columns["peptic_ulcer"], bare["ulcer"])
    np.testing.assert_array_equal(table.columns["ulcerative_colitis"], bare["colitis"])
    np.testing.assert_array_equal(table.columns["acetaminophen"], bare["acetaminophen"])


def _fit(tables: dict[str, ExtractedTable]) -> tuple[Preprocessing, list[Any]]:
    fit = PreprocessingFit.start(gi_bleed_study())
    requests = []
    while not fit.done:
        request = fit.request()
        requests.append(request)
        fit = fit.add(
            {
                site: SiteSummary.from_arrays(summarise(t, request, min_cell=5).to_arrays())
                for site, t in tables.items()
            }
        )
    return fit.result(), requests


def _group(paths: dict[str, Path], repeats: int) -> list[dict[str, Any]]:
    spec = gi_bleed_study()
    dbs = {site: OmopDatabase.open(str(path)) for site, path in paths.items()}
    try:
        tables = {site: extract(spec, db) for site, db in dbs.items()}
        prep, requests = _fit(tables)
        rows = []
        for site, path in paths.items():
            with duckdb.connect(str(path), read_only=True) as con:  # both on an open connection
                con.execute("SET enable_progress_bar = false")
                _check(tables[site], _bare(con))
                table = tables[site]

                def site_prep(t: ExtractedTable = table) -> None:
                    for request in requests:
                        summarise(t, request, min_cell=5).to_arrays()
                    prep.apply(t)

                # interleaved, best of each: the machine's load hits all three alike
                times: dict[str, list[float]] = {"bare": [], "extract": [], "prep": []}
                for _ in range(repeats):
                    times["bare"].append(best_of(lambda c=con: _bare(c), 1))
                    times["extract"].append(best_of(lambda db=dbs[site]: extract(spec, db), 1))
                    times["prep"].append(best_of(site_prep, 1))
            t_bare, t_extract, t_prep = (min(times[k]) for k in ("bare", "extract", "prep"))
            rows.append(
                {
                    "cdm": site,
                    "persons_in_cohort": len(table),
                    "bare_s": round(t_bare, 4),
                    "extract_s": round(t_extract, 4),
                    "prep_s": round(t_prep, 4),
                    "passes": len(requests),
                    "extract_ratio": round(t_extract / t_bare, 2),
                    "extract_prep_ratio": round((t_extract + t_prep) / t_bare, 2),
                }
            )
        return rows
    finally:
        for db in dbs.values():
            db.close()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--factor", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sites = write_eunomia_sites(folder / "sites", 5, seed=0)
        big = scale_cdm(folder / f"eunomia-x{args.factor}.duckdb", args.factor)
        rows = _group(sites, args.repeats)
        rows += _group({f"eunomia-x{args.factor}": big}, args.repeats)
    for row in rows:
        print(
            f"{row['cdm']:>14}: {row['persons_in_cohort']:>6} persons  bare {row['bare_s']:.4f}s"
            f"  extract {row['extract_s']:.4f}s  prep {row['prep_s']:.4f}s ({row['passes']} "
            f"passes)  extract/bare {row['extract_ratio']:.2f}  "
            f"(extract+prep)/bare {row['extract_prep_ratio']:.2f}"
        )
    worst = max(r["extract_prep_ratio"] for r in rows)
    print(f"worst (extract+prep)/bare: {worst:.2f} (target <= 2)")
    emit({"benchmark": "omop_extract", "machine": machine(), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
