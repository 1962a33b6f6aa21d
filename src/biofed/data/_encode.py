"""Impute missing numbers and one-hot encode text columns with statistics pooled federatedly.

Each step is a per-site summary (sufficient statistics of that site's *training* rows) and a
combine step that adds the summaries up; the fitted :class:`ColumnEncoder` is then applied,
unchanged, to every site's train and test rows. No row leaves a site: only counts, sums,
minima/maxima, histogram counts and category counts do.

Median imputation is approximate: the pooled minimum and maximum give common bin edges
(:data:`MEDIAN_BINS` equal bins), each site sends its histogram on those edges, and the median
is interpolated linearly inside the pooled histogram's median bin (when the two middle values
fall in different bins, the midpoint of the gap between those bins is taken). The middle value(s)
lie in the bin(s) the estimate is read from, so it is off by at most one bin width,
``(max − min) / MEDIAN_BINS``, of the exact pooled median.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Literal

import numpy as np
import pyarrow as pa

from biofed.core import Array, ConfigurationError, DataError

Impute = Literal["mean", "median", "zero"]
IMPUTE_METHODS: tuple[str, ...] = ("mean", "median", "zero")
# Categories whose pooled training count is below this are merged into OTHER.
DEFAULT_MIN_CATEGORY_COUNT = 10
MEDIAN_BINS = 1024
OTHER = "other"
MISSING_SUFFIX = "__missing"


@dataclass(frozen=True, slots=True, kw_only=True)
class NumericSummary:
    """One site's (or a sum of sites') statistics of one numeric column with missing values.

    ``count`` and ``total`` are over the present values; ``lo``/``hi`` are their extremes
    (``inf``/``-inf`` when there are none); ``histogram`` is filled in the median's second pass.
    """

    count: int
    missing: int
    total: float
    lo: float
    hi: float
    histogram: tuple[int, ...] = ()

    @staticmethod
    def of(values: Array, edges: Array | None = None) -> NumericSummary:
        """The summary of one site's values (NaN = missing); with ``edges``, its histogram."""
        x = np.asarray(values, dtype=np.float64)
        present = x[~np.isnan(x)]
        hist: tuple[int, ...] = ()
        if edges is not None:
            hist = tuple(int(c) for c in np.histogram(present, bins=edges)[0])
        return NumericSummary(
            count=int(present.size),
            missing=int(x.size - present.size),
            total=float(present.sum()),
            lo=float(present.min()) if present.size else float("inf"),
            hi=float(present.max()) if present.size else float("-inf"),
            histogram=hist,
        )

    @staticmethod
    def combine(parts: Iterable[NumericSummary]) -> NumericSummary:
        """The sum of several sites' summaries (the federated step)."""
        items = list(parts)
        if not items:
            raise DataError("cannot combine the statistics of zero sites")
        hists = [p.histogram for p in items]
        if len({len(h) for h in hists}) != 1:
            raise DataError("cannot combine histograms on different bin edges")
        return NumericSummary(
            count=sum(p.count for p in items),
            missing=sum(p.missing for p in items),
            total=float(np.sum([p.total for p in items])),
            lo=min(p.lo for p in items),
            hi=max(p.hi for p in items),
            histogram=tuple(int(c) for c in np.sum(hists, axis=0)) if hists[0] else (),
        )

    @property
    def mean(self) -> float:
        """The pooled mean of the present values."""
        if self.count == 0:
            raise DataError("no present values: the mean is undefined")
        return self.total / self.count

    def edges(self, bins: int = MEDIAN_BINS) -> Array:
        """``bins`` equal bins over ``[lo, hi]``: the edges every site uses."""
        if self.count == 0:
            raise DataError("no present values: the median is undefined")
        hi = self.hi if self.hi > self.lo else self.lo + 1.0
        return np.linspace(self.lo, hi, bins + 1)

    def median(self, edges: Array) -> float:
        """The median read off the pooled histogram (within one bin width of the exact one)."""
        counts = np.asarray(self.histogram, dtype=np.float64)
        if counts.sum() == 0:
            raise DataError("no present values: the median is undefined")
        half = counts.sum() / 2.0
        cum = np.cumsum(counts)
        k = int(np.searchsorted(cum, half))
        if cum[k] == half:  # even count, the two middle values in bin k and the next filled one
            after = k + 1 + int(np.flatnonzero(counts[k + 1 :])[0])
            return float((edges[k + 1] + edges[after]) / 2.0)
        before = cum[k - 1] if k else 0.0
        share = (half - before) / counts[k]
        return float(edges[k] + share * (edges[k + 1] - edges[k]))


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryCounts:
    """One site's (or a sum of sites') count of each category of one text column."""

    counts: Mapping[str, int] = field(default_factory=dict)

    @staticmethod
    def of(values: Sequence[object]) -> CategoryCounts:
        """The counts at one site; a missing value (None) counts as the category ``missing``."""
        return CategoryCounts(counts=dict(Counter(_category(v) for v in values)))

    @staticmethod
    def combine(parts: Iterable[CategoryCounts]) -> CategoryCounts:
        """The pooled counts: the sites' counts added (the federated step)."""
        total: Counter[str] = Counter()
        for part in parts:
            total.update(part.counts)
        return CategoryCounts(counts=dict(total))

    def vocabulary(self, min_count: int) -> tuple[str, ...]:
        """Categories with a pooled count of at least ``min_count``, sorted, then ``other``."""
        kept = sorted(c for c, n in self.counts.items() if n >= min_count and c != OTHER)
        return (*kept, OTHER)


def _category(value: object) -> str:
    return "missing" if value is None else str(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnEncoder:
    """The fitted transform: fill values and indicators for numbers, vocabularies for text.

    ``fill`` maps each numeric column that had missing values at some site to its pooled fill
    value (it gets a 0/1 ``<col>__missing`` indicator); ``vocabularies`` maps each text column
    to its categories (the last is ``other``, which also takes categories unseen in training).
    """

    fill: Mapping[str, float] = field(default_factory=dict)
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The encoded columns, in :meth:`apply`'s order."""
        names: list[str] = []
        for col in self.fill:
            names += [col, f"{col}{MISSING_SUFFIX}"]
        for col, vocab in self.vocabularies.items():
            names += [f"{col}={v}" for v in vocab]
        return tuple(names)

    def apply(self, columns: Mapping[str, Sequence[object] | Array]) -> Array:
        """``(n, k)`` float32 matrix of :attr:`feature_names` for rows given as raw columns."""
        blocks: list[Array] = []
        for col, value in self.fill.items():
            x = np.asarray(columns[col], dtype=np.float64)
            missing = np.isnan(x)
            blocks += [np.where(missing, value, x), missing.astype(np.float64)]
        for col, vocab in self.vocabularies.items():
            index = {v: i for i, v in enumerate(vocab)}
            codes = np.array([index.get(_category(v), len(vocab) - 1) for v in columns[col]])
            onehot = np.zeros((len(codes), len(vocab)))
            onehot[np.arange(len(codes)), codes] = 1.0
            blocks += list(onehot.T)
        if not blocks:
            raise DataError("the encoder has no columns")
        return np.column_stack(blocks).astype(np.float32)


def fit_encoder(
    train_sites: Sequence[Mapping[str, Sequence[object] | Array]],
    *,
    numeric: Sequence[str] = (),
    text: Sequence[str] = (),
    impute: Impute = "mean",
    min_category_count: int = DEFAULT_MIN_CATEGORY_COUNT,
) -> ColumnEncoder:
    """Fit the encoder from each site's training columns, using per-site summaries only.

    Parameters
    ----------
    train_sites:
        One mapping per site: column name → that site's training values (numbers with NaN
        for missing, or text with None for missing).
    numeric, text:
        The numeric columns to impute and the text columns to one-hot encode.
    impute:
        ``mean`` (pooled sums and counts), ``median`` (pooled histogram on common edges from
        the pooled min/max; within ``(max − min) / MEDIAN_BINS``) or ``zero``.
    min_category_count:
        Categories with a smaller pooled count are merged into ``other``.

    Privacy notes
    -------------
    Sites send counts, sums, extremes and histograms of their training rows, and category
    counts. Pooled category counts below ``min_category_count`` are not disclosed as features
    (a rare category could identify a patient); a site's own counts still reach the
    aggregator, as its sums do for standardisation.
    """
    if impute not in IMPUTE_METHODS:
        raise ConfigurationError(f"impute must be one of {list(IMPUTE_METHODS)}, got {impute!r}")
    if min_category_count < 1:
        raise ConfigurationError(f"min_category_count must be ≥ 1, got {min_category_count}")
    if not train_sites:
        raise DataError("cannot fit an encoder on zero sites")
    fill: dict[str, float] = {}
    for col in numeric:
        pooled = NumericSummary.combine(NumericSummary.of(np.asarray(s[col])) for s in train_sites)
        if pooled.missing == 0:
            continue
        if impute == "zero":
            fill[col] = 0.0
        elif pooled.count == 0:
            raise DataError(f"column {col!r} has no values in any site's training rows")
        elif impute == "mean":
            fill[col] = pooled.mean
        else:
            edges = pooled.edges()
            hist = NumericSummary.combine(
                NumericSummary.of(np.asarray(s[col]), edges) for s in train_sites
            )
            fill[col] = hist.median(edges)
    vocabularies = {
        col: CategoryCounts.combine(
            CategoryCounts.of(list(s[col])) for s in train_sites
        ).vocabulary(min_category_count)
        for col in text
    }
    return ColumnEncoder(fill=fill, vocabularies=vocabularies)


@dataclass(frozen=True, slots=True, kw_only=True)
class TableScan:
    """A table's feature columns that need preparing, as raw values, and its site rows.

    ``features`` are all the candidate feature columns (table order); ``text`` are the
    non-numeric ones, ``missing`` the numeric ones with missing values;
    ``raw`` holds both (float64 with NaN, or objects with None). ``site_rows`` maps each site
    to its row indices (ascending, as the loaders group them); ``split`` is the split column's
    values as text, if one was named.
    """

    features: tuple[str, ...]
    text: tuple[str, ...]
    missing: tuple[str, ...]
    raw: Mapping[str, Array]
    site_rows: Mapping[str, Array]
    split: Array | None = None


def scan_table(
    path: str | PathLike[str],
    *,
    site_column: str,
    reserved: Sequence[str],
    feature_columns: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    split_column: str | None = None,
) -> TableScan:
    """Find every text column and every numeric column with missing values, at once.

    The candidate features are ``feature_columns``, or every column but ``reserved`` (targets,
    site, split, id), ``exclude`` and a pandas index column, as :func:`load_table` chooses.
    """
    from biofed.data._loaders import _PANDAS_INDEX, _group_rows, _read, _to_numpy

    _, table = _read(path, None)
    if feature_columns is None:
        skip = {*reserved, *exclude}
        names = [c for c in table.column_names if c not in skip and not _PANDAS_INDEX.match(c)]
    else:
        names = list(feature_columns)  # an unknown name is kept, for the loader to refuse
    raw: dict[str, Array] = {}
    text: list[str] = []
    missing: list[str] = []
    for name in names:
        if name not in table.column_names:
            continue
        col = table.column(name)
        kind = col.type
        if pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_decimal(kind):
            numeric = True
        else:
            numeric = pa.types.is_floating(kind)
        if numeric:
            values = _to_numpy(col.cast(pa.float64()).fill_null(np.nan)).astype(np.float64)
            if np.isnan(values).any():
                missing.append(name)
                raw[name] = values
        else:
            text.append(name)
            raw[name] = np.array(col.to_pylist(), dtype=object)
    split = None
    if split_column is not None and split_column in table.column_names:
        split = np.array(table.column(split_column).cast(pa.string()).to_pylist(), dtype=object)
    return TableScan(
        features=tuple(names),
        text=tuple(text),
        missing=tuple(missing),
        raw=raw,
        site_rows=_group_rows(table, site_column) if site_column in table.column_names else {},
        split=split,
    )
