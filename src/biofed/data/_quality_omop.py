"""DataQualityDashboard-style checks on an OMOP CDM, as SQL run inside the site's database.

Every check is one aggregate query returning (violated, total); no row leaves the database.
A check that looks for a missing partner row (a foreign key, an observation period) is
written as ``WHERE NOT EXISTS`` in its own subquery, which PostgreSQL plans as a hashed anti
join: inside ``SUM(CASE …)`` it would be a subplan re-scanning the other table for every
row (minutes on Eunomia without indexes).
The SQL is portable (DuckDB and PostgreSQL: ``CAST … AS FLOAT8``, ``make_date``,
``percentile_cont … WITHIN GROUP``). Table and column names come only from the fixed lists
below; the plausible ranges travel as bound parameters (validated numbers).

Which checks are fatal by default (a failure stops training at the site): the CDM's
``person`` and ``observation_period`` tables and their fields being present, a missing
``person_id`` (isRequired), a clinical record whose ``person_id`` is not in ``person``
(isForeignKey), duplicated ``person_id`` (isPrimaryKey), and a death before birth
(plausibleAfterBirth on ``death.death_date``). Everything else is a warning unless the site
marks it fatal. Some foreign keys are warnings because real CDMs break them harmlessly
(Eunomia, OHDSI's GiBleed test CDM, fails each): concept ids missing from ``concept`` (a
vocabulary subset), ``visit_occurrence_id`` of visits not loaded, and observation periods
of persons not in ``person`` (they join no cohort).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from biofed.core import ConfigurationError, DataError
from biofed.data._quality import CheckCategory, CheckResult, QualityReport, mark_fatal


class SqlSource(Protocol):
    """What the checks need of an :class:`~biofed.data.OmopDatabase`."""

    def query(self, sql: str, params: Sequence[object] = ()) -> pa.Table: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PlausibleRange:
    """Plausible values of one measurement concept in one unit.

    Attributes
    ----------
    concept_id, unit_concept_id:
        The measurement's standard concept and its unit's concept.
    low, high:
        Values below ``low`` or above ``high`` are implausible (None: no bound).
    label:
        What it is, for reports (e.g. ``"haemoglobin g/dL"``).
    """

    concept_id: int
    unit_concept_id: int
    low: float | None
    high: float | None
    label: str = ""

    def __post_init__(self) -> None:
        for name in ("concept_id", "unit_concept_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"PlausibleRange {name} must be an integer ≥ 0")
        for name in ("low", "high"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise ConfigurationError(f"PlausibleRange {name} must be a finite number")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigurationError(f"PlausibleRange {self.label}: low > high")


def _r(concept: int, unit: int, low: float, high: float, label: str) -> PlausibleRange:
    return PlausibleRange(concept_id=concept, unit_concept_id=unit, low=low, high=high, label=label)


#: Plausible ranges of common measurements (standard LOINC concepts, UCUM unit concepts).
#: The bounds are limits of survivable physiology or of human size, set wide so that a
#: value outside them is an entry or unit error, not an extreme patient (chosen from
#: standard clinical reference values; the concept and unit ids are the ones OHDSI's DQD
#: lists as the approved units of these concepts).
PLAUSIBLE_RANGES: tuple[PlausibleRange, ...] = (
    _r(3000963, 8713, 1.0, 25.0, "haemoglobin g/dL"),
    _r(3000963, 8636, 10.0, 250.0, "haemoglobin g/L"),
    _r(3009542, 8554, 5.0, 80.0, "haematocrit %"),
    _r(3004410, 8554, 2.0, 25.0, "HbA1c %"),
    _r(3025315, 9529, 0.2, 650.0, "body weight kg"),
    _r(3025315, 8739, 0.5, 1400.0, "body weight lb"),
    _r(3036277, 8582, 20.0, 280.0, "body height cm"),
    _r(3038553, 9531, 5.0, 150.0, "BMI kg/m2"),
    _r(3004249, 8876, 20.0, 350.0, "systolic blood pressure mmHg"),
    _r(3012888, 8876, 5.0, 250.0, "diastolic blood pressure mmHg"),
    _r(3027018, 8541, 5.0, 350.0, "heart rate /min"),
    _r(3020891, 586323, 20.0, 46.0, "body temperature °C"),
    _r(3020891, 9289, 68.0, 115.0, "body temperature °F"),
    _r(3006322, 586323, 20.0, 46.0, "oral temperature °C"),
    _r(3006322, 9289, 68.0, 115.0, "oral temperature °F"),
    _r(3016723, 8840, 0.05, 40.0, "creatinine mg/dL"),
    _r(3016723, 8749, 4.0, 3500.0, "creatinine µmol/L"),
    _r(3019550, 8753, 80.0, 220.0, "sodium mmol/L"),
    _r(3023103, 8753, 0.5, 15.0, "potassium mmol/L"),
    _r(3004501, 8840, 5.0, 3000.0, "glucose mg/dL"),
    _r(3004501, 8753, 0.3, 170.0, "glucose mmol/L"),
)

#: Required (NOT NULL in the CDM v5.3/v5.4 specification) fields of the checked tables.
REQUIRED: dict[str, tuple[str, ...]] = {
    "person": (
        "person_id",
        "gender_concept_id",
        "year_of_birth",
        "race_concept_id",
        "ethnicity_concept_id",
    ),
    "observation_period": (
        "observation_period_id",
        "person_id",
        "observation_period_start_date",
        "observation_period_end_date",
        "period_type_concept_id",
    ),
    "visit_occurrence": (
        "visit_occurrence_id",
        "person_id",
        "visit_concept_id",
        "visit_start_date",
        "visit_end_date",
        "visit_type_concept_id",
    ),
    "condition_occurrence": (
        "condition_occurrence_id",
        "person_id",
        "condition_concept_id",
        "condition_start_date",
        "condition_type_concept_id",
    ),
    "drug_exposure": (
        "drug_exposure_id",
        "person_id",
        "drug_concept_id",
        "drug_exposure_start_date",
        "drug_exposure_end_date",
        "drug_type_concept_id",
    ),
    "procedure_occurrence": (
        "procedure_occurrence_id",
        "person_id",
        "procedure_concept_id",
        "procedure_date",
        "procedure_type_concept_id",
    ),
    "measurement": (
        "measurement_id",
        "person_id",
        "measurement_concept_id",
        "measurement_date",
        "measurement_type_concept_id",
    ),
    "observation": (
        "observation_id",
        "person_id",
        "observation_concept_id",
        "observation_date",
        "observation_type_concept_id",
    ),
    "death": ("person_id", "death_date"),
}
#: Tables every study needs: their absence or a missing field is fatal.
_ESSENTIAL = frozenset({"person", "observation_period"})
#: Each event table's date that the temporal checks place in a life and an observation
#: period, and its end date (if it has one).
_EVENT_DATES: dict[str, tuple[str, str | None]] = {
    "visit_occurrence": ("visit_start_date", "visit_end_date"),
    "condition_occurrence": ("condition_start_date", "condition_end_date"),
    "drug_exposure": ("drug_exposure_start_date", "drug_exposure_end_date"),
    "procedure_occurrence": ("procedure_date", None),
    "measurement": ("measurement_date", None),
    "observation": ("observation_date", None),
}
#: Concept fields: (table, field, the domain its concepts must be in, or None).
_CONCEPT_FIELDS: tuple[tuple[str, str, str | None], ...] = (
    ("person", "gender_concept_id", "Gender"),
    ("person", "race_concept_id", "Race"),
    ("person", "ethnicity_concept_id", "Ethnicity"),
    ("visit_occurrence", "visit_concept_id", "Visit"),
    ("condition_occurrence", "condition_concept_id", "Condition"),
    ("drug_exposure", "drug_concept_id", "Drug"),
    ("procedure_occurrence", "procedure_concept_id", "Procedure"),
    ("measurement", "measurement_concept_id", "Measurement"),
    ("measurement", "unit_concept_id", "Unit"),
    ("observation", "observation_concept_id", None),
)
#: Visit foreign keys: (table, field, target, target field).
_VISIT_FKS = tuple(
    (t, "visit_occurrence_id", "visit_occurrence", "visit_occurrence_id")
    for t in ("condition_occurrence", "drug_exposure", "procedure_occurrence", "measurement")
)
#: The earliest date a person may plausibly have been born in a CDM.
_FIRST_BIRTH_YEAR = 1850
#: A person's earliest possible birth date, from what the CDM holds about it.
_BIRTH = (
    "COALESCE(CAST(p.birth_datetime AS DATE), "
    "make_date(CAST(p.year_of_birth AS INTEGER), CAST(COALESCE(p.month_of_birth, 1) AS INTEGER), "
    "CAST(COALESCE(p.day_of_birth, 1) AS INTEGER)))"
)
_VALUE = "CAST(m.value_as_number AS FLOAT8)"


class _Run:
    """One run of the checks: the source, the columns each table has, and the results."""

    def __init__(self, db: SqlSource, fatal: frozenset[str]) -> None:
        self.db = db
        self.fatal = fatal
        self.results: list[CheckResult] = []
        self._columns: dict[str, frozenset[str] | None] = {}

    def columns(self, table: str) -> frozenset[str] | None:
        """Lower-cased columns of ``table``, or None when it does not exist."""
        if table not in self._columns:
            try:
                got = self.db.query(f"SELECT * FROM {table} LIMIT 0")
            except DataError:
                self._columns[table] = None
            else:
                self._columns[table] = frozenset(c.lower() for c in got.column_names)
        return self._columns[table]

    def has(self, table: str, *fields: str) -> bool:
        cols = self.columns(table)
        return cols is not None and all(f in cols for f in fields)

    def counts(self, sql: str, params: Sequence[object] = ()) -> list[int]:
        """The integers of the first (only) row of an aggregate query (NULL → 0)."""
        got = self.db.query(sql, params)
        if not got.num_rows:
            return []
        # by position: the names may repeat (PostgreSQL calls every unaliased SUM "sum")
        values = (got.column(i)[0].as_py() for i in range(got.num_columns))
        return [0 if v is None else int(v) for v in values]

    def add(
        self,
        name: str,
        category: CheckCategory,
        table: str,
        field: str,
        violated: int,
        total: int,
        *,
        fatal: bool = False,
        concept_id: int | None = None,
        description: str = "",
    ) -> None:
        result = CheckResult(
            name=name,
            category=category,
            table=table,
            field=field,
            fatal=fatal,
            violated=violated,
            total=total,
            passed=violated == 0,
            concept_id=concept_id,
            description=description,
        )
        self.results.append(mark_fatal(result, self.fatal))


def _structure(run: _Run) -> dict[str, tuple[str, ...]]:
    """cdmTable and cdmField: the tables and required fields present; returns the tables
    (with their required fields) that the other checks can use."""
    usable: dict[str, tuple[str, ...]] = {}
    for table, fields in REQUIRED.items():
        essential = table in _ESSENTIAL
        cols = run.columns(table)
        run.add(
            "cdmTable",
            "conformance",
            table,
            "",
            0 if cols is not None else 1,
            1,
            fatal=essential,
            description=f"the {table} table exists",
        )
        if cols is None:
            continue
        for f in fields:
            run.add(
                "cdmField",
                "conformance",
                table,
                f,
                0 if f in cols else 1,
                1,
                fatal=essential,
                description=f"{table} has the field {f}",
            )
        if all(f in cols for f in fields):
            usable[table] = fields
    return usable


def _completeness(run: _Run, tables: dict[str, tuple[str, ...]]) -> None:
    """isRequired and isPrimaryKey."""
    for table, fields in tables.items():
        nulls = ", ".join(f"SUM(CASE WHEN {f} IS NULL THEN 1 ELSE 0 END)" for f in fields)
        total, *missing = run.counts(f"SELECT COUNT(*), {nulls} FROM {table}")
        for f, n in zip(fields, missing, strict=True):
            run.add(
                "isRequired",
                "completeness",
                table,
                f,
                n,
                total,
                fatal=f == "person_id",
                description=f"records with no {f} (a required field)",
            )
        key = fields[0]
        if (key.endswith("_id") and key != "person_id") or table == "person":
            dupes, rows = run.counts(
                f"SELECT COUNT({key}) - COUNT(DISTINCT {key}), COUNT(*) FROM {table}"
            )
            run.add(
                "isPrimaryKey",
                "conformance",
                table,
                key,
                dupes,
                rows,
                fatal=table == "person",
                description=f"records whose {key} repeats another record's",
            )


def _foreign_keys(run: _Run, tables: dict[str, tuple[str, ...]]) -> None:
    """isForeignKey (person, visit, concept), fkDomain and isStandardValidConcept."""
    if "person" in tables:
        for table in tables:
            if table == "person":
                continue
            violated, total = run.counts(
                f"SELECT (SELECT COUNT(*) FROM {table} t WHERE t.person_id IS NOT NULL AND "
                f"NOT EXISTS (SELECT 1 FROM person p WHERE p.person_id = t.person_id)), "
                f"(SELECT COUNT(*) FROM {table})"
            )
            run.add(
                "isForeignKey",
                "conformance",
                table,
                "person_id",
                violated,
                total,
                fatal=table != "observation_period",
                description="records whose person_id is not in person",
            )
    for table, f, target, target_field in _VISIT_FKS:
        if table in tables and run.has(table, f) and target in tables:
            violated, total = run.counts(
                f"SELECT (SELECT COUNT(*) FROM {table} t WHERE t.{f} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM {target} v WHERE v.{target_field} = t.{f})), "
                f"(SELECT COUNT(*) FROM {table})"
            )
            run.add(
                "isForeignKey",
                "conformance",
                table,
                f,
                violated,
                total,
                description=f"records whose {f} is not in {target}",
            )
    if not run.has("concept", "concept_id", "domain_id", "standard_concept", "invalid_reason"):
        return
    for table, f, domain in _CONCEPT_FIELDS:
        if table not in tables or not run.has(table, f):
            continue
        missing, wrong_domain, non_standard, total = run.counts(
            f"SELECT SUM(CASE WHEN t.{f} IS NOT NULL AND c.concept_id IS NULL THEN 1 ELSE 0 END),"
            f" SUM(CASE WHEN c.concept_id <> 0 AND c.domain_id <> ? THEN 1 ELSE 0 END),"
            " SUM(CASE WHEN c.concept_id <> 0 AND (c.standard_concept IS NULL OR "
            "c.standard_concept <> 'S' OR c.invalid_reason IS NOT NULL) THEN 1 ELSE 0 END),"
            f" COUNT(*) FROM {table} t LEFT JOIN concept c ON c.concept_id = t.{f}",
            (domain or "",),
        )
        run.add(
            "isForeignKey",
            "conformance",
            table,
            f,
            missing,
            total,
            description=f"records whose {f} is not in concept",
        )
        if domain is not None:
            run.add(
                "fkDomain",
                "conformance",
                table,
                f,
                wrong_domain,
                total,
                description=f"records whose {f} is a concept outside the {domain} domain",
            )
        if f != "unit_concept_id":
            run.add(
                "isStandardValidConcept",
                "conformance",
                table,
                f,
                non_standard,
                total,
                description=f"records whose {f} is not a standard, valid concept",
            )


def _temporal(run: _Run, tables: dict[str, tuple[str, ...]], today: dt.date) -> None:
    """plausibleValueLow/High of year_of_birth, plausibleAfterBirth, plausibleDuringLife,
    plausibleStartBeforeEnd and withinObservationPeriod."""
    if "person" not in tables:
        return
    low, high, total = run.counts(
        "SELECT SUM(CASE WHEN year_of_birth < ? THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN year_of_birth > ? THEN 1 ELSE 0 END), COUNT(year_of_birth) FROM person",
        (_FIRST_BIRTH_YEAR, today.year),
    )
    for name, n, what in (
        ("plausibleValueLow", low, f"births before {_FIRST_BIRTH_YEAR}"),
        ("plausibleValueHigh", high, f"births after {today.year}"),
    ):
        run.add(name, "plausibility", "person", "year_of_birth", n, total, description=what)
    birth_cols = run.columns("person") or frozenset()
    birth = (
        _BIRTH
        if {"birth_datetime", "month_of_birth", "day_of_birth"} <= birth_cols
        else "make_date(CAST(p.year_of_birth AS INTEGER), 1, 1)"
    )
    has_death = "death" in tables
    dated = [(t, start, end) for t, (start, end) in _EVENT_DATES.items() if t in tables]
    if has_death:
        dated.append(("death", "death_date", None))
    if "observation_period" in tables:
        dated.insert(
            0,
            ("observation_period", "observation_period_start_date", "observation_period_end_date"),
        )
    for table, start, end in dated:
        violated, total = run.counts(
            f"SELECT SUM(CASE WHEN CAST(t.{start} AS DATE) < {birth} THEN 1 ELSE 0 END), "
            f"COUNT(t.{start}) FROM {table} t JOIN person p ON p.person_id = t.person_id"
        )
        run.add(
            "plausibleAfterBirth",
            "plausibility",
            table,
            start,
            violated,
            total,
            fatal=table == "death",
            description=f"records whose {start} is before the person's birth",
        )
        if end is not None and run.has(table, end):
            violated, total = run.counts(
                f"SELECT SUM(CASE WHEN {end} < {start} THEN 1 ELSE 0 END), COUNT({end}) "
                f"FROM {table}"
            )
            run.add(
                "plausibleStartBeforeEnd",
                "plausibility",
                table,
                end,
                violated,
                total,
                description=f"records whose {end} is before their {start}",
            )
        if has_death and table != "death":
            violated, total = run.counts(
                f"SELECT SUM(CASE WHEN CAST(t.{start} AS DATE) > d.death_date THEN 1 ELSE 0 "
                f"END), COUNT(t.{start}) FROM {table} t LEFT JOIN (SELECT person_id, "
                "MIN(CAST(death_date AS DATE)) AS death_date FROM death GROUP BY person_id) d "
                "ON d.person_id = t.person_id"
            )
            run.add(
                "plausibleDuringLife",
                "plausibility",
                table,
                start,
                violated,
                total,
                description=f"records whose {start} is after the person's death",
            )
        if "observation_period" in tables and table in _EVENT_DATES:
            violated, total = run.counts(
                f"SELECT (SELECT COUNT(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM "
                f"observation_period o WHERE o.person_id = t.person_id AND "
                f"t.{start} >= o.observation_period_start_date AND "
                f"t.{start} <= o.observation_period_end_date)), "
                f"(SELECT COUNT({start}) FROM {table})"
            )
            run.add(
                "withinObservationPeriod",
                "plausibility",
                table,
                start,
                violated,
                total,
                description=f"records whose {start} is in none of the person's observation periods",
            )


def _values(
    run: _Run,
    tables: dict[str, tuple[str, ...]],
    ranges: Sequence[PlausibleRange],
    magnitude_orders: float,
) -> None:
    """plausibleValueLow/High and plausibleUnitConceptIds per measurement concept in
    ``ranges``, and plausibleMagnitude (values many orders from their concept's median)."""
    if "measurement" not in tables or not run.has("measurement", "value_as_number"):
        return
    has_unit = run.has("measurement", "unit_concept_id")
    unit = "m.unit_concept_id" if has_unit else "0"
    if ranges:
        values = ", ".join(
            "(CAST(? AS BIGINT), CAST(? AS BIGINT), CAST(? AS FLOAT8), CAST(? AS FLOAT8))"
            for _ in ranges
        )
        params: list[object] = []
        for r in ranges:
            params += [r.concept_id, r.unit_concept_id, r.low, r.high]
        rows = run.db.query(
            f"SELECT m.measurement_concept_id AS concept, {unit} AS unit, COUNT(*) AS n, "
            f"SUM(CASE WHEN {_VALUE} < r.lo THEN 1 ELSE 0 END) AS low, "
            f"SUM(CASE WHEN {_VALUE} > r.hi THEN 1 ELSE 0 END) AS high "
            f"FROM measurement m JOIN (VALUES {values}) AS r(concept, unit, lo, hi) "
            f"ON r.concept = m.measurement_concept_id AND r.unit = {unit} "
            f"WHERE m.value_as_number IS NOT NULL GROUP BY m.measurement_concept_id, {unit}",
            params,
        ).to_pylist()
        found = {(int(r["concept"]), int(r["unit"])): r for r in rows}
        for r in ranges:
            row = found.get((r.concept_id, r.unit_concept_id))
            if row is None:
                continue
            n = int(row["n"])
            for name, count, bound in (
                ("plausibleValueLow", row["low"], r.low),
                ("plausibleValueHigh", row["high"], r.high),
            ):
                if bound is None:
                    continue
                run.add(
                    name,
                    "plausibility",
                    "measurement",
                    f"value_as_number[unit={r.unit_concept_id}]",
                    int(count or 0),
                    n,
                    concept_id=r.concept_id,
                    description=f"{r.label or r.concept_id}: values "
                    f"{'below' if name.endswith('Low') else 'above'} {bound:g}",
                )
        concepts = sorted({r.concept_id for r in ranges})
        units = ", ".join("(CAST(? AS BIGINT), CAST(? AS BIGINT))" for _ in ranges)
        marks = ", ".join("CAST(? AS BIGINT)" for _ in concepts)
        unit_params: list[object] = []
        for r in ranges:
            unit_params += [r.concept_id, r.unit_concept_id]
        rows = run.db.query(
            f"SELECT m.measurement_concept_id AS concept, COUNT(*) AS n, SUM(CASE WHEN NOT "
            f"EXISTS (SELECT 1 FROM (VALUES {units}) AS u(concept, unit) WHERE u.concept = "
            f"m.measurement_concept_id AND u.unit = {unit}) THEN 1 ELSE 0 END) AS bad "
            f"FROM measurement m WHERE m.value_as_number IS NOT NULL AND "
            f"m.measurement_concept_id IN ({marks}) GROUP BY m.measurement_concept_id",
            [*unit_params, *concepts],
        ).to_pylist()
        for row in sorted(rows, key=lambda r: int(r["concept"])):
            run.add(
                "plausibleUnitConceptIds",
                "plausibility",
                "measurement",
                "unit_concept_id",
                int(row["bad"] or 0),
                int(row["n"]),
                concept_id=int(row["concept"]),
                description="values recorded in a unit not expected for the concept",
            )
    factor = 10.0**magnitude_orders
    violated, total = run.counts(
        f"SELECT SUM(CASE WHEN ABS({_VALUE}) >= CAST(? AS FLOAT8) * s.mid OR "
        f"(ABS({_VALUE}) > 0 AND ABS({_VALUE}) * CAST(? AS FLOAT8) <= s.mid) THEN 1 ELSE 0 "
        f"END), COUNT(*) FROM measurement m JOIN (SELECT measurement_concept_id AS concept, "
        f"{unit} AS unit, CAST(percentile_cont(0.5) WITHIN GROUP (ORDER BY ABS({_VALUE})) "
        "AS FLOAT8) AS mid FROM measurement m WHERE m.value_as_number IS NOT NULL GROUP BY "
        f"measurement_concept_id, {unit}) s ON s.concept = m.measurement_concept_id AND "
        f"s.unit = {unit} WHERE m.value_as_number IS NOT NULL AND s.mid > 0",
        (factor, factor),
    )
    run.add(
        "plausibleMagnitude",
        "plausibility",
        "measurement",
        "value_as_number",
        violated,
        total,
        description=f"values ≥ {magnitude_orders:g} orders of magnitude from the median of "
        "their concept and unit",
    )


def run_omop_checks(
    db: SqlSource,
    *,
    fatal: frozenset[str],
    ranges: Sequence[PlausibleRange],
    magnitude_orders: float,
    today: dt.date,
) -> QualityReport:
    """Run every OMOP check (see :func:`~biofed.data.run_quality_checks`)."""
    if not all(isinstance(r, PlausibleRange) for r in ranges):
        raise ConfigurationError("ranges must be PlausibleRange values")
    if (
        isinstance(magnitude_orders, bool)
        or not isinstance(magnitude_orders, int | float)
        or not 1 <= magnitude_orders <= 100
    ):
        raise ConfigurationError(f"magnitude_orders must be in [1, 100], got {magnitude_orders!r}")
    run = _Run(db, fatal)
    tables = _structure(run)
    _completeness(run, tables)
    _foreign_keys(run, tables)
    _temporal(run, tables, today)
    _values(run, tables, ranges, float(magnitude_orders))
    return QualityReport(source="omop", checks=tuple(run.results))
