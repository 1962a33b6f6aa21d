"""The fitted preprocessing of a study (applied identically everywhere) and a site's summary.

:class:`Preprocessing` is the result of a :class:`~biofed.data.PreprocessingFit`: per covariate,
the fitted clip bounds, log, fill value, missing indicator and standardisation, or the one-hot
vocabulary. It is stored with the model and applied unchanged at every site and at inference.
:func:`summarise` is the site's side of the fit: sufficient statistics of its training rows.

Written here rather than with scikit-learn's ``ColumnTransformer`` because the parameters are
fitted federatedly (no site's rows are in one place) and must travel as canonical JSON that a
site can check before it applies them; the transforms themselves are a few numpy lines.

Privacy notes
-------------
:func:`summarise` applies the site's disclosure control (the "small cell" rule of statistical
disclosure control, e.g. Hundepool et al., *Statistical Disclosure Control*, 2012, §5): a site
with fewer than ``min_cell`` training records refuses to answer; categories with fewer than
``min_cell`` records are merged into ``"other"`` (and, if ``"other"`` itself would then hold
fewer than ``min_cell``, the next-smallest categories too: secondary suppression); a numeric
column with fewer than ``min_cell`` present values is withheld; the outcome's count of cases
(positives or events) is left out when it, or the count of non-cases, is below ``min_cell``
(the fit does not need it; the heterogeneity report then withholds that site's outcome).
Moments and histogram counts of a column's present values are released unsuppressed (they are
aggregates over at least ``min_cell`` values; the histogram's bins are the coordinator's, not
the site's). Known limit: a malicious coordinator can choose narrow bins (as the quantile
refinement legitimately does) and learn how many of a site's values fall in a narrow range,
down to a count of 1; the request's size is capped but its bin widths cannot be judged by the
site. Where that matters, run the phase under secure aggregation (the coordinator then sees
only sums over sites) or add noise to the counts; neither is done here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from biofed.core import Array, ConfigurationError, DataError, check_id
from biofed.data._dataset import Dataset, SiteData
from biofed.data._encode import MISSING_SUFFIX, OTHER
from biofed.data._encode import _category as category_of
from biofed.data._extract import ExtractedTable
from biofed.data._summary import (
    MAX_CATEGORIES,
    MAX_COLUMNS,
    NumericStats,
    SiteSummary,
    SummaryRequest,
    _column,
    _finite,
)

_FORMAT = 1
_MAX_JSON_CHARS = 20_000_000


def clip_log(x: Array, clip: tuple[float, float] | None, log: bool, *, column: str) -> Array:
    """``x`` clipped to ``clip`` then ``log1p``-ed if ``log`` (NaN stays NaN)."""
    out = np.asarray(x, dtype=np.float64)
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    if log:
        if np.any(out <= -1.0):
            raise DataError(f"column {column!r}: log needs values > -1 (after clipping)")
        out = np.log1p(out)
    return out


def _train_rows(table: ExtractedTable) -> Array:
    return ~np.asarray(table.is_test, dtype=bool)


def summarise(table: ExtractedTable, request: SummaryRequest, *, min_cell: int) -> SiteSummary:
    """A site's answer to ``request``: sufficient statistics of ``table``'s TRAIN rows.

    Parameters
    ----------
    table:
        The site's extracted study table.
    request:
        What the coordinator asks this pass (parsed with :meth:`SummaryRequest.from_json`).
    min_cell:
        The site's disclosure threshold (see the module's privacy notes).

    Raises
    ------
    DataError
        If the site has fewer than ``min_cell`` training records (it refuses to answer), or the
        request names a column the table lacks or has with another kind.
    """
    if isinstance(min_cell, bool) or not isinstance(min_cell, int) or min_cell < 1:
        raise ConfigurationError(f"min_cell must be an integer ≥ 1, got {min_cell!r}")
    train = _train_rows(table)
    records = int(train.sum())
    if records < min_cell:
        raise DataError(
            f"this site has fewer training records than the disclosure threshold "
            f"min_cell={min_cell}; it does not answer"
        )
    outcome: dict[str, float] = {"n": float(records)}
    if table.outcome_kind == "binary":
        cases, key = float(np.sum(table.targets["label"][train] == 1.0)), "positives"
    else:
        cases, key = float(np.sum(table.targets["event"][train] == 1.0)), "events"
        outcome["time_sum"] = float(np.sum(table.targets["time"][train]))
    if not (0 < cases < min_cell or 0 < records - cases < min_cell):
        outcome[key] = cases  # else withheld: a count of cases (or non-cases) below min_cell
    numeric: dict[str, NumericStats] = {}
    suppressed: dict[str, int] = {}
    for name, ask in request.numeric.items():
        if table.kinds.get(name) not in ("numeric", "binary"):
            raise DataError(f"the request asks for numeric column {name!r}, which this table lacks")
        x = clip_log(table.columns[name][train], ask.clip, ask.log, column=name)
        if np.isinf(x).any():
            raise DataError(f"column {name!r} has infinite values; fix them at the source")
        stats = NumericStats.of(x, ask.edges)
        if 0 < stats.n < min_cell:
            counts = None if ask.edges is None else (0,) * (len(ask.edges) + 1)
            stats = NumericStats(n=0, missing=0, mean=0.0, m2=0.0, edges=ask.edges, counts=counts)
            suppressed[name] = 1
        numeric[name] = stats
    categorical: dict[str, dict[str, int]] = {}
    for name in request.categorical:
        if table.kinds.get(name) != "categorical":
            raise DataError(f"the request asks for categorical column {name!r}, which this lacks")
        tally = Counter(category_of(v) for v in table.columns[name][train])
        kept, merged = _suppress(dict(tally), min_cell)
        if len(kept) > MAX_CATEGORIES:
            raise DataError(f"column {name!r} has more than {MAX_CATEGORIES} categories")
        categorical[name] = kept
        if merged:
            suppressed[name] = merged
    return SiteSummary(
        records=records,
        outcome=outcome,
        numeric=numeric,
        categorical=categorical,
        suppressed=suppressed,
    )


def _suppress(counts: dict[str, int], min_cell: int) -> tuple[dict[str, int], int]:
    """Merge categories below ``min_cell`` into ``other``; returns kept counts and how many."""
    small = sorted((n, c) for c, n in counts.items() if c != OTHER)
    kept = dict(counts)
    merged = 0
    other = kept.pop(OTHER, 0)
    for n, c in small:
        # primary: below the threshold; secondary: "other" itself still below it
        if n < min_cell or 0 < other < min_cell:
            other += kept.pop(c)
            merged += 1
    if other:
        kept[OTHER] = other
    return dict(sorted(kept.items())), merged


@dataclass(frozen=True, slots=True, kw_only=True)
class FittedColumn:
    """One covariate's fitted transform.

    Numeric and binary columns: ``clip`` → ``log1p`` → fill missing with ``fill`` (and add a
    0/1 ``<name>__missing`` column if ``indicator``) → ``(x − center) / scale``. Categorical
    columns: one-hot on ``vocabulary`` (the last entry is ``"other"``, which also takes
    categories unseen in training).
    """

    name: str
    kind: str
    clip: tuple[float, float] | None = None
    log: bool = False
    fill: float | None = None
    indicator: bool = False
    center: float = 0.0
    scale: float = 1.0
    vocabulary: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _column(self.name, "preprocessing")
        if self.kind not in ("numeric", "binary", "categorical"):
            raise DataError(f"preprocessing: column {self.name!r} has unknown kind {self.kind!r}")
        where = f"preprocessing: column {self.name!r}"
        if self.kind == "categorical":
            if not self.vocabulary or self.vocabulary[-1] != OTHER:
                raise DataError(f"{where}: the vocabulary must end with {OTHER!r}")
            if len(set(self.vocabulary)) != len(self.vocabulary):
                raise DataError(f"{where}: the vocabulary repeats a category")
            if not all(isinstance(v, str) and len(v) <= 256 for v in self.vocabulary):
                raise DataError(f"{where}: categories must be strings")
            return
        if self.clip is not None:
            lo, hi = (_finite(v, f"{where}: clip") for v in self.clip)
            if lo > hi:
                raise DataError(f"{where}: clip lower bound exceeds upper bound")
            object.__setattr__(self, "clip", (lo, hi))
        if not isinstance(self.log, bool) or not isinstance(self.indicator, bool):
            raise DataError(f"{where}: log and indicator must be true or false")
        if self.fill is not None:
            object.__setattr__(self, "fill", _finite(self.fill, f"{where}: fill"))
        if self.indicator and self.fill is None:
            raise DataError(f"{where}: a missing indicator needs a fill value")
        object.__setattr__(self, "center", _finite(self.center, f"{where}: center"))
        scale = _finite(self.scale, f"{where}: scale")
        if scale <= 0:
            raise DataError(f"{where}: scale must be > 0, got {scale}")
        object.__setattr__(self, "scale", scale)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The columns this covariate becomes."""
        if self.kind == "categorical":
            return tuple(f"{self.name}={v}" for v in self.vocabulary)
        return (self.name, f"{self.name}{MISSING_SUFFIX}") if self.indicator else (self.name,)

    def apply(self, values: Array) -> list[Array]:
        """This covariate's feature columns for ``values``."""
        if self.kind == "categorical":
            index = {v: i for i, v in enumerate(self.vocabulary)}
            last = len(self.vocabulary) - 1
            codes = np.fromiter(
                (index.get(category_of(v), last) for v in values), dtype=np.int64, count=len(values)
            )
            onehot = np.zeros((len(codes), len(self.vocabulary)))
            onehot[np.arange(len(codes)), codes] = 1.0
            return list(onehot.T)
        x = clip_log(values, self.clip, self.log, column=self.name)
        missing = np.isnan(x)
        if missing.any():
            if self.fill is None:
                raise DataError(
                    f"column {self.name!r} has missing values and its transform does not impute"
                )
            x = np.where(missing, self.fill, x)
        out = [(x - self.center) / self.scale]
        if self.indicator:
            out.append(missing.astype(np.float64))
        return out

    def to_mapping(self) -> dict[str, Any]:
        """A JSON-ready mapping."""
        if self.kind == "categorical":
            return {"kind": self.kind, "name": self.name, "vocabulary": list(self.vocabulary)}
        return {
            "center": self.center,
            "clip": None if self.clip is None else list(self.clip),
            "fill": self.fill,
            "indicator": self.indicator,
            "kind": self.kind,
            "log": self.log,
            "name": self.name,
            "scale": self.scale,
        }

    @staticmethod
    def from_mapping(data: object) -> FittedColumn:
        """Parse one column of :meth:`Preprocessing.from_json` (hostile input)."""
        if not isinstance(data, dict):
            raise DataError("preprocessing: each column must be an object")
        kind = data.get("kind")
        allowed = (
            {"kind", "name", "vocabulary"}
            if kind == "categorical"
            else {"center", "clip", "fill", "indicator", "kind", "log", "name", "scale"}
        )
        if set(data) != allowed:
            raise DataError(
                f"preprocessing: column {str(data.get('name'))[:40]!r} must have exactly the "
                f"fields {sorted(allowed)}"
            )
        if kind == "categorical":
            vocab = data["vocabulary"]
            if not isinstance(vocab, list) or len(vocab) > MAX_CATEGORIES * 100:
                raise DataError("preprocessing: vocabulary must be a list")
            return FittedColumn(name=data["name"], kind=kind, vocabulary=tuple(vocab))
        clip = data["clip"]
        if clip is not None and (not isinstance(clip, list) or len(clip) != 2):
            raise DataError("preprocessing: clip must be [lo, hi] or null")
        return FittedColumn(
            name=data["name"],
            kind=str(kind),
            clip=None if clip is None else (clip[0], clip[1]),
            log=data["log"],
            fill=data["fill"],
            indicator=data["indicator"],
            center=data["center"],
            scale=data["scale"],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Preprocessing:
    """The fitted preprocessing of a study: stored with the model, applied the same everywhere.

    Build one with :meth:`PreprocessingFit.result` (or :meth:`from_json`). Covariates become
    features in the spec's order: numeric/binary → the value (and ``<name>__missing``),
    categorical → ``<name>=<category>`` for each vocabulary entry.
    """

    outcome_kind: str
    columns: tuple[FittedColumn, ...]

    def __post_init__(self) -> None:
        if self.outcome_kind not in ("binary", "time_to_event"):
            raise DataError(f"preprocessing: unknown outcome kind {self.outcome_kind!r}")
        columns = tuple(self.columns)
        if not columns or len(columns) > MAX_COLUMNS:
            raise DataError(f"preprocessing: needs 1 to {MAX_COLUMNS} columns")
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise DataError("preprocessing: a column is named twice")
        object.__setattr__(self, "columns", columns)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The model's input columns, in :meth:`apply`'s order."""
        return tuple(n for c in self.columns for n in c.feature_names)

    def apply(self, table: ExtractedTable) -> Array:
        """``(n, p)`` float64 feature matrix of every row of ``table``."""
        blocks: list[Array] = []
        for col in self.columns:
            kind = table.kinds.get(col.name)
            if kind is None:
                raise DataError(f"table {table.name!r} lacks covariate {col.name!r}")
            if (kind == "categorical") != (col.kind == "categorical"):
                raise DataError(
                    f"table {table.name!r}: covariate {col.name!r} is {kind}, the preprocessing "
                    f"was fitted on {col.kind}"
                )
            blocks += col.apply(table.columns[col.name])
        return np.column_stack(blocks) if blocks else np.zeros((len(table), 0))

    def site_data(self, table: ExtractedTable) -> SiteData:
        """The site's train and test :class:`Dataset` (targets ``label`` or ``time``/``event``).

        ``test`` is ``None`` when the table has no test rows.
        """
        if table.outcome_kind != self.outcome_kind:
            raise DataError(
                f"table {table.name!r} has a {table.outcome_kind} outcome, the preprocessing "
                f"was fitted for {self.outcome_kind}"
            )
        # A preprocessing that travels in a job is the coordinator's word: it must be one
        # fitted for this study table (every covariate, each of its kind), not one that drops
        # covariates or reads a 0/1 indicator as a measurement.
        fitted = {c.name: c.kind for c in self.columns}
        if fitted != dict(table.kinds):
            other = sorted(set(fitted).symmetric_difference(table.kinds)) or sorted(
                n for n in fitted if fitted[n] != table.kinds[n]
            )
            raise DataError(
                f"table {table.name!r}: the preprocessing was not fitted for this study's "
                f"covariates (it differs on {', '.join(other[:5])})"
            )
        x = self.apply(table)
        is_test = np.asarray(table.is_test, dtype=bool)

        def part(rows: Array, suffix: str) -> Dataset:
            return Dataset(
                name=f"{table.name}-{suffix}",
                features=x[rows],
                feature_names=self.feature_names,
                targets={k: np.asarray(v)[rows] for k, v in table.targets.items()},
            )

        return SiteData(
            train=part(~is_test, "train"),
            test=part(is_test, "test") if is_test.any() else None,
        )

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace; floats round-trip exactly)."""
        body = {
            "columns": [c.to_mapping() for c in self.columns],
            "format": _FORMAT,
            "outcome_kind": self.outcome_kind,
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """Parse :meth:`to_json`'s output (hostile input: one-line :class:`DataError`)."""
        if not isinstance(text, str) or len(text) > _MAX_JSON_CHARS:
            raise DataError("preprocessing: must be JSON text of a sane size")
        try:
            body = json.loads(text, parse_constant=_reject_constant)
        except DataError:
            raise
        except (ValueError, RecursionError) as exc:
            raise DataError(f"preprocessing: not valid JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(body, dict) or set(body) != {"columns", "format", "outcome_kind"}:
            raise DataError("preprocessing: must be an object with columns, format, outcome_kind")
        if body["format"] != _FORMAT:
            raise DataError(f"preprocessing: unknown format {body['format']!r}")
        if not isinstance(body["columns"], list):
            raise DataError("preprocessing: columns must be a list")
        return cls(
            outcome_kind=body["outcome_kind"],
            columns=tuple(FittedColumn.from_mapping(c) for c in body["columns"]),
        )

    @property
    def digest(self) -> str:
        """SHA-256 hex of :meth:`to_json`."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()


def _reject_constant(name: str) -> float:
    raise DataError(f"preprocessing: {name} is not a number biofed accepts")


def fitted_scale(std: float, mean: float) -> float:
    """The divisor for a pooled standard deviation: a constant column is only centred.

    A spread below rounding noise (``1e-12`` relative to the mean) counts as constant.
    """
    if not math.isfinite(std) or std <= 1e-12 * max(1.0, abs(mean)):
        return 1.0
    return std


def check_names(names: Sequence[str]) -> None:
    """Refuse a covariate name that is not a biofed identifier."""
    for name in names:
        check_id(name, what="covariate name")
