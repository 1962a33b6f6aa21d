"""The table a query reads at a site: named columns, stable row ids, and the split.

A site's dataset reaches the analytics in one of three forms — a prepared
:class:`~biofed.data.SiteData` (a registered file: feature columns plus the targets
``time``/``event`` or ``label``), a study's :class:`~biofed.data.ExtractedTable` (an OMOP
CDM or a file compiled by a study spec: covariates by name, categorical ones as text), or
plain columns — and :class:`QueryTable` gives them one shape. Row ids are stable for a
dataset (a file's row numbers, a CDM's person ids), so the node's query log can compare
the cohorts of two queries record by record (the differencing rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from biofed.analytics._query import Filter, Query
from biofed.core import Array, DataError, check_id
from biofed.data import ExtractedTable, SiteData

#: Column kinds: float64 with NaN for missing, or object arrays of str with None.
COLUMN_KINDS = ("numeric", "categorical")


def _readonly(array: Array) -> Array:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryTable:
    """One site's rows as a query sees them.

    Attributes
    ----------
    name:
        The dataset's name (a biofed identifier).
    columns:
        Column name → ``(n,)`` array: float64 (NaN = missing) or object array of str
        (None = missing).
    kinds:
        Column name → ``"numeric"`` or ``"categorical"``.
    ids:
        ``(n,)`` int64 row ids, unique and stable for the dataset.
    is_test:
        ``(n,)`` bool, True for the study's test rows.
    """

    name: str
    columns: Mapping[str, Array]
    kinds: Mapping[str, str]
    ids: Array
    is_test: Array

    def __post_init__(self) -> None:
        check_id(self.name, what="table name")
        ids = np.asarray(self.ids, dtype=np.int64)
        n = ids.shape[0]
        if ids.ndim != 1 or len(np.unique(ids)) != n:
            raise DataError(f"table {self.name!r}: ids must be unique, one per row")
        if set(self.columns) != set(self.kinds):
            raise DataError(f"table {self.name!r}: columns and kinds name different columns")
        columns: dict[str, Array] = {}
        for key, col in self.columns.items():
            kind = self.kinds[key]
            if kind not in COLUMN_KINDS:
                raise DataError(f"table {self.name!r}: column {key!r} has unknown kind {kind!r}")
            arr = np.asarray(col, dtype=object if kind == "categorical" else np.float64)
            if arr.shape != (n,):
                raise DataError(f"table {self.name!r}: column {key!r} has {arr.shape} for {n} rows")
            if kind == "numeric" and np.isinf(arr).any():
                raise DataError(f"table {self.name!r}: column {key!r} holds infinite values")
            columns[key] = _readonly(arr)
        is_test = np.asarray(self.is_test, dtype=bool)
        if is_test.shape != (n,):
            raise DataError(f"table {self.name!r}: is_test must have one value per row")
        object.__setattr__(self, "ids", _readonly(ids))
        object.__setattr__(self, "columns", MappingProxyType(columns))
        object.__setattr__(self, "kinds", MappingProxyType(dict(self.kinds)))
        object.__setattr__(self, "is_test", _readonly(is_test))

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    # -- building ------------------------------------------------------------------------------
    @classmethod
    def from_site_data(cls, data: SiteData, *, name: str | None = None) -> QueryTable:
        """A prepared dataset: its features and targets as numeric columns, training rows
        first (ids 0…n_train−1), then test rows."""
        parts = [data.train] + ([data.test] if data.test is not None else [])
        columns: dict[str, Array] = {}
        for i, feature in enumerate(data.train.feature_names):
            columns[feature] = np.concatenate([p.features[:, i].astype(np.float64) for p in parts])
        for key in data.train.targets:
            if key in columns:
                raise DataError(f"target {key!r} has the name of a feature column")
            columns[key] = np.concatenate([np.asarray(p.targets[key], np.float64) for p in parts])
        n_train = len(data.train)
        n = sum(len(p) for p in parts)
        is_test = np.arange(n) >= n_train
        return cls(
            name=name or data.train.name,
            columns=columns,
            kinds=dict.fromkeys(columns, "numeric"),
            ids=np.arange(n, dtype=np.int64),
            is_test=is_test,
        )

    @classmethod
    def from_extracted(cls, table: ExtractedTable) -> QueryTable:
        """A study table: its covariates (binary as numeric 0/1) and targets, by person id."""
        columns: dict[str, Array] = {}
        kinds: dict[str, str] = {}
        for key, col in table.columns.items():
            columns[key] = col
            kinds[key] = "categorical" if table.kinds[key] == "categorical" else "numeric"
        for key, col in table.targets.items():
            if key in columns:
                raise DataError(f"target {key!r} has the name of a covariate")
            columns[key] = col
            kinds[key] = "numeric"
        return cls(
            name=table.name, columns=columns, kinds=kinds, ids=table.ids, is_test=table.is_test
        )

    # -- rows ----------------------------------------------------------------------------------
    def column(self, name: str) -> Array:
        """A column by name; a one-line error naming the table's columns otherwise."""
        try:
            return self.columns[name]
        except KeyError:
            shown = ", ".join(sorted(self.columns)[:20])
            raise DataError(
                f"dataset {self.name!r} has no column {name[:60]!r} (it has: {shown})"
            ) from None

    def missing(self, name: str) -> Array:
        """``(n,)`` bool: where ``name`` is missing."""
        col = self.column(name)
        if self.kinds[name] == "numeric":
            return np.isnan(col)
        return np.asarray([v is None for v in col], dtype=bool)

    def _filter(self, f: Filter) -> Array:
        col = self.column(f.column)
        missing = self.missing(f.column)
        if f.op == "missing":
            return missing
        if f.op == "present":
            return ~missing
        numeric = self.kinds[f.column] == "numeric"
        values = f.value if isinstance(f.value, tuple) else (f.value,)
        if numeric:
            if any(isinstance(v, str) for v in values):
                raise DataError(f"filter on numeric column {f.column!r} compares with text")
            nums = np.asarray([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
            safe = np.where(missing, 0.0, col)
            if f.op in ("in", "not_in"):
                hit = np.isin(safe, nums)
                out = hit if f.op == "in" else ~hit
            else:
                out = {
                    "==": safe == nums[0],
                    "!=": safe != nums[0],
                    "<": safe < nums[0],
                    "<=": safe <= nums[0],
                    ">": safe > nums[0],
                    ">=": safe >= nums[0],
                }[f.op]
        else:
            if f.op not in ("==", "!=", "in", "not_in"):
                raise DataError(f"filter {f.op!r} needs a numeric column; {f.column!r} is text")
            texts = {str(v) for v in values}
            hit = np.asarray([v in texts for v in col], dtype=bool)
            out = hit if f.op in ("==", "in") else ~hit
        return np.asarray(out & ~missing, dtype=bool)

    def cohort(self, query: Query) -> Array:
        """``(n,)`` bool: the rows ``query`` covers (its split and every filter).

        Raises
        ------
        DataError
            If a filter names a column the table lacks or compares text with numbers.
        """
        if query.split == "train":
            mask = ~self.is_test
        elif query.split == "test":
            mask = self.is_test.copy()
        else:
            mask = np.ones(len(self), dtype=bool)
        for f in query.where:
            mask &= self._filter(f)
        return np.asarray(mask, dtype=bool)
