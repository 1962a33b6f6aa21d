"""Compile a :class:`StudySpec` to one site's study table (OMOP CDM or CSV/Parquet file).

OMOP: the spec becomes one SQL statement (common table expressions; concept sets expanded
with their descendants through ``concept_ancestor``) whose every value — concept ids, day
offsets — is a bound parameter; output columns are named by position, so no name from the
spec reaches SQL. The SQL uses only ``date ± integer`` and ``date - date`` arithmetic, which
DuckDB and PostgreSQL share.

Definitions (one row per person, ordered by ``person_id``):

* index date: the first entry event (``first_occurrence = true``; the person is dropped if
  it fails the criteria) or the first entry event meeting the criteria (``false``);
* prior observation: an ``observation_period`` with start ≤ index − N and end ≥ index; its
  end is the person's end of observation;
* exclusion: any exclusion-concept record in [index − N, index − 1] (N = 0: any time before
  the index date);
* binary outcome: any outcome record in [index + start, index + end];
* time to event: the first outcome record in that window; censored at
  min(index + end, end of observation, death); an outcome after censoring is no event;
* age: year of the index date − ``year_of_birth`` (as OHDSI FeatureExtraction);
* sex: ``"male"`` (8507), ``"female"`` (8532), ``"other"`` (any other concept), missing
  when ``gender_concept_id`` is null;
* indicators: 1 when any record of the concept set falls in [index + start, index + end];
* measurement: the latest non-null ``value_as_number`` in the window (ties: the highest
  ``measurement_id``), only among records in the listed units when ``unit_concepts`` is
  given (other units count as missing).

Train/test: a person is in the test set when a fixed 64-bit hash (SplitMix64) of
(person id, seed) falls below ``test_fraction``, so the split is the same at every site,
independent of row order and of the training seed; a file's split column overrides it.

Security notes: see :mod:`biofed.data._spec` (validation) and :mod:`biofed.data._omop`
(read-only connection); this module binds every spec value as a parameter (OWASP SQL
Injection Prevention Cheat Sheet, option 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from types import MappingProxyType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from biofed.core import Array, ConfigurationError, DataError, check_id
from biofed.data._loaders import _read, _to_numpy
from biofed.data._omop import OmopDatabase
from biofed.data._spec import CovariateSpec, StudySpec

#: OMOP domain → (table, concept column, date column, row id column).
DOMAIN_TABLES: Mapping[str, tuple[str, str, str, str]] = MappingProxyType(
    {
        "condition": (
            "condition_occurrence",
            "condition_concept_id",
            "condition_start_date",
            "condition_occurrence_id",
        ),
        "drug": (
            "drug_exposure",
            "drug_concept_id",
            "drug_exposure_start_date",
            "drug_exposure_id",
        ),
        "measurement": (
            "measurement",
            "measurement_concept_id",
            "measurement_date",
            "measurement_id",
        ),
        "observation": (
            "observation",
            "observation_concept_id",
            "observation_date",
            "observation_id",
        ),
        "procedure": (
            "procedure_occurrence",
            "procedure_concept_id",
            "procedure_date",
            "procedure_occurrence_id",
        ),
        "visit": (
            "visit_occurrence",
            "visit_concept_id",
            "visit_start_date",
            "visit_occurrence_id",
        ),
    }
)
MALE, FEMALE = 8507, 8532


@dataclass(frozen=True, slots=True, kw_only=True)
class ExtractedTable:
    """One site's study table before transforms.

    Attributes
    ----------
    name:
        A biofed identifier (the study's name unless given).
    ids:
        ``(n,)`` int64 person ids (file sources: the id column, else row numbers).
    columns:
        Covariate name → ``(n,)`` array: float64 (NaN = missing) for numeric and binary
        covariates, object array of str (None = missing) for categorical ones; in the spec's
        order.
    kinds:
        Covariate name → ``"numeric"`` | ``"binary"`` | ``"categorical"``.
    outcome_kind:
        ``"binary"`` or ``"time_to_event"``.
    targets:
        ``{"label"}`` or ``{"time", "event"}``, float64, as tasks read them.
    is_test:
        ``(n,)`` bool, True for test rows.
    """

    name: str
    ids: Array
    columns: Mapping[str, Array]
    kinds: Mapping[str, str]
    outcome_kind: str
    targets: Mapping[str, Array]
    is_test: Array

    def __post_init__(self) -> None:
        check_id(self.name, what="table name")
        n = len(self.ids)
        ids = np.asarray(self.ids, dtype=np.int64)
        if ids.shape != (n,) or len(np.unique(ids)) != n:
            raise DataError(f"table {self.name!r}: ids must be unique, one per row")
        if set(self.columns) != set(self.kinds):
            raise DataError(f"table {self.name!r}: columns and kinds name different covariates")
        columns: dict[str, Array] = {}
        for key, col in self.columns.items():
            kind = self.kinds[key]
            dtype = object if kind == "categorical" else np.float64
            arr = np.asarray(col, dtype=dtype)
            if arr.shape != (n,):
                raise DataError(f"table {self.name!r}: column {key!r} has {arr.shape} for {n} rows")
            columns[key] = _readonly(arr)
        targets = {k: _readonly(np.asarray(v, dtype=np.float64)) for k, v in self.targets.items()}
        expected = {"label"} if self.outcome_kind == "binary" else {"time", "event"}
        if set(targets) != expected or any(t.shape != (n,) for t in targets.values()):
            raise DataError(f"table {self.name!r}: targets must be {sorted(expected)}, one per row")
        is_test = np.asarray(self.is_test, dtype=bool)
        if is_test.shape != (n,):
            raise DataError(f"table {self.name!r}: is_test must have one value per row")
        object.__setattr__(self, "ids", _readonly(ids))
        object.__setattr__(self, "columns", MappingProxyType(columns))
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "targets", MappingProxyType(targets))
        object.__setattr__(self, "is_test", _readonly(is_test))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """The covariates, in the spec's order."""
        return tuple(self.columns)


def _readonly(array: Array) -> Array:
    view = array.view()
    view.flags.writeable = False
    return view


# -- the split -------------------------------------------------------------------------------
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix(x: Array) -> Array:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return np.asarray(z ^ (z >> np.uint64(31)))


def split_unit(ids: Array, seed: int) -> Array:
    """Each id's position in [0, 1): SplitMix64 of (id, seed), top 53 bits."""
    keyed = np.asarray(ids, dtype=np.int64).view(np.uint64) ^ _splitmix(
        np.array([seed], dtype=np.uint64)
    )
    return (_splitmix(keyed) >> np.uint64(11)).astype(np.float64) / float(2**53)


def test_mask(ids: Array, *, seed: int, test_fraction: float) -> Array:
    """True for the ids in the test set (deterministic, order-free)."""
    return np.asarray(split_unit(ids, seed) < test_fraction)


test_mask.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# -- OMOP compiler ---------------------------------------------------------------------------
class _Sql:
    """Text and parameters built together, so placeholders and values stay in step."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[object] = []

    def add(self, text: str, *params: object) -> None:
        if text.count("?") != len(params):  # pragma: no cover - a bug in this module
            raise AssertionError(f"{text.count('?')} placeholders for {len(params)} values")
        self.parts.append(text)
        self.params.extend(params)

    @staticmethod
    def ids(concepts: Sequence[int]) -> str:
        return ", ".join("CAST(? AS BIGINT)" for _ in concepts)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _concept_set(sql: _Sql, name: str, concepts: Sequence[int]) -> None:
    """``name AS (…)``: the concepts and all their descendants."""
    values = ", ".join("(CAST(? AS BIGINT))" for _ in concepts)
    sql.add(
        f"{name} AS (SELECT descendant_concept_id AS concept_id FROM concept_ancestor "
        f"WHERE ancestor_concept_id IN ({_Sql.ids(concepts)}) "
        f"UNION SELECT concept_id FROM (VALUES {values}) AS v(concept_id)),\n",
        *concepts,
        *concepts,
    )


def compile_omop(spec: StudySpec, *, has_death: bool = True) -> tuple[str, list[object], list[str]]:
    """The extraction SQL for ``spec``, its parameters and the output column roles.

    Output columns: ``person_id``, then ``label`` or ``time``, ``event``, then ``c0``,
    ``c1``… for the covariates in the spec's order.
    """
    cohort = spec.cohort
    if cohort is None:
        raise ConfigurationError(f"study {spec.name!r} is not an OMOP study")
    outcome = spec.outcome
    assert outcome.domain is not None
    assert outcome.window_start_days is not None
    assert outcome.window_end_days is not None
    sql = _Sql()
    sql.add("WITH ")
    _concept_set(sql, "cs_entry", cohort.entry_concepts)
    if cohort.exclude_concepts:
        _concept_set(sql, "cs_exclude", cohort.exclude_concepts)
    _concept_set(sql, "cs_outcome", outcome.concepts)
    for i, cov in enumerate(spec.covariates):
        if cov.concepts:
            _concept_set(sql, f"cs_{i}", cov.concepts)

    table, concept, date, _ = DOMAIN_TABLES[cohort.entry_domain]
    sql.add(
        f"entry AS (SELECT e.person_id, e.{date} AS event_date FROM {table} AS e "
        f"WHERE e.{concept} IN (SELECT concept_id FROM cs_entry)),\n"
    )
    if cohort.first_occurrence:
        sql.add(
            "candidate AS (SELECT person_id, MIN(event_date) AS event_date FROM entry "
            "GROUP BY person_id),\n"
        )
    else:
        sql.add("candidate AS (SELECT DISTINCT person_id, event_date FROM entry),\n")
    sql.add(
        "qualified AS (SELECT c.person_id, c.event_date AS index_date, "
        "op.observation_period_end_date AS obs_end FROM candidate AS c "
        "JOIN observation_period AS op ON op.person_id = c.person_id "
        "AND op.observation_period_start_date <= c.event_date - CAST(? AS INTEGER) "
        "AND op.observation_period_end_date >= c.event_date",
        cohort.prior_observation_days,
    )
    if cohort.exclude_concepts:
        assert cohort.exclude_domain is not None
        xtable, xconcept, xdate, _ = DOMAIN_TABLES[cohort.exclude_domain]
        sql.add(
            f" WHERE NOT EXISTS (SELECT 1 FROM {xtable} AS x WHERE x.person_id = c.person_id "
            f"AND x.{xconcept} IN (SELECT concept_id FROM cs_exclude) "
            f"AND x.{xdate} < c.event_date"
        )
        if cohort.exclude_window_days > 0:
            sql.add(
                f" AND x.{xdate} >= c.event_date - CAST(? AS INTEGER)",
                cohort.exclude_window_days,
            )
        sql.add(")")
    if cohort.first_occurrence:  # one candidate date per person already
        sql.add(
            "),\ncohort AS (SELECT person_id, index_date, MAX(obs_end) AS obs_end "
            "FROM qualified GROUP BY person_id, index_date)"
        )
    else:
        sql.add(
            "),\ncohort AS (SELECT q.person_id, q.index_date, MAX(q.obs_end) AS obs_end "
            "FROM qualified AS q JOIN (SELECT person_id, MIN(index_date) AS first_date "
            "FROM qualified GROUP BY person_id) AS m ON m.person_id = q.person_id "
            "AND m.first_date = q.index_date GROUP BY q.person_id, q.index_date)"
        )

    # One pass per domain table for the outcome and the indicator covariates: rows of the
    # table are joined to a small table of (concept, tag) and folded by conditional
    # aggregates (tag -1: the outcome; tag i: covariate i). MIN/MAX ignore the duplicate
    # rows a concept in two sets makes.
    users: dict[str, list[tuple[int, int, int]]] = {}  # domain → [(tag, start, end)]
    users.setdefault(outcome.domain, []).append(
        (-1, outcome.window_start_days, outcome.window_end_days)
    )
    for i, cov in enumerate(spec.covariates):
        if cov.kind in DOMAIN_TABLES and cov.kind != "measurement":
            assert cov.window_start_days is not None
            assert cov.window_end_days is not None
            users.setdefault(cov.kind, []).append((i, cov.window_start_days, cov.window_end_days))
    for domain, uses in users.items():
        table, concept, date, _ = DOMAIN_TABLES[domain]
        sets = " UNION ALL ".join(
            f"SELECT concept_id, {tag} AS tag FROM {'cs_outcome' if tag < 0 else f'cs_{tag}'}"
            for tag, _, _ in uses
        )
        sql.add(f",\nt_{domain} AS (SELECT c.person_id")
        for tag, lo, hi in uses:
            when = (
                f"g.tag = {tag} AND x.{date} >= c.index_date + CAST(? AS INTEGER) "
                f"AND x.{date} <= c.index_date + CAST(? AS INTEGER)"
            )
            if tag < 0:
                sql.add(f", MIN(CASE WHEN {when} THEN x.{date} END) AS outcome_date", lo, hi)
            else:
                sql.add(f", MAX(CASE WHEN {when} THEN 1 ELSE 0 END) AS f{tag}", lo, hi)
        sql.add(
            f" FROM cohort AS c JOIN {table} AS x ON x.person_id = c.person_id "
            f"JOIN ({sets}) AS g ON g.concept_id = x.{concept} GROUP BY c.person_id)"
        )
    sql.add(
        f",\noutcome AS (SELECT person_id, outcome_date FROM t_{outcome.domain} "
        "WHERE outcome_date IS NOT NULL)"
    )
    if spec.outcome_kind == "time_to_event":
        death = (
            "SELECT person_id, MIN(death_date) AS death_date FROM death GROUP BY person_id"
            if has_death
            else "SELECT person_id, CAST(NULL AS DATE) AS death_date FROM person WHERE 1 = 0"
        )
        sql.add(f",\ndeaths AS ({death})")
        sql.add(
            ",\ncensor AS (SELECT c.person_id, LEAST(c.index_date + CAST(? AS INTEGER), "
            "c.obs_end, COALESCE(d.death_date, c.obs_end)) AS censor_date FROM cohort AS c "
            "LEFT JOIN deaths AS d ON d.person_id = c.person_id)",
            outcome.window_end_days,
        )
    for i, cov in enumerate(spec.covariates):
        if cov.kind == "measurement":
            _measurement(sql, i, cov)

    roles = ["person_id"]
    sql.add("\nSELECT c.person_id")
    if spec.outcome_kind == "binary":
        sql.add(", CASE WHEN o.person_id IS NULL THEN 0 ELSE 1 END AS label")
        roles.append("label")
    else:
        sql.add(
            ", CASE WHEN o.outcome_date IS NOT NULL AND o.outcome_date <= k.censor_date "
            "THEN o.outcome_date - c.index_date ELSE k.censor_date - c.index_date END AS time"
            ", CASE WHEN o.outcome_date IS NOT NULL AND o.outcome_date <= k.censor_date "
            "THEN 1 ELSE 0 END AS event"
        )
        roles += ["time", "event"]
    for i, cov in enumerate(spec.covariates):
        if cov.kind == "age":
            expr = "EXTRACT(YEAR FROM c.index_date) - p.year_of_birth"
        elif cov.kind == "sex":
            expr = (
                f"CASE WHEN p.gender_concept_id IS NULL THEN NULL "
                f"WHEN p.gender_concept_id = {MALE} THEN 'male' "
                f"WHEN p.gender_concept_id = {FEMALE} THEN 'female' ELSE 'other' END"
            )
        elif cov.kind == "measurement":
            expr = f"v{i}.value"
        else:
            expr = f"COALESCE(t_{cov.kind}.f{i}, 0)"
        sql.add(f", {expr} AS c{i}")
        roles.append(f"c{i}")
    sql.add(
        "\nFROM cohort AS c JOIN person AS p ON p.person_id = c.person_id "
        "LEFT JOIN outcome AS o ON o.person_id = c.person_id"
    )
    if spec.outcome_kind == "time_to_event":
        sql.add(" LEFT JOIN censor AS k ON k.person_id = c.person_id")
    for domain in users:
        sql.add(f" LEFT JOIN t_{domain} ON t_{domain}.person_id = c.person_id")
    for i, cov in enumerate(spec.covariates):
        if cov.kind == "measurement":
            sql.add(f" LEFT JOIN v{i} ON v{i}.person_id = c.person_id")
    sql.add("\nORDER BY c.person_id")
    return sql.text, sql.params, roles


def _measurement(sql: _Sql, i: int, cov: CovariateSpec) -> None:
    """``v{i}``: the latest value of measurement covariate ``i`` per person."""
    assert cov.window_start_days is not None
    assert cov.window_end_days is not None
    table, concept, date, row_id = DOMAIN_TABLES[cov.kind]
    window = (
        f"JOIN {table} AS x ON x.person_id = c.person_id "
        f"AND x.{date} >= c.index_date + CAST(? AS INTEGER) "
        f"AND x.{date} <= c.index_date + CAST(? AS INTEGER) "
        f"WHERE x.{concept} IN (SELECT concept_id FROM cs_{i})"
    )
    start, end = cov.window_start_days, cov.window_end_days
    sql.add(
        f",\nv{i} AS (SELECT person_id, value FROM (SELECT c.person_id, "
        "CAST(x.value_as_number AS DOUBLE PRECISION) AS value, "
        f"ROW_NUMBER() OVER (PARTITION BY c.person_id ORDER BY x.{date} DESC, "
        f"x.{row_id} DESC) AS rn FROM cohort AS c {window} AND x.value_as_number IS NOT NULL",
        start,
        end,
    )
    if cov.unit_concepts:
        sql.add(f" AND x.unit_concept_id IN ({_Sql.ids(cov.unit_concepts)})", *cov.unit_concepts)
    sql.add(") AS r WHERE rn = 1)")


def _required_tables(spec: StudySpec) -> list[str]:
    assert spec.cohort is not None
    assert spec.outcome.domain is not None
    domains = [spec.cohort.entry_domain, spec.outcome.domain]
    if spec.cohort.exclude_domain is not None:
        domains.append(spec.cohort.exclude_domain)
    domains += [c.kind for c in spec.covariates if c.concepts]
    tables = ["person", "observation_period", "concept_ancestor"]
    for d in domains:
        if DOMAIN_TABLES[d][0] not in tables:
            tables.append(DOMAIN_TABLES[d][0])
    return tables


def _float_column(values: pa.Array | pa.ChunkedArray) -> Array:
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_boolean(arr.type):
        arr = pc.cast(arr, pa.int8())
    filled = pc.fill_null(pc.cast(arr, pa.float64()), float("nan"))
    return np.array(_to_numpy(filled), dtype=np.float64)


def _extract_omop(spec: StudySpec, db: OmopDatabase, name: str) -> ExtractedTable:
    db.require_tables(_required_tables(spec))
    # Some CDMs (Eunomia among them) ship a placeholder death table without its columns.
    has_death = {"person_id", "death_date"} <= db.columns("death")
    text, params, roles = compile_omop(spec, has_death=has_death)
    table = db.query(text, params)
    cols = dict(zip(roles, table.columns, strict=True))
    ids = np.array(_float_column(cols["person_id"]), dtype=np.int64)
    targets: dict[str, Array] = {
        key: _float_column(cols[key]) for key in ("label", "time", "event") if key in cols
    }
    kinds = dict(spec.covariate_kinds)
    columns: dict[str, Array] = {}
    for i, cov in enumerate(spec.covariates):
        raw = cols[f"c{i}"]
        if kinds[cov.name] == "categorical":
            columns[cov.name] = np.array(raw.to_pylist(), dtype=object)
        else:
            columns[cov.name] = _float_column(raw)
    return ExtractedTable(
        name=name,
        ids=ids,
        columns=columns,
        kinds=kinds,
        outcome_kind=spec.outcome_kind,
        targets=targets,
        is_test=test_mask(ids, seed=spec.seed, test_fraction=spec.test_fraction),
    )


# -- files -----------------------------------------------------------------------------------
def _zero_one(values: Array, *, column: str, role: str) -> Array:
    seen = set(np.unique(values[~np.isnan(values)]).tolist())
    if seen <= {0.0, 1.0}:
        return values
    if seen <= {1.0, 2.0}:
        raise DataError(
            f"{role} column {column!r} is coded 1/2 (R's survival convention); recode it as "
            f"0/1 (1 = event, 0 = censored), e.g. {column} - 1"
        )
    shown = sorted(seen)[:5]
    raise DataError(f"{role} column {column!r} must be coded 0/1 or true/false; found {shown}")


def _extract_file(spec: StudySpec, path: str | PathLike[str], name: str) -> ExtractedTable:
    columns_spec = spec.columns
    assert columns_spec is not None
    p, table = _read(path, None)
    available = set(table.column_names)
    outcome = spec.outcome
    needed = [*columns_spec.features]
    needed += [c for c in (columns_spec.id, columns_spec.split) if c is not None]
    needed += [c for c in (outcome.label, outcome.time, outcome.event) if c is not None]
    missing = [c for c in needed if c not in available]
    if missing:
        raise DataError(f"{p.name}: no column(s) {missing} (the study spec names them)")
    n = table.num_rows
    if columns_spec.id is not None:
        id_col = table.column(columns_spec.id)
        if not pa.types.is_integer(id_col.type) or id_col.null_count:
            raise DataError(
                f"{p.name}: id column {columns_spec.id!r} must hold integers, no blanks"
            )
        ids = np.asarray(pc.cast(id_col, pa.int64()).to_numpy(), dtype=np.int64)
        if len(np.unique(ids)) != n:
            raise DataError(f"{p.name}: id column {columns_spec.id!r} holds duplicate ids")
    else:
        ids = np.arange(n, dtype=np.int64)
    kinds = dict(spec.covariate_kinds)
    columns: dict[str, Array] = {}
    for feature in columns_spec.features:
        raw = table.column(feature)
        if kinds[feature] == "categorical":
            columns[feature] = np.array(
                [None if v is None else str(v) for v in raw.to_pylist()], dtype=object
            )
            continue
        if not (
            pa.types.is_integer(raw.type)
            or pa.types.is_floating(raw.type)
            or pa.types.is_boolean(raw.type)
            or pa.types.is_null(raw.type)
        ):
            raise DataError(
                f"{p.name}: feature column {feature!r} holds {raw.type}, not numbers; list it "
                "in [columns] categorical"
            )
        values = _float_column(raw)
        if not np.isfinite(values[~np.isnan(values)]).all():
            raise DataError(f"{p.name}: feature column {feature!r} holds infinite values")
        if kinds[feature] == "binary":
            values = _zero_one(values, column=feature, role="binary feature")
        columns[feature] = values
    targets: dict[str, Array] = {}
    target_columns = (
        {"label": outcome.label}
        if spec.outcome_kind == "binary"
        else {"time": outcome.time, "event": outcome.event}
    )
    for key, column in target_columns.items():
        assert column is not None
        raw = table.column(column)
        if not (
            pa.types.is_integer(raw.type)
            or pa.types.is_floating(raw.type)
            or pa.types.is_boolean(raw.type)
        ):
            raise DataError(f"{p.name}: {key} column {column!r} must be numeric, got {raw.type}")
        values = _float_column(raw)
        if np.isnan(values).any() or not np.isfinite(values).all():
            raise DataError(f"{p.name}: {key} column {column!r} has missing or infinite values")
        if key in ("label", "event"):
            values = _zero_one(values, column=column, role=key)
        elif (values < 0).any():
            raise DataError(f"{p.name}: time column {column!r} has negative values")
        targets[key] = values
    if columns_spec.split is not None:
        split = [
            None if v is None else str(v) for v in table.column(columns_spec.split).to_pylist()
        ]
        other = sorted({str(v) for v in split} - {"train", "test"})
        if other:
            raise DataError(
                f"{p.name}: split column {columns_spec.split!r} must hold 'train' or 'test' only; "
                f"found {other[:5]}"
            )
        is_test = np.array([v == "test" for v in split], dtype=bool)
    else:
        is_test = test_mask(ids, seed=spec.seed, test_fraction=spec.test_fraction)
    return ExtractedTable(
        name=name,
        ids=ids,
        columns=columns,
        kinds=kinds,
        outcome_kind=spec.outcome_kind,
        targets=targets,
        is_test=is_test,
    )


def extract(
    spec: StudySpec,
    source: OmopDatabase | str | PathLike[str],
    *,
    name: str | None = None,
) -> ExtractedTable:
    """Compile ``spec`` against one site's data: an OMOP CDM or a CSV/Parquet file.

    Parameters
    ----------
    spec:
        The study spec.
    source:
        An open :class:`OmopDatabase`, a CDM path/URL (OMOP studies), or a table file
        (file studies).
    name:
        The table's name (default: the study's name).

    Raises
    ------
    DataError
        If the source lacks a table or column the spec needs, or holds values it cannot use.
    ConfigurationError
        If the source does not fit the spec's kind.
    """
    table_name = check_id(name, what="table name") if name is not None else spec.name
    if spec.source == "file":
        if isinstance(source, OmopDatabase):
            raise ConfigurationError(f"study {spec.name!r} reads a file, not an OMOP database")
        return _extract_file(spec, source, table_name)
    if isinstance(source, OmopDatabase):
        return _extract_omop(spec, source, table_name)
    with OmopDatabase.open(str(source)) as db:
        return _extract_omop(spec, db, table_name)
