"""The study dataset specification: one TOML/JSON document every site compiles to one table.

A study spec names the cohort, the outcome and the covariates (OMOP CDM sources) or the
columns (CSV/Parquet sources), and the per-feature transforms. It is parsed once into frozen
dataclasses; its canonical JSON (sorted keys, no whitespace, scalar defaults written out,
empty lists left out) and the SHA-256 digest of that JSON identify it in jobs and agreements.

Security notes: a spec file arrives from a researcher and crosses into every site, so it is
hostile until checked. Every key is known (unknown keys are refused), every value has its
type checked (``True`` is not an integer, ``1.5`` is not a concept id), concept ids are
integers in OMOP's ``INTEGER`` range, covariate names are biofed identifiers, and windows are
ordered. Nothing from a spec is ever pasted into SQL: the OMOP compiler (``_extract``) binds
concept ids and day offsets as parameters and names output columns by position (OWASP SQL
Injection Prevention Cheat Sheet, "defense option 1: prepared statements"). Errors are one
line naming the field, e.g. ``study.toml: [cohort] entry_concepts[1] must be an integer``.

The schema is written out by hand rather than with pydantic/msgspec (not dependencies of
``biofed.data``); it is small, and the hand-written checks give the one-line messages above.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from biofed.core import ConfigurationError, check_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SourceKind = Literal["omop", "file"]
OutcomeKind = Literal["binary", "time_to_event"]
CovariateKindName = Literal["numeric", "binary", "categorical"]

#: OMOP domains an entry, exclusion or outcome event may come from.
DOMAINS = ("condition", "drug", "measurement", "observation", "procedure", "visit")
#: Covariate kinds for OMOP studies; the indicator kinds are the domains they read.
COVARIATE_KINDS = ("age", "condition", "drug", "measurement", "observation", "procedure", "sex")
INDICATOR_KINDS = ("condition", "drug", "observation", "procedure")
IMPUTE = ("constant", "mean", "median")
_MAX_CONCEPT = 2**31 - 1  # OMOP concept_id is INTEGER
_MAX_DAYS = 36_600  # a century either side of the index date
_MAX_SEED = 2**63 - 1
_MAX_COLUMN = 256
#: At most this many concept ids in one concept list (descendants come from concept_ancestor,
#: so real concept sets list few ids; a list of millions would stall every site's query).
MAX_CONCEPTS = 10_000
#: At most this many OMOP covariates (each is a subquery of the site's extraction).
MAX_COVARIATES = 1_000
#: At most this many file feature columns (a summary carries at most 10,000 columns).
MAX_FEATURES = 10_000
#: A spec's JSON text is refused above this many characters (an instruction carries 1 MiB).
MAX_SPEC_CHARS = 1 << 20


def _fail(where: str, section: str, message: str) -> ConfigurationError:
    prefix = f"{where}: [{section}] " if section else f"{where}: "
    return ConfigurationError(prefix + message)


class _Section:
    """Reads one TOML table: takes known keys with type checks, then refuses leftovers."""

    def __init__(self, data: object, *, where: str, section: str) -> None:
        if not isinstance(data, Mapping):
            raise _fail(where, "", f"[{section}] must be a table, got {type(data).__name__}")
        for key in data:
            if not isinstance(key, str):
                raise _fail(where, section, f"keys must be strings, got {key!r}")
        self._data: dict[str, object] = dict(data)
        self.where = where
        self.section = section

    def error(self, message: str) -> ConfigurationError:
        return _fail(self.where, self.section, message)

    def _take(self, key: str) -> object:
        return self._data.pop(key, None)

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def string(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._take(key)
        if value is None:
            if required:
                raise self.error(f"{key} is required")
            return default
        if not isinstance(value, str) or not value:
            raise self.error(f"{key} must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, options: Sequence[str], *, default: str | None = None) -> str | None:
        value = self.string(key, default=default)
        if value is not None and value not in options:
            raise self.error(f"{key} must be one of {', '.join(options)}; got {value!r}")
        return value

    def required_choice(self, key: str, options: Sequence[str]) -> str:
        value = self.choice(key, options)
        if value is None:
            raise self.error(f"{key} is required (one of {', '.join(options)})")
        return value

    def boolean(self, key: str, *, default: bool | None) -> bool | None:
        value = self._take(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"{key} must be true or false, got {value!r}")
        return value

    def integer(self, key: str, *, default: int | None, lo: int, hi: int) -> int | None:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{key} must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self.error(f"{key} must be between {lo} and {hi}, got {value}")
        return value

    def number(self, key: str, *, default: float | None) -> float | None:
        value = self._take(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise self.error(f"{key} must be finite, got {value!r}")
        return float(value)

    def pair(self, key: str) -> tuple[float, float] | None:
        value = self._take(key)
        if value is None:
            return None
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 2
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value)
            or not all(math.isfinite(v) for v in value)
        ):
            raise self.error(f"{key} must be a pair of finite numbers [lo, hi], got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise self.error(f"{key} must have lo <= hi, got [{lo}, {hi}]")
        return lo, hi

    def concepts(self, key: str, *, required: bool = False) -> tuple[int, ...]:
        value = self._take(key)
        if value is None:
            if required:
                raise self.error(f"{key} is required (a list of OMOP concept ids)")
            return ()
        if not isinstance(value, (list, tuple)):
            raise self.error(f"{key} must be a list of OMOP concept ids, got {value!r}")
        if required and not value:
            raise self.error(f"{key} must name at least one concept id")
        if len(value) > MAX_CONCEPTS:
            raise self.error(f"{key} lists {len(value)} concept ids, at most {MAX_CONCEPTS}")
        out: list[int] = []
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int):
                raise self.error(f"{key}[{i}] must be an integer concept id, got {item!r}")
            if not 0 < item <= _MAX_CONCEPT:
                raise self.error(
                    f"{key}[{i}] must be a concept id in 1..{_MAX_CONCEPT}, got {item}"
                )
            out.append(item)
        return tuple(sorted(set(out)))

    def columns(self, key: str, *, required: bool = False) -> tuple[str, ...]:
        value = self._take(key)
        if value is None:
            if required:
                raise self.error(f"{key} is required (a list of column names)")
            return ()
        if not isinstance(value, (list, tuple)):
            raise self.error(f"{key} must be a list of column names, got {value!r}")
        if len(value) > MAX_FEATURES:
            raise self.error(f"{key} lists {len(value)} columns, at most {MAX_FEATURES}")
        out = tuple(_column_name(v, self, f"{key}[{i}]") for i, v in enumerate(value))
        if len(set(out)) != len(out):
            raise self.error(f"{key} names a column twice")
        return out

    def column(self, key: str, *, required: bool = False) -> str | None:
        value = self._take(key)
        if value is None:
            if required:
                raise self.error(f"{key} is required (a column name)")
            return None
        return _column_name(value, self, key)

    def window(self, *, lo: int = -_MAX_DAYS) -> tuple[int, int]:
        start = self.integer("window_start_days", default=None, lo=lo, hi=_MAX_DAYS)
        end = self.integer("window_end_days", default=None, lo=lo, hi=_MAX_DAYS)
        if start is None or end is None:
            raise self.error("window_start_days and window_end_days are required")
        if start > end:
            raise self.error(
                f"window_start_days ({start}) must not be after window_end_days ({end})"
            )
        return start, end

    def done(self) -> None:
        if self._data:
            unknown = ", ".join(sorted(self._data))
            raise self.error(f"unknown key(s): {unknown}")


def _column_name(value: object, section: _Section, key: str) -> str:
    if (
        not isinstance(value, str)
        or not value
        or len(value) > _MAX_COLUMN
        or not value.isprintable()
    ):
        raise section.error(
            f"{key} must be a column name (1-{_MAX_COLUMN} printable characters), got {value!r}"
        )
    return value


def _name(value: str, section: _Section, key: str) -> str:
    try:
        return check_id(value, what=key)
    except ConfigurationError as exc:
        raise section.error(str(exc)) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class CohortSpec:
    """Who is in the study (OMOP): entry events, index date, prior observation, exclusions.

    ``first_occurrence = true`` takes each person's first qualifying event as the index date
    and drops the person if that event fails the prior-observation or exclusion criteria;
    ``false`` takes the first qualifying event that meets them.
    """

    entry_concepts: tuple[int, ...]
    entry_domain: str
    first_occurrence: bool = True
    prior_observation_days: int = 0
    exclude_concepts: tuple[int, ...] = ()
    exclude_domain: str | None = None
    exclude_window_days: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeSpec:
    """What is predicted: a binary label or a (time, event) pair.

    OMOP sources use ``concepts``/``domain`` and the window (days relative to the index
    date); file sources name the ``label`` column, or the ``time`` and ``event`` columns.
    """

    kind: str
    concepts: tuple[int, ...] = ()
    domain: str | None = None
    window_start_days: int | None = None
    window_end_days: int | None = None
    label: str | None = None
    time: str | None = None
    event: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CovariateSpec:
    """One OMOP covariate: ``age``, ``sex``, an indicator (condition, drug, procedure,
    observation: any record in the window) or a measurement (the latest value in the window,
    optionally only in the listed units)."""

    name: str
    kind: str
    concepts: tuple[int, ...] = ()
    window_start_days: int | None = None
    window_end_days: int | None = None
    unit_concepts: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnTransform:
    """Declared transforms for one covariate (``None`` = not stated, the default applies).

    Applied in this order: ``clip`` (absolute) or ``winsorise`` (quantiles), ``log``
    (log1p), ``impute`` (with an optional ``<name>__missing`` indicator), ``standardise``;
    categoricals: ``one_hot`` with categories below ``min_count`` merged into ``"other"``.
    """

    clip: tuple[float, float] | None = None
    winsorise: tuple[float, float] | None = None
    log: bool | None = None
    impute: str | None = None
    impute_value: float | None = None
    missing_indicator: bool | None = None
    standardise: bool | None = None
    one_hot: bool | None = None
    min_count: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FileColumns:
    """Which columns of a CSV/Parquet source to use, and how."""

    features: tuple[str, ...]
    id: str | None = None
    split: str | None = None
    categorical: tuple[str, ...] = ()
    binary: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StudySpec:
    """A parsed, validated study dataset specification.

    Build one with :func:`load_study_spec`, :meth:`from_mapping` or :meth:`from_json`.
    """

    name: str
    source: str
    outcome: OutcomeSpec
    test_fraction: float = 0.25
    seed: int = 0
    cohort: CohortSpec | None = None
    covariates: tuple[CovariateSpec, ...] = ()
    columns: FileColumns | None = None
    transforms: Mapping[str, ColumnTransform] = field(default_factory=lambda: MappingProxyType({}))

    # -- parsing -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "study spec") -> StudySpec:
        """Validate a parsed TOML/JSON document; ``where`` prefixes every error message."""
        top = _Section(data, where=where, section="")
        study = _Section(top._take("study") or {}, where=where, section="study")
        name = _name(study.string("name", required=True) or "", study, "name")
        source = study.required_choice("source", ("file", "omop"))
        test_fraction = study.number("test_fraction", default=0.25)
        assert test_fraction is not None
        if not 0.0 <= test_fraction < 1.0:
            raise study.error(f"test_fraction must be in [0, 1), got {test_fraction}")
        seed = study.integer("seed", default=0, lo=0, hi=_MAX_SEED)
        assert seed is not None
        study.done()

        outcome_data = top._take("outcome")
        if outcome_data is None:
            raise _fail(where, "", "[outcome] is required")
        cohort_data = top._take("cohort")
        covariate_data = top._take("covariates")
        columns_data = top._take("columns")
        transforms_data = top._take("transforms")
        top.done()

        cohort: CohortSpec | None = None
        covariates: tuple[CovariateSpec, ...] = ()
        columns: FileColumns | None = None
        if source == "omop":
            if columns_data is not None:
                raise _fail(where, "columns", "is for source = 'file'; this study is 'omop'")
            if cohort_data is None:
                raise _fail(where, "", "[cohort] is required for source = 'omop'")
            cohort = _cohort(_Section(cohort_data, where=where, section="cohort"))
            outcome = _omop_outcome(_Section(outcome_data, where=where, section="outcome"))
            covariates = _covariates(covariate_data, where=where)
            names = [c.name for c in covariates]
        else:
            if cohort_data is not None:
                raise _fail(where, "cohort", "is for source = 'omop'; this study is 'file'")
            if covariate_data is not None:
                raise _fail(where, "covariates", "is for source = 'omop'; use [columns] features")
            if columns_data is None:
                raise _fail(where, "", "[columns] is required for source = 'file'")
            outcome = _file_outcome(_Section(outcome_data, where=where, section="outcome"))
            columns = _file_columns(_Section(columns_data, where=where, section="columns"), outcome)
            names = list(columns.features)
        transforms = _transforms(transforms_data, names, where=where)
        return cls(
            name=name,
            source=source,
            outcome=outcome,
            test_fraction=test_fraction,
            seed=seed,
            cohort=cohort,
            covariates=covariates,
            columns=columns,
            transforms=MappingProxyType(transforms),
        )

    @classmethod
    def from_json(cls, text: str, *, where: str = "study spec JSON") -> StudySpec:
        """Parse :meth:`to_json`'s output (or any JSON document of the same shape).

        Hostile input at a site (the job carries it): text over :data:`MAX_SPEC_CHARS` and
        nesting too deep for the parser are refused in one line like any other bad JSON.
        """
        if not isinstance(text, str) or len(text) > MAX_SPEC_CHARS:
            raise ConfigurationError(
                f"{where}: must be JSON text of at most {MAX_SPEC_CHARS} chars"
            )
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ConfigurationError(f"{where}: not valid JSON ({first})") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"{where}: must be a JSON object")
        return cls.from_mapping(data, where=where)

    # -- canonical form ------------------------------------------------------------------
    def to_mapping(self) -> dict[str, Any]:
        """The spec as a plain document with every default written out (no ``None``)."""
        doc: dict[str, Any] = {
            "study": {
                "name": self.name,
                "source": self.source,
                "test_fraction": self.test_fraction,
                "seed": self.seed,
            },
            "outcome": _plain(self.outcome),
        }
        if self.cohort is not None:
            doc["cohort"] = _plain(self.cohort)
        if self.covariates:
            doc["covariates"] = [_plain(c) for c in self.covariates]
        if self.columns is not None:
            doc["columns"] = _plain(self.columns)
        if self.transforms:
            doc["transforms"] = {k: _plain(v) for k, v in self.transforms.items()}
        return doc

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, ASCII; equal specs give equal text."""
        return json.dumps(
            self.to_mapping(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )

    @property
    def digest(self) -> str:
        """SHA-256 (hex) of :meth:`to_json`; agreements list approved specs by it."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()

    # -- derived -------------------------------------------------------------------------
    @property
    def outcome_kind(self) -> OutcomeKind:
        """``"binary"`` or ``"time_to_event"``."""
        return "binary" if self.outcome.kind == "binary" else "time_to_event"

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """The covariates (OMOP) or feature columns (file), in the spec's order."""
        if self.columns is not None:
            return self.columns.features
        return tuple(c.name for c in self.covariates)

    @property
    def covariate_kinds(self) -> Mapping[str, CovariateKindName]:
        """Each covariate's kind: ``numeric``, ``binary`` (0/1 indicator) or ``categorical``."""
        kinds: dict[str, CovariateKindName] = {}
        if self.columns is not None:
            for name in self.columns.features:
                if name in self.columns.categorical:
                    kinds[name] = "categorical"
                elif name in self.columns.binary:
                    kinds[name] = "binary"
                else:
                    kinds[name] = "numeric"
        for cov in self.covariates:
            if cov.kind == "sex":
                kinds[cov.name] = "categorical"
            elif cov.kind in INDICATOR_KINDS:
                kinds[cov.name] = "binary"
            else:
                kinds[cov.name] = "numeric"
        return MappingProxyType(kinds)

    def transform_for(self, name: str) -> ColumnTransform | None:
        """The declared transform of covariate ``name``: its own table, else ``"*"``, else None."""
        return self.transforms.get(name, self.transforms.get("*"))


def _plain(obj: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in obj.__slots__:  # type: ignore[attr-defined]
        value = getattr(obj, key)
        if value is None or value == ():
            continue  # defaults are left out, so the canonical form has one spelling
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _cohort(sec: _Section) -> CohortSpec:
    if sec.has("circe"):
        raise sec.error(
            "circe cohort definitions are not supported (ohdsi-circepy emits SQL Server "
            "OHDSI-SQL scripts that write temp and cohort tables, and a site's CDM is read-only "
            "here); declare the cohort with entry_concepts, entry_domain, …"
        )
    entry = sec.concepts("entry_concepts", required=True)
    domain = sec.required_choice("entry_domain", DOMAINS)
    first = sec.boolean("first_occurrence", default=True)
    prior = sec.integer("prior_observation_days", default=0, lo=0, hi=_MAX_DAYS)
    exclude = sec.concepts("exclude_concepts")
    exclude_domain = sec.choice("exclude_domain", DOMAINS)
    window = sec.integer("exclude_window_days", default=0, lo=0, hi=_MAX_DAYS)
    if exclude and exclude_domain is None:
        raise sec.error("exclude_domain is required when exclude_concepts is given")
    if exclude_domain is not None and not exclude:
        raise sec.error("exclude_concepts is required when exclude_domain is given")
    sec.done()
    assert first is not None
    assert prior is not None
    assert window is not None
    return CohortSpec(
        entry_concepts=entry,
        entry_domain=domain,
        first_occurrence=first,
        prior_observation_days=prior,
        exclude_concepts=exclude,
        exclude_domain=exclude_domain,
        exclude_window_days=window,
    )


def _omop_outcome(sec: _Section) -> OutcomeSpec:
    kind = sec.required_choice("kind", ("binary", "time_to_event"))
    concepts = sec.concepts("concepts", required=True)
    domain = sec.required_choice("domain", DOMAINS)
    start, end = sec.window(lo=0)
    for key in ("label", "time", "event"):
        if sec.has(key):
            raise sec.error(f"{key} is for source = 'file'; OMOP outcomes use concepts")
    sec.done()
    return OutcomeSpec(
        kind=kind,
        concepts=concepts,
        domain=domain,
        window_start_days=start,
        window_end_days=end,
    )


def _file_outcome(sec: _Section) -> OutcomeSpec:
    kind = sec.required_choice("kind", ("binary", "time_to_event"))
    for key in ("concepts", "domain", "window_start_days", "window_end_days"):
        if sec.has(key):
            raise sec.error(f"{key} is for source = 'omop'; file outcomes name columns")
    if kind == "binary":
        label = sec.column("label", required=True)
        for key in ("time", "event"):
            if sec.has(key):
                raise sec.error(f"{key} is for kind = 'time_to_event'; binary outcomes use label")
        sec.done()
        return OutcomeSpec(kind=kind, label=label)
    time = sec.column("time", required=True)
    event = sec.column("event", required=True)
    if sec.has("label"):
        raise sec.error("label is for kind = 'binary'; time_to_event outcomes use time and event")
    sec.done()
    if time == event:
        raise sec.error("time and event must be different columns")
    return OutcomeSpec(kind=kind, time=time, event=event)


def _covariates(data: object, *, where: str) -> tuple[CovariateSpec, ...]:
    if data is None:
        return ()
    if not isinstance(data, (list, tuple)):
        raise _fail(where, "", "[[covariates]] must be a list of tables")
    if len(data) > MAX_COVARIATES:
        raise _fail(where, "", f"[[covariates]] has {len(data)} entries, at most {MAX_COVARIATES}")
    out: list[CovariateSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        sec = _Section(item, where=where, section=f"covariates[{i}]")
        name = _name(sec.string("name", required=True) or "", sec, "name")
        if name in seen:
            raise sec.error(f"name {name!r} is used by two covariates")
        if "__" in name:
            raise sec.error(f"name {name!r} must not contain '__' (reserved for derived columns)")
        seen.add(name)
        kind = sec.required_choice("kind", COVARIATE_KINDS)
        if kind in ("age", "sex"):
            for key in ("concepts", "window_start_days", "window_end_days", "unit_concepts"):
                if sec.has(key):
                    raise sec.error(f"{key} does not apply to kind = {kind!r}")
            sec.done()
            out.append(CovariateSpec(name=name, kind=kind))
            continue
        concepts = sec.concepts("concepts", required=True)
        start, end = sec.window()
        units = sec.concepts("unit_concepts")
        if units and kind != "measurement":
            raise sec.error("unit_concepts applies only to kind = 'measurement'")
        sec.done()
        out.append(
            CovariateSpec(
                name=name,
                kind=kind,
                concepts=concepts,
                window_start_days=start,
                window_end_days=end,
                unit_concepts=units,
            )
        )
    return tuple(out)


def _file_columns(sec: _Section, outcome: OutcomeSpec) -> FileColumns:
    features = sec.columns("features", required=True)
    if not features:
        raise sec.error("features must name at least one column")
    id_column = sec.column("id")
    split = sec.column("split")
    categorical = sec.columns("categorical")
    binary = sec.columns("binary")
    sec.done()
    for key, subset in (("categorical", categorical), ("binary", binary)):
        stray = [c for c in subset if c not in features]
        if stray:
            raise sec.error(f"{key} must be a subset of features; not features: {stray}")
    both = sorted(set(categorical) & set(binary))
    if both:
        raise sec.error(f"columns cannot be both categorical and binary: {both}")
    targets = [c for c in (outcome.label, outcome.time, outcome.event) if c is not None]
    roles = {"id": id_column, "split": split}
    for role, column in roles.items():
        if column is not None and (column in features or column in targets):
            raise sec.error(f"{role} column {column!r} must not also be a feature or target")
    if id_column is not None and id_column == split:
        raise sec.error("id and split must be different columns")
    clash = [c for c in targets if c in features]
    if clash:
        raise sec.error(f"outcome column(s) {clash} must not also be features")
    for name in features:
        if "__" in name:
            raise sec.error(f"feature {name!r} must not contain '__' (reserved)")
        if "=" in name:  # one-hot features are "<name>=<category>": "sex=female" would clash
            raise sec.error(f"feature {name!r} must not contain '=' (reserved for one-hot names)")
    return FileColumns(
        features=features, id=id_column, split=split, categorical=categorical, binary=binary
    )


def _transforms(data: object, names: Sequence[str], *, where: str) -> dict[str, ColumnTransform]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise _fail(where, "transforms", "must be a table of per-covariate tables")
    out: dict[str, ColumnTransform] = {}
    for key in sorted(data, key=str):
        if key != "*" and key not in names:
            raise _fail(where, f"transforms.{key}", "names no covariate of this study")
        sec = _Section(data[key], where=where, section=f"transforms.{key}")
        clip = sec.pair("clip")
        winsorise = sec.pair("winsorise")
        if clip is not None and winsorise is not None:
            raise sec.error("give clip or winsorise, not both")
        if winsorise is not None and not 0.0 <= winsorise[0] <= winsorise[1] <= 1.0:
            raise sec.error(f"winsorise quantiles must be within [0, 1], got {list(winsorise)}")
        log = sec.boolean("log", default=None)
        impute = sec.choice("impute", IMPUTE)
        impute_value = sec.number("impute_value", default=None)
        if (impute == "constant") != (impute_value is not None):
            raise sec.error("impute_value is required with, and only with, impute = 'constant'")
        out[key] = ColumnTransform(
            clip=clip,
            winsorise=winsorise,
            log=log,
            impute=impute,
            impute_value=impute_value,
            missing_indicator=sec.boolean("missing_indicator", default=None),
            standardise=sec.boolean("standardise", default=None),
            one_hot=sec.boolean("one_hot", default=None),
            min_count=sec.integer("min_count", default=None, lo=1, hi=2**31 - 1),
        )
        sec.done()
    return out


def load_study_spec(path: str | PathLike[str]) -> StudySpec:
    """Read and validate a study spec from a ``.toml`` or ``.json`` file.

    Raises
    ------
    ConfigurationError
        If the file cannot be read or parsed, or the spec is invalid (one line naming the
        field).
    """
    p = Path(path)
    where = p.name
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigurationError(f"study spec {p.name!r} must be a .toml or .json file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read study spec {str(p)!r}: {exc}") from None
    if suffix == ".json":
        return StudySpec.from_json(text, where=where)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigurationError(f"{where}: not valid TOML (nested too deeply)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{where}: not valid TOML ({exc})") from None
    return StudySpec.from_mapping(data, where=where)
