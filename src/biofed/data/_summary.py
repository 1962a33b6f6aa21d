"""What one pass of federated preprocessing asks a site, and what the site answers.

A :class:`SummaryRequest` travels from the coordinator to every site (as JSON); each site
answers with a :class:`SiteSummary` of its *training* rows (as named numpy arrays, the content
of a ParameterSet). Both cross a trust boundary, so both are parsed as hostile input.

Security notes
--------------
The site parses the coordinator's request and the coordinator parses each site's reply; either
side may be compromised or buggy. Parsing is strict allow-listing (OWASP Input Validation Cheat
Sheet): unknown keys and names are refused, sizes are capped (a reply with millions of
"categories" would otherwise exhaust the coordinator's memory), numbers must be finite, counts
non-negative integers, variances (``m2``) non-negative and histograms consistent with their
counts. Every refusal is one line naming the field, with no record-level data in it. Category
names are percent-encoded in array names (RFC 3986, ``urllib.parse.quote`` with no safe
characters), so a category called ``"a/b"`` cannot forge another array's name; a reply whose
names are not in canonical encoding is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from biofed.core import Array, ConfigurationError, DataError, check_id

#: At most this many categories per column in a site's reply (after "other" merging).
MAX_CATEGORIES = 1000
#: At most this many columns in one request or reply.
MAX_COLUMNS = 10_000
#: At most this many histogram edges per column (refinement passes use 33 per quantile).
MAX_EDGES = 4097
#: At most this many passes of one fit.
MAX_PASSES = 64
#: A request's JSON text is refused above this many characters.
MAX_REQUEST_CHARS = 4_000_000
#: Outcome statistics a site may report.
OUTCOME_KEYS = ("n", "positives", "events", "time_sum")


def _column(name: object, what: str) -> str:
    if not isinstance(name, str):
        raise DataError(f"{what}: column names must be strings, got {type(name).__name__}")
    try:
        return check_id(name, what=f"{what} column name")
    except ConfigurationError as exc:
        raise DataError(str(exc)) from None


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"{what} must be an integer count, got {type(value).__name__}")
    if value < 0:
        raise DataError(f"{what} must be ≥ 0, got {value}")
    return int(value)


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise DataError(f"{what} must be a number, got {type(value).__name__}")
    out = float(value)
    if not math.isfinite(out):
        raise DataError(f"{what} must be finite, got {out}")
    return out


def _edges(value: object, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{what} must be a list of numbers")
    if not 1 <= len(value) <= MAX_EDGES:
        raise DataError(f"{what} must have 1 to {MAX_EDGES} edges, got {len(value)}")
    edges = tuple(_finite(v, what) for v in value)
    if any(b <= a for a, b in pairwise(edges)):
        raise DataError(f"{what} must be strictly increasing")
    return edges


@dataclass(frozen=True, slots=True, kw_only=True)
class NumericStats:
    """One site's (or the pooled) statistics of one numeric column's present values.

    Attributes
    ----------
    n, missing:
        Present and missing values.
    mean, m2:
        Mean and sum of squared deviations from it of the present values (Chan, Golub &
        LeVeque 1979 parallel moments: two sites' moments combine exactly, see :meth:`combine`).
    edges, counts:
        A histogram on common edges, or ``None``: ``counts[0]`` counts values below
        ``edges[0]``, ``counts[i]`` those in ``[edges[i-1], edges[i])`` and ``counts[-1]``
        those ≥ ``edges[-1]`` (``len(edges) + 1`` counts).
    """

    n: int
    missing: int
    mean: float
    m2: float
    edges: tuple[float, ...] | None = None
    counts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        what = "numeric statistics"
        object.__setattr__(self, "n", _count(self.n, f"{what}: n"))
        object.__setattr__(self, "missing", _count(self.missing, f"{what}: missing"))
        object.__setattr__(self, "mean", _finite(self.mean, f"{what}: mean"))
        m2 = _finite(self.m2, f"{what}: m2")
        if m2 < 0:
            raise DataError(f"{what}: m2 must be ≥ 0, got {m2}")
        object.__setattr__(self, "m2", m2)
        if self.n == 0 and (self.mean != 0.0 or m2 != 0.0):
            raise DataError(f"{what}: mean and m2 must be 0 when n is 0")
        if (self.edges is None) != (self.counts is None):
            raise DataError(f"{what}: edges and counts come together")
        if self.edges is not None and self.counts is not None:
            edges = _edges(list(self.edges), f"{what}: edges")
            counts = tuple(_count(c, f"{what}: counts") for c in self.counts)
            if len(counts) != len(edges) + 1:
                raise DataError(
                    f"{what}: {len(counts)} counts for {len(edges)} edges (need edges + 1)"
                )
            if sum(counts) != self.n:
                raise DataError(f"{what}: the histogram counts {sum(counts)} values, n is {self.n}")
            object.__setattr__(self, "edges", edges)
            object.__setattr__(self, "counts", counts)

    @property
    def variance(self) -> float:
        """Population variance of the present values (0 when there are none)."""
        return self.m2 / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        """Population standard deviation of the present values."""
        return math.sqrt(self.variance)

    @staticmethod
    def of(values: Array, edges: tuple[float, ...] | None = None) -> NumericStats:
        """The statistics of ``values`` (NaN = missing), with a histogram on ``edges``."""
        x = np.asarray(values, dtype=np.float64)
        present = x[~np.isnan(x)]
        n = int(present.size)
        mean = float(present.mean()) if n else 0.0
        m2 = float(np.sum((present - mean) ** 2)) if n else 0.0
        counts = None
        if edges is not None:
            bins = np.searchsorted(np.asarray(edges, dtype=np.float64), present, side="right")
            counts = tuple(int(c) for c in np.bincount(bins, minlength=len(edges) + 1))
        return NumericStats(
            n=n, missing=int(x.size - n), mean=mean, m2=m2, edges=edges, counts=counts
        )

    @staticmethod
    def combine(parts: list[NumericStats]) -> NumericStats:
        """The pooled statistics (Chan et al.'s pairwise update; histograms added).

        Every part must carry a histogram on the same edges, or none does.
        """
        if not parts:
            raise DataError("cannot combine the statistics of zero sites")
        edges = parts[0].edges
        if any(p.edges != edges for p in parts):
            raise DataError("cannot combine histograms on different edges")
        n, mean, m2 = 0, 0.0, 0.0
        for p in parts:
            if p.n == 0:
                continue
            total = n + p.n
            delta = p.mean - mean
            mean = mean + delta * p.n / total
            m2 = m2 + p.m2 + delta * delta * n * p.n / total
            n = total
        counts = None
        if edges is not None:
            counts = tuple(
                int(c) for c in np.sum([np.asarray(p.counts, dtype=np.int64) for p in parts], 0)
            )
        return NumericStats(
            n=n,
            missing=sum(p.missing for p in parts),
            mean=mean,
            m2=max(m2, 0.0),
            edges=edges,
            counts=counts,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteSummary:
    """One site's answer to one :class:`SummaryRequest`: sufficient statistics of its train rows.

    Attributes
    ----------
    records:
        Training rows summarised.
    outcome:
        ``n`` and ``positives`` (binary) or ``n``, ``events`` and ``time_sum`` (time to event).
    numeric:
        Column → :class:`NumericStats` of the values after the request's transforms.
    categorical:
        Column → category → count; categories with fewer than the site's ``min_cell`` records
        are merged into ``"other"`` before the summary leaves the site.
    suppressed:
        What disclosure control withheld: column → number of categories merged into
        ``"other"``, or 1 for a numeric column whose statistics were withheld.
    """

    records: int
    outcome: Mapping[str, float] = field(default_factory=dict)
    numeric: Mapping[str, NumericStats] = field(default_factory=dict)
    categorical: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    suppressed: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        records = _count(self.records, "summary: records")
        object.__setattr__(self, "records", records)
        outcome: dict[str, float] = {}
        for key, value in self.outcome.items():
            if key not in OUTCOME_KEYS:
                raise DataError(f"summary: unknown outcome statistic {key!r}")
            number = _finite(value, f"summary: outcome {key}")
            if number < 0:
                raise DataError(f"summary: outcome {key} must be ≥ 0, got {number}")
            outcome[key] = number
        for key in ("positives", "events"):
            if outcome.get(key, 0.0) > outcome.get("n", 0.0):
                raise DataError(f"summary: outcome {key} exceeds n")
        if len(self.numeric) + len(self.categorical) > MAX_COLUMNS:
            raise DataError(f"summary: more than {MAX_COLUMNS} columns")
        numeric: dict[str, NumericStats] = {}
        for name, stats in self.numeric.items():
            _column(name, "summary")
            if not isinstance(stats, NumericStats):
                raise DataError(f"summary: numeric {name!r} is not NumericStats")
            if stats.n + stats.missing > records:
                raise DataError(f"summary: numeric {name!r} counts more values than records")
            numeric[name] = stats
        categorical: dict[str, Mapping[str, int]] = {}
        for name, counts in self.categorical.items():
            _column(name, "summary")
            if name in numeric:
                raise DataError(f"summary: column {name!r} is both numeric and categorical")
            if not 1 <= len(counts) <= MAX_CATEGORIES:
                raise DataError(
                    f"summary: categorical {name!r} must have 1 to {MAX_CATEGORIES} categories, "
                    f"got {len(counts)}"
                )
            checked: dict[str, int] = {}
            for cat, n in counts.items():
                if not isinstance(cat, str) or len(cat) > 256:
                    raise DataError(f"summary: categorical {name!r} has a bad category name")
                checked[cat] = _count(n, f"summary: categorical {name!r} count")
            if sum(checked.values()) > records:
                raise DataError(f"summary: categorical {name!r} counts more values than records")
            categorical[name] = MappingProxyType(checked)
        suppressed: dict[str, int] = {}
        for name, n in self.suppressed.items():
            _column(name, "summary suppressed")
            suppressed[name] = _count(n, f"summary: suppressed {name!r}")
        object.__setattr__(self, "outcome", MappingProxyType(outcome))
        object.__setattr__(self, "numeric", MappingProxyType(numeric))
        object.__setattr__(self, "categorical", MappingProxyType(categorical))
        object.__setattr__(self, "suppressed", MappingProxyType(suppressed))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SiteSummary):
            return NotImplemented
        return (
            self.records == other.records
            and dict(self.outcome) == dict(other.outcome)
            and dict(self.numeric) == dict(other.numeric)
            and {k: dict(v) for k, v in self.categorical.items()}
            == {k: dict(v) for k, v in other.categorical.items()}
            and dict(self.suppressed) == dict(other.suppressed)
        )

    __hash__ = None  # type: ignore[assignment]

    def to_arrays(self) -> dict[str, Array]:
        """The summary as named arrays (a ParameterSet's content).

        Names: ``records``; ``outcome/<key>``; ``numeric/<col>/{n,missing,mean,m2}`` and, with
        a histogram, ``numeric/<col>/{edges,counts}``; ``categorical/<col>/<category>`` with
        the category percent-encoded; ``suppressed/<col>``. Counts are int64 0-d arrays,
        means and sums float64.
        """
        out: dict[str, Array] = {"records": np.asarray(self.records, dtype=np.int64)}
        for key, value in self.outcome.items():
            out[f"outcome/{key}"] = np.asarray(value, dtype=np.float64)
        for name, s in self.numeric.items():
            out[f"numeric/{name}/n"] = np.asarray(s.n, dtype=np.int64)
            out[f"numeric/{name}/missing"] = np.asarray(s.missing, dtype=np.int64)
            out[f"numeric/{name}/mean"] = np.asarray(s.mean, dtype=np.float64)
            out[f"numeric/{name}/m2"] = np.asarray(s.m2, dtype=np.float64)
            if s.edges is not None and s.counts is not None:
                out[f"numeric/{name}/edges"] = np.asarray(s.edges, dtype=np.float64)
                out[f"numeric/{name}/counts"] = np.asarray(s.counts, dtype=np.int64)
        for name, counts in self.categorical.items():
            for cat, n in counts.items():
                out[f"categorical/{name}/{quote(cat, safe='')}"] = np.asarray(n, dtype=np.int64)
        for name, n in self.suppressed.items():
            out[f"suppressed/{name}"] = np.asarray(n, dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> SiteSummary:
        """Parse a site's reply (hostile input): the inverse of :meth:`to_arrays`.

        Raises
        ------
        DataError
            One line naming the array, for an unknown name, a wrong dtype or shape, a
            non-finite number, a negative or non-integer count, a negative ``m2``, too many
            columns or categories, or an inconsistent histogram.
        """
        limit = 1 + len(OUTCOME_KEYS) + MAX_COLUMNS * (6 + MAX_CATEGORIES)
        if not isinstance(arrays, Mapping) or len(arrays) > limit:
            raise DataError("summary: not a mapping of arrays, or too many arrays")
        records: int | None = None
        outcome: dict[str, float] = {}
        numeric: dict[str, dict[str, Any]] = {}
        categorical: dict[str, dict[str, int]] = {}
        suppressed: dict[str, int] = {}
        for name, value in arrays.items():
            if not isinstance(name, str):
                raise DataError("summary: array names must be strings")
            array = np.asarray(value)
            parts = name.split("/")
            if name == "records":
                records = _scalar_count(array, name)
            elif parts[0] == "outcome" and len(parts) == 2 and parts[1] in OUTCOME_KEYS:
                outcome[parts[1]] = _scalar_float(array, name)
            elif parts[0] == "numeric" and len(parts) == 3:
                col = _column(parts[1], f"summary array {name!r}")
                slot = numeric.setdefault(col, {})
                if len(numeric) > MAX_COLUMNS:
                    raise DataError(f"summary: more than {MAX_COLUMNS} numeric columns")
                if parts[2] in ("n", "missing"):
                    slot[parts[2]] = _scalar_count(array, name)
                elif parts[2] in ("mean", "m2"):
                    slot[parts[2]] = _scalar_float(array, name)
                elif parts[2] == "edges":
                    _check_vector(array, name, np.float64, MAX_EDGES)
                    slot["edges"] = tuple(_finite(v, name) for v in array.tolist())
                elif parts[2] == "counts":
                    _check_vector(array, name, np.int64, MAX_EDGES + 1)
                    slot["counts"] = tuple(_count(v, name) for v in array.tolist())
                else:
                    raise DataError(f"summary: unknown array {name!r}")
            elif parts[0] == "categorical" and len(parts) == 3:
                col = _column(parts[1], f"summary array {name!r}")
                cat = unquote(parts[2], errors="strict")
                if quote(cat, safe="") != parts[2]:
                    raise DataError(f"summary: array {name!r} has a badly encoded category")
                counts = categorical.setdefault(col, {})
                if len(counts) >= MAX_CATEGORIES:
                    raise DataError(
                        f"summary: categorical {col!r} has more than {MAX_CATEGORIES} categories"
                    )
                counts[cat] = _scalar_count(array, name)
            elif parts[0] == "suppressed" and len(parts) == 2:
                suppressed[_column(parts[1], f"summary array {name!r}")] = _scalar_count(
                    array, name
                )
            else:
                raise DataError(f"summary: unknown array {name[:80]!r}")
        if records is None:
            raise DataError("summary: the array 'records' is missing")
        stats: dict[str, NumericStats] = {}
        for col, slot in numeric.items():
            missing = [k for k in ("n", "missing", "mean", "m2") if k not in slot]
            if missing:
                raise DataError(f"summary: numeric {col!r} lacks {'/'.join(missing)}")
            try:
                stats[col] = NumericStats(**slot)
            except DataError as exc:
                raise DataError(f"summary: numeric {col!r}: {exc}") from None
        return cls(
            records=records,
            outcome=outcome,
            numeric=stats,
            categorical=categorical,
            suppressed=suppressed,
        )


def _scalar_count(array: Array, name: str) -> int:
    if array.shape != () or array.dtype != np.int64:
        raise DataError(f"summary: array {name!r} must be a 0-d int64 count")
    return _count(int(array), f"summary: array {name!r}")


def _scalar_float(array: Array, name: str) -> float:
    if array.shape != () or array.dtype != np.float64:
        raise DataError(f"summary: array {name!r} must be a 0-d float64")
    return _finite(float(array), f"summary: array {name!r}")


def _check_vector(array: Array, name: str, dtype: type, limit: int) -> None:
    if array.ndim != 1 or array.dtype != np.dtype(dtype) or not 1 <= array.size <= limit:
        raise DataError(
            f"summary: array {name!r} must be 1-d {np.dtype(dtype)} with 1 to {limit} entries"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NumericRequest:
    """What a site computes for one numeric column in one pass.

    The site first clips to ``clip`` (absolute bounds, or the bounds winsorising fitted), then
    applies ``log1p`` if ``log``; the statistics are of those values (missing ones counted,
    not imputed). With ``edges``, it adds a histogram on them.
    """

    clip: tuple[float, float] | None = None
    log: bool = False
    edges: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.clip is not None:
            lo, hi = (_finite(v, "request: clip") for v in self.clip)
            if lo > hi:
                raise DataError(f"request: clip lower bound {lo} exceeds upper bound {hi}")
            object.__setattr__(self, "clip", (lo, hi))
        if not isinstance(self.log, bool):
            raise DataError("request: log must be true or false")
        if self.edges is not None:
            object.__setattr__(self, "edges", _edges(list(self.edges), "request: edges"))

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        return {
            "clip": None if self.clip is None else list(self.clip),
            "edges": None if self.edges is None else list(self.edges),
            "log": self.log,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SummaryRequest:
    """One pass of a :class:`PreprocessingFit`: what every site is asked to summarise.

    Attributes
    ----------
    pass_no:
        1 for the first pass.
    numeric:
        Column → :class:`NumericRequest` (the transforms fitted so far, and histogram edges).
    categorical:
        Columns whose category counts are wanted.
    """

    pass_no: int
    numeric: Mapping[str, NumericRequest] = field(default_factory=dict)
    categorical: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        pass_no = _count(self.pass_no, "request: pass_no")
        if not 1 <= pass_no <= MAX_PASSES:
            raise DataError(f"request: pass_no must be 1 to {MAX_PASSES}, got {pass_no}")
        if len(self.numeric) + len(self.categorical) > MAX_COLUMNS:
            raise DataError(f"request: more than {MAX_COLUMNS} columns")
        numeric = {_column(k, "request"): v for k, v in self.numeric.items()}
        for name, value in numeric.items():
            if not isinstance(value, NumericRequest):
                raise DataError(f"request: numeric {name!r} is not a NumericRequest")
        categorical = tuple(_column(c, "request") for c in self.categorical)
        if len(set(categorical)) != len(categorical) or set(categorical) & set(numeric):
            raise DataError("request: a column is named twice")
        object.__setattr__(self, "numeric", MappingProxyType(numeric))
        object.__setattr__(self, "categorical", categorical)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SummaryRequest):
            return NotImplemented
        return (
            self.pass_no == other.pass_no
            and dict(self.numeric) == dict(other.numeric)
            and self.categorical == other.categorical
        )

    __hash__ = None  # type: ignore[assignment]

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace; floats round-trip exactly)."""
        body = {
            "categorical": list(self.categorical),
            "numeric": {k: v.to_mapping() for k, v in self.numeric.items()},
            "pass_no": self.pass_no,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> SummaryRequest:
        """Parse a request (hostile input at the site): one-line :class:`DataError` if bad."""
        if not isinstance(text, str) or len(text) > MAX_REQUEST_CHARS:
            raise DataError(f"request: must be JSON text of at most {MAX_REQUEST_CHARS} chars")
        try:
            body = json.loads(text, parse_constant=_reject_constant)
        except DataError:
            raise
        except (ValueError, RecursionError) as exc:
            raise DataError(f"request: not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(body, dict):
            raise DataError("request: must be a JSON object")
        unknown = set(body) - {"pass_no", "numeric", "categorical"}
        if unknown:
            raise DataError(f"request: unknown field {sorted(unknown)[0]!r}")
        numeric_in = body.get("numeric", {})
        categorical = body.get("categorical", [])
        if not isinstance(numeric_in, dict):
            raise DataError("request: numeric must be an object")
        if not isinstance(categorical, list):
            raise DataError("request: categorical must be a list")
        numeric: dict[str, NumericRequest] = {}
        for name, item in numeric_in.items():
            if not isinstance(item, dict):
                raise DataError(f"request: numeric {name[:40]!r} must be an object")
            extra = set(item) - {"clip", "log", "edges"}
            if extra:
                raise DataError(f"request: numeric {name[:40]!r}: unknown field {min(extra)!r}")
            clip = item.get("clip")
            if clip is not None and (not isinstance(clip, list) or len(clip) != 2):
                raise DataError(f"request: numeric {name[:40]!r}: clip must be [lo, hi]")
            edges = item.get("edges")
            if edges is not None and not isinstance(edges, list):
                raise DataError(f"request: numeric {name[:40]!r}: edges must be a list")
            numeric[name] = NumericRequest(
                clip=None if clip is None else (clip[0], clip[1]),
                log=item.get("log", False),
                edges=None if edges is None else tuple(edges),
            )
        if "pass_no" not in body:
            raise DataError("request: pass_no is missing")
        return cls(pass_no=body["pass_no"], numeric=numeric, categorical=tuple(categorical))


def _reject_constant(name: str) -> float:
    raise DataError(f"request: {name} is not a number biofed accepts")
