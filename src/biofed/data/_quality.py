"""Data-quality checks at a site: results, reports and what of them may leave the site.

The check types follow OHDSI's DataQualityDashboard (DQD; Blacketer et al., "Increasing
trust in real-world evidence through evaluation of observational data quality", JAMIA
2021), grouped by Kahn et al.'s harmonised categories (completeness, conformance,
plausibility; eGEMs 2016). Each check counts the records that violate it out of the
records it applies to. The OMOP variant is :mod:`biofed.data._quality_omop` (SQL run inside
the site's database), the file variant :mod:`biofed.data._quality_file`.

DQD itself is an R package driving SqlRender templates; no maintained Python
implementation exists, so the checks are re-implemented here as plain SQL over the site's
read-only CDM connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike, fspath
from typing import TYPE_CHECKING, Any, Literal, get_args

from biofed.core import ConfigurationError

if TYPE_CHECKING:
    from biofed.data._quality_file import FileExpectations
    from biofed.data._quality_omop import PlausibleRange, SqlSource

CheckCategory = Literal["completeness", "conformance", "plausibility"]
_CATEGORIES = frozenset(get_args(CheckCategory))

#: Every check type the OMOP and file variants run (``fatal`` selectors must name one).
CHECK_NAMES = (
    "cdmTable",
    "cdmField",
    "isRequired",
    "isPrimaryKey",
    "isForeignKey",
    "fkDomain",
    "isStandardValidConcept",
    "plausibleValueLow",
    "plausibleValueHigh",
    "plausibleUnitConceptIds",
    "plausibleMagnitude",
    "plausibleAfterBirth",
    "plausibleDuringLife",
    "plausibleStartBeforeEnd",
    "withinObservationPeriod",
    "columnPresent",
    "columnType",
    "missingness",
    "isBinary",
    "allowedValues",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """One check's outcome: ``violated`` of ``total`` records broke it.

    Attributes
    ----------
    name:
        The check type (DQD's name where DQD has one, e.g. ``"isRequired"``).
    category:
        ``"completeness"``, ``"conformance"`` or ``"plausibility"``.
    table, field:
        What was checked (for files, ``table`` is the file's dataset and ``field`` a
        column).
    fatal:
        Whether a failure stops training on the dataset (the site's policy refuses it).
    violated, total:
        Records breaking the check, and records it applies to.
    passed:
        Whether the check passed (no violating record).
    concept_id:
        For concept-level checks (plausible ranges per measurement concept), the concept.
    description:
        One line saying what was counted.
    """

    name: str
    category: CheckCategory
    table: str
    field: str
    fatal: bool
    violated: int
    total: int
    passed: bool
    concept_id: int | None = None
    description: str = ""

    @property
    def key(self) -> str:
        """A stable identifier: ``name:table.field`` (``name:table`` for a table-level
        check; ``@concept`` appended for concept-level ones)."""
        key = (
            f"{self.name}:{self.table}.{self.field}" if self.field else f"{self.name}:{self.table}"
        )
        return key if self.concept_id is None else f"{key}@{self.concept_id}"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "category": self.category,
            "table": self.table,
            "field": self.field,
            "fatal": self.fatal,
            "violated": self.violated,
            "total": self.total,
            "passed": self.passed,
            "concept_id": self.concept_id,
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckResult:
        """Parse :meth:`to_json`'s form (ConfigurationError naming what is wrong)."""
        try:
            result = cls(
                name=str(data["name"]),
                category=data["category"],
                table=str(data["table"]),
                field=str(data["field"]),
                fatal=bool(data["fatal"]),
                violated=int(data["violated"]),
                total=int(data["total"]),
                passed=bool(data["passed"]),
                concept_id=None if data.get("concept_id") is None else int(data["concept_id"]),
                description=str(data.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"quality check result is corrupt: {exc!r}") from None
        if result.category not in _CATEGORIES:
            raise ConfigurationError(f"quality check category {result.category!r} is unknown")
        return result


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityReport:
    """Every check run on one dataset.

    Attributes
    ----------
    source:
        ``"omop"`` or ``"file"``.
    checks:
        The results, in the order they ran.
    """

    source: Literal["omop", "file"]
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """True when every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        """The checks that failed."""
        return tuple(c for c in self.checks if not c.passed)

    @property
    def fatal_failures(self) -> tuple[CheckResult, ...]:
        """The failed checks marked fatal (any one stops training on the dataset)."""
        return tuple(c for c in self.checks if c.fatal and not c.passed)

    def get(self, key: str) -> CheckResult:
        """The check with this :attr:`CheckResult.key` (KeyError if none ran)."""
        for check in self.checks:
            if check.key == key:
                return check
        raise KeyError(key)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (record counts included: for the site only, see
        :meth:`redacted`)."""
        return {"source": self.source, "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QualityReport:
        """Parse :meth:`to_json`'s form."""
        if not isinstance(data, Mapping) or data.get("source") not in ("omop", "file"):
            raise ConfigurationError("quality report is corrupt: source must be omop or file")
        checks = data.get("checks")
        if not isinstance(checks, list):
            raise ConfigurationError("quality report is corrupt: checks must be a list")
        return cls(source=data["source"], checks=tuple(CheckResult.from_json(c) for c in checks))

    def redacted(self, min_count: int) -> dict[str, Any]:
        """What of this report may leave the site: pass/fail of every check, and counts
        only where disclosure control allows them.

        A count is shown only if it is 0 or at least ``min_count`` (the dataset's minimum
        cohort); otherwise it reads ``"<k"`` (k = ``min_count``). A violated count is also
        hidden when the records that did *not* violate the check number 1 … k-1, since
        ``total - violated`` would give them away (complementary suppression).

        Privacy notes
        -------------
        Threat: small counts in a quality report single out patients (3 persons who died
        before birth, in a site the coordinator knows). Small-cell suppression with
        complementary suppression, as in Hundepool et al., *Statistical Disclosure
        Control* (Wiley 2012), §5.2 (threshold rule), applied to each check's pair of
        counts. Which checks exist and whether they passed is not suppressed: the
        coordinator needs pass/fail to know whether a site can take part.
        """
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            raise ConfigurationError(f"min_count must be an integer ≥ 1, got {min_count!r}")
        hidden = f"<{min_count}"

        def small(n: int) -> bool:
            return 0 < n < min_count

        rows = []
        for check in self.checks:
            rest = check.total - check.violated
            # a violated count of 0 is what "passed" says anyway; the total is hidden apart
            exposes_rest = check.violated > 0 and small(rest)
            violated: int | str = (
                hidden if small(check.violated) or exposes_rest else check.violated
            )
            rows.append(
                {
                    "key": check.key,
                    "name": check.name,
                    "category": check.category,
                    "table": check.table,
                    "field": check.field,
                    "concept_id": check.concept_id,
                    "fatal": check.fatal,
                    "passed": check.passed,
                    "violated": violated,
                    "total": hidden if small(check.total) else check.total,
                }
            )
        return {
            "source": self.source,
            "passed": self.passed,
            "fatal_failed": [c.key for c in self.fatal_failures],
            "min_count": min_count,
            "checks": rows,
        }


def check_fatal_selectors(selectors: Collection[str], *, where: str = "fatal") -> frozenset[str]:
    """Validate check selectors that mark checks fatal: a check type (``"isRequired"``), or
    a key (``"isRequired:person.gender_concept_id"``) whose type is known.

    Raises
    ------
    ConfigurationError
        Naming the first selector whose check type is unknown.
    """
    if isinstance(selectors, str):
        raise ConfigurationError(f"{where} must be a list of check names, got a string")
    out = set()
    for selector in selectors:
        if not isinstance(selector, str) or selector.split(":", 1)[0] not in CHECK_NAMES:
            raise ConfigurationError(
                f"{where}: {selector!r} names no quality check; use a check type "
                f"({', '.join(CHECK_NAMES)}) or a key like 'isRequired:person.year_of_birth'"
            )
        out.add(selector)
    return frozenset(out)


def mark_fatal(result: CheckResult, selectors: frozenset[str]) -> CheckResult:
    """``result`` with ``fatal`` set when a selector names its type or key (a selector can
    only make a check fatal, never make a default-fatal check a warning)."""
    if result.fatal or not selectors:
        return result
    key = result.key
    base = key.split("@", 1)[0]
    if result.name in selectors or key in selectors or base in selectors:
        return CheckResult(**{**result.to_json(), "fatal": True})
    return result


def _is_omop_location(text: str) -> bool:
    lower = text.lower()
    return "://" in lower or lower.endswith((".duckdb", ".db", ".ddb"))


def run_quality_checks(
    source: SqlSource | str | PathLike[str],
    *,
    fatal: Collection[str] = (),
    expect: FileExpectations | None = None,
    ranges: Sequence[PlausibleRange] | None = None,
    magnitude_orders: float = 10.0,
    today: dt.date | None = None,
) -> QualityReport:
    """Run the data-quality checks on an OMOP CDM or a table file.

    Parameters
    ----------
    source:
        An open :class:`~biofed.data.OmopDatabase` (or anything with its ``query``), a
        DuckDB file / database URL (opened read-only), or a CSV/Parquet file.
    fatal:
        Check types or keys to treat as fatal besides the defaults (see
        :func:`check_fatal_selectors`).
    expect:
        Files only: a :class:`~biofed.data.FileExpectations` (schema, required columns,
        ranges); None checks only missingness.
    ranges:
        OMOP only: the plausible value ranges per measurement concept and unit (default
        :data:`~biofed.data.PLAUSIBLE_RANGES`).
    magnitude_orders:
        OMOP only: a measurement value at least this many orders of magnitude away from
        its concept's median (per unit) is implausible.
    today:
        OMOP only: the date after which no birth is plausible (default: today).

    Returns
    -------
    QualityReport
    """
    from biofed.data._quality_file import FileExpectations, run_file_checks
    from biofed.data._quality_omop import PLAUSIBLE_RANGES, run_omop_checks

    selectors = check_fatal_selectors(fatal)
    if not isinstance(source, str | PathLike):
        if not hasattr(source, "query"):
            raise ConfigurationError(
                "source must be an OMOP database, a URL or a file path, got "
                f"{type(source).__name__}"
            )
        if expect is not None:
            raise ConfigurationError("expect= is for file datasets, not an OMOP CDM")
        return run_omop_checks(
            source,
            fatal=selectors,
            ranges=PLAUSIBLE_RANGES if ranges is None else tuple(ranges),
            magnitude_orders=magnitude_orders,
            today=today or dt.date.today(),
        )
    location = fspath(source)
    if _is_omop_location(location):
        from biofed.data._omop import OmopDatabase

        with OmopDatabase.open(location) as db:
            return run_quality_checks(
                db, fatal=fatal, ranges=ranges, magnitude_orders=magnitude_orders, today=today
            )
    if ranges is not None:
        raise ConfigurationError("ranges= is for an OMOP CDM; a file's ranges go in expect=")
    if expect is not None and not isinstance(expect, FileExpectations):
        raise ConfigurationError("expect must be a FileExpectations")
    return run_file_checks(location, fatal=selectors, expect=expect)
