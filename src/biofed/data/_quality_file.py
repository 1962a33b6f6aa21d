"""Data-quality checks on a table file (CSV, Parquet): schema, missingness and ranges.

The file is read with the loaders' reader (pyarrow only; nothing evaluated) and each check
counts rows with :mod:`pyarrow.compute`. Column names from the file are only compared with
the expected names, never put into code or SQL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pyarrow as pa
import pyarrow.compute as pc

from biofed.core import ConfigurationError
from biofed.data._loaders import _read
from biofed.data._quality import CheckCategory, CheckResult, QualityReport, mark_fatal
from biofed.data._spec import StudySpec


@dataclass(frozen=True, slots=True, kw_only=True)
class FileExpectations:
    """What a site expects of a dataset file.

    Attributes
    ----------
    columns:
        Expected ``(name, type)`` pairs (Arrow type names, e.g. the registry's schema):
        each must be present (columnPresent) with that type (columnType).
    required:
        Columns that may have no missing value (isRequired; fatal): the id, the targets.
    binary:
        Columns whose values must be 0/1 or booleans (isBinary; fatal): an event column
        coded 1/2 would silently invert a survival model.
    ranges:
        Column → ``(low, high)`` plausible range (plausibleValueLow/High; None: no bound).
    allowed:
        Column → allowed text values (allowedValues; fatal), e.g. a split column's
        ``("train", "test")``.
    present:
        Further columns that must be present, of any type (columnPresent; fatal), e.g. a
        study's features.
    max_missing:
        Other columns pass missingness while at most this fraction of rows is missing.
    """

    columns: tuple[tuple[str, str], ...] = ()
    required: tuple[str, ...] = ()
    binary: tuple[str, ...] = ()
    ranges: Mapping[str, tuple[float | None, float | None]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    allowed: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    max_missing: float = 0.5
    present: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.max_missing, bool) or not 0 <= self.max_missing <= 1:
            raise ConfigurationError(f"max_missing must be in [0, 1], got {self.max_missing!r}")
        for name, (low, high) in self.ranges.items():
            for bound in (low, high):
                if bound is not None and (
                    isinstance(bound, bool)
                    or not isinstance(bound, int | float)
                    or not math.isfinite(bound)
                ):
                    raise ConfigurationError(f"range of column {name!r} must be finite numbers")
            if low is not None and high is not None and low > high:
                raise ConfigurationError(f"range of column {name!r}: low > high")
        object.__setattr__(self, "ranges", MappingProxyType(dict(self.ranges)))
        object.__setattr__(self, "allowed", MappingProxyType(dict(self.allowed)))

    @classmethod
    def from_study(cls, spec: StudySpec, *, max_missing: float = 0.5) -> FileExpectations:
        """What a file study (``source = "file"``) needs of a site's file: its feature,
        id, split and outcome columns present; the id, split and outcome complete; a binary
        label or event 0/1; a time ≥ 0; split values train/test."""
        if spec.source != "file" or spec.columns is None:
            raise ConfigurationError(f"study {spec.name!r} is not a file study")
        cols, outcome = spec.columns, spec.outcome
        targets = [c for c in (outcome.label, outcome.time, outcome.event) if c]
        keys = [c for c in (cols.id, cols.split) if c]
        return cls(
            columns=(),
            required=tuple(dict.fromkeys([*keys, *targets])),
            binary=tuple(c for c in (outcome.label, outcome.event) if c),
            ranges={outcome.time: (0.0, None)} if outcome.time else {},
            allowed={cols.split: ("train", "test")} if cols.split else {},
            max_missing=max_missing,
            present=tuple(dict.fromkeys([*cols.features, *keys, *targets])),
        )


def _missing(col: pa.ChunkedArray) -> int:
    """Nulls, plus NaN in a floating column."""
    n = int(col.null_count)
    if pa.types.is_floating(col.type):
        n += int(pc.sum(pc.is_nan(col).fill_null(False)).as_py() or 0)
    return n


def _numeric(col: pa.ChunkedArray) -> pa.ChunkedArray | None:
    if pa.types.is_boolean(col.type):
        return col.cast(pa.int8())
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col
    if pa.types.is_decimal(col.type):
        return col.cast(pa.float64())
    return None


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)


def run_file_checks(
    path: str, *, fatal: frozenset[str], expect: FileExpectations | None
) -> QualityReport:
    """Run the file checks (see :func:`~biofed.data.run_quality_checks`)."""
    file, table = _read(path, None)
    expect = expect or FileExpectations()
    name = file.stem
    rows = table.num_rows
    present = set(table.column_names)
    results: list[CheckResult] = []

    def add(
        check: str,
        category: CheckCategory,
        column: str,
        violated: int,
        total: int,
        *,
        is_fatal: bool = False,
        passed: bool | None = None,
        description: str = "",
    ) -> None:
        result = CheckResult(
            name=check,
            category=category,
            table=name,
            field=column,
            fatal=is_fatal,
            violated=violated,
            total=total,
            passed=violated == 0 if passed is None else passed,
            description=description,
        )
        results.append(mark_fatal(result, fatal))

    critical = {*expect.required, *expect.binary, *expect.allowed, *expect.present}
    expected_types = dict(expect.columns)
    for column in {*expected_types, *critical, *expect.ranges} - present:
        add(
            "columnPresent",
            "conformance",
            column,
            1,
            1,
            is_fatal=column in critical,
            description=f"the file has the column {column}",
        )
    for column, kind in expect.columns:
        if column not in present:
            continue
        add("columnPresent", "conformance", column, 0, 1, description="column present")
        actual = str(table.schema.field(column).type)
        add(
            "columnType",
            "conformance",
            column,
            0 if actual == kind else 1,
            1,
            description=f"the column has type {kind} (found {actual})",
        )
    for column in table.column_names:
        col = table.column(column)
        missing = _missing(col)
        if column in expect.required:
            add(
                "isRequired",
                "completeness",
                column,
                missing,
                rows,
                is_fatal=True,
                description="rows with no value in a required column",
            )
        else:
            add(
                "missingness",
                "completeness",
                column,
                missing,
                rows,
                passed=missing <= expect.max_missing * rows,
                description=f"rows with no value (passes up to {expect.max_missing:.0%})",
            )
        values = _numeric(col)
        if column in expect.binary:
            if values is None:
                bad = rows - missing
            else:
                bad = _count(pc.and_(pc.not_equal(values, 0), pc.not_equal(values, 1)))
            add(
                "isBinary",
                "conformance",
                column,
                bad,
                rows - missing,
                is_fatal=True,
                description="values other than 0/1 (recode 1/2 or yes/no to 0/1)",
            )
        if column in expect.ranges:
            low, high = expect.ranges[column]
            for check, bound, compare in (
                ("plausibleValueLow", low, pc.less),
                ("plausibleValueHigh", high, pc.greater),
            ):
                if bound is None:
                    continue
                bad = rows - missing if values is None else _count(compare(values, bound))
                add(
                    check,
                    "plausibility",
                    column,
                    bad,
                    rows - missing,
                    description=f"values {'below' if check.endswith('Low') else 'above'} {bound:g}",
                )
        if column in expect.allowed:
            allowed = pa.array(list(expect.allowed[column]), type=pa.string())
            text = col.cast(pa.string()) if not pa.types.is_string(col.type) else col
            bad = _count(pc.and_(pc.is_valid(text), pc.invert(pc.is_in(text, value_set=allowed))))
            add(
                "allowedValues",
                "conformance",
                column,
                bad,
                rows - missing,
                is_fatal=True,
                description=f"values other than {', '.join(expect.allowed[column])}",
            )
    return QualityReport(source="file", checks=tuple(results))
