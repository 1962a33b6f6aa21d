"""Load a site's tabular data (CSV, Parquet) into :class:`Dataset`.

Security notes: dataset files cross a trust boundary. They are parsed by pyarrow's CSV and
Parquet readers only; nothing is unpickled or evaluated, and pandas metadata is ignored.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from biofed.core import Array, ConfigurationError, DataError
from biofed.data._dataset import Dataset

TableFormat = Literal["csv", "parquet"]
_SUFFIXES: dict[str, TableFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_PANDAS_INDEX = re.compile(r"^__index_level_\d+__$")
_CSV_OPTIONS = pacsv.ConvertOptions(strings_can_be_null=True)


def _sanitize_id(raw: str, *, what: str = "site name") -> str:
    """Turn ``raw`` into a biofed identifier (letters, digits, ``.``, ``_``, ``-``).

    Accents are stripped (``"Hôpital Nord"`` → ``"Hopital-Nord"``), runs of other characters
    become ``-``, and leading/trailing separators are dropped.

    Raises
    ------
    DataError
        If nothing usable is left, or the result is longer than 128 characters.
    """
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text).strip("-._")
    if not cleaned or len(cleaned) > 128:
        raise DataError(
            f"cannot turn {raw!r} into a {what} (1-128 letters, digits, '.', '_' or '-'); "
            "rename it in the file"
        )
    return cleaned


def _read(path: str | PathLike[str], format: TableFormat | None) -> tuple[Path, pa.Table]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"no such file: {str(p)!r}")
    if not p.is_file():
        raise DataError(f"{str(p)!r} is not a file")
    if format is None:
        suffixes = [s.lower() for s in p.suffixes]
        if suffixes and suffixes[-1] in _COMPRESSED:
            suffixes.pop()
        fmt = _SUFFIXES.get(suffixes[-1]) if suffixes else None
        if fmt is None:
            raise DataError(
                f"cannot tell the format of {p.name!r} from its suffix; pass format='csv' or "
                "format='parquet' (supported suffixes: .csv, .parquet, .pq)"
            )
    elif format in ("csv", "parquet"):
        fmt = format
    else:
        raise DataError(f"unsupported format {format!r}; use 'csv' or 'parquet'")
    try:
        if fmt == "csv":
            table = pacsv.read_csv(p, convert_options=_CSV_OPTIONS)
        else:
            table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {str(p)!r} as {fmt}: {exc}") from exc
    names = table.column_names
    if len(set(names)) != len(names):
        dupes = sorted({c for c in names if names.count(c) > 1})
        raise DataError(f"{str(p)!r} has duplicate column names {dupes}; rename them")
    if table.num_rows == 0:
        raise DataError(f"{str(p)!r} has no rows")
    return p, table


def _to_numpy(values: pa.Array | pa.ChunkedArray) -> Array:
    """A null-free numeric or bool arrow array as numpy (bool as 0/1 int64).

    Reads the data buffer directly: pyarrow's own ``to_numpy`` imports pandas when it is
    installed, which costs half a second on first use.
    """
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(arr) == 0:
        return np.empty(0, dtype=np.int64 if pa.types.is_boolean(arr.type) else np.float64)
    if pa.types.is_boolean(arr.type):
        bits = np.unpackbits(np.frombuffer(arr.buffers()[1], dtype=np.uint8), bitorder="little")
        return bits[arr.offset : arr.offset + len(arr)].astype(np.int64)
    dtype = np.dtype(arr.type.to_pandas_dtype())
    return np.frombuffer(
        arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TableSchema:
    """What a table file holds: its columns (name, Arrow type) and row count."""

    columns: tuple[tuple[str, str], ...]
    num_rows: int
    format: str


def describe_table(path: str | PathLike[str], *, format: TableFormat | None = None) -> TableSchema:
    """Read a CSV or Parquet file once and describe it (no data is kept).

    Raises
    ------
    DataError
        The file is missing, unreadable, empty or has duplicate column names.
    """
    p, table = _read(path, format)
    fmt = format or ("parquet" if p.suffix.lower() in (".parquet", ".pq") else "csv")
    return TableSchema(
        columns=tuple((f.name, str(f.type)) for f in table.schema),
        num_rows=int(table.num_rows),
        format=fmt,
    )


def _column(table: pa.Table, name: str, *, role: str, numeric_hint: str) -> Array:
    """One column as numpy, numeric (bool → 0/1), with no missing values."""
    col = table.column(name)
    kind = col.type
    if col.null_count:
        raise DataError(
            f"{role} column {name!r} has {col.null_count} missing values; impute them or drop "
            "those rows before loading"
        )
    if pa.types.is_boolean(kind):
        return _to_numpy(col)
    if pa.types.is_decimal(kind):
        col = col.cast(pa.float64())
    elif not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataError(f"{role} column {name!r} has type {kind}, not numeric; {numeric_hint}")
    values = _to_numpy(col)
    if values.dtype.kind == "f":
        nan = int(np.isnan(values).sum())
        if nan:
            raise DataError(
                f"{role} column {name!r} has {nan} missing (NaN) values; impute them or drop "
                "those rows before loading"
            )
        inf = int(np.isinf(values).sum())
        if inf:
            raise DataError(f"{role} column {name!r} has {inf} infinite values; fix the file")
    return values


def _check_known(names: Sequence[str], available: Sequence[str], *, what: str) -> None:
    unknown = [c for c in names if c not in available]
    if unknown:
        raise DataError(f"unknown {what} {unknown}; the file has columns {list(available)}")


def _group_rows(table: pa.Table, column: str) -> dict[str, Array]:
    """Site name → row indices, sites in order of first appearance."""
    col = table.column(column)
    if col.null_count:
        raise DataError(f"site column {column!r} has {col.null_count} missing values")
    try:
        encoded = col.cast(pa.string()).combine_chunks().dictionary_encode()
    except pa.ArrowException as exc:
        raise DataError(f"site column {column!r} cannot be read as text: {exc}") from exc
    codes = _to_numpy(encoded.indices).astype(np.int64)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(encoded.dictionary)))[:-1]
    groups: dict[str, Array] = {}
    for raw, rows in zip(encoded.dictionary.to_pylist(), np.split(order, bounds), strict=True):
        site = _sanitize_id(str(raw))
        if site in groups:
            raise DataError(
                f"two values of site column {column!r} both become site {site!r}; rename one"
            )
        groups[site] = rows
    return groups


def _load(
    path: str | PathLike[str],
    *,
    format: TableFormat | None,
    feature_columns: Sequence[str] | None,
    target_columns: Mapping[str, str],
    group_column: str | None,
    id_column: str | None,
    exclude: Sequence[str],
    name: str | None,
) -> tuple[Dataset, dict[str, Array]]:
    """The whole table as one Dataset, and group value → row indices (first-seen order)."""
    dataset, table = _load_table(
        path,
        format=format,
        feature_columns=feature_columns,
        target_columns=target_columns,
        group_columns=[group_column] if group_column else [],
        id_column=id_column,
        exclude=exclude,
        name=name,
    )
    groups = {} if group_column is None else _group_rows(table, group_column)
    return dataset, groups


def _load_table(
    path: str | PathLike[str],
    *,
    format: TableFormat | None,
    feature_columns: Sequence[str] | None,
    target_columns: Mapping[str, str],
    group_columns: Sequence[str],
    id_column: str | None,
    exclude: Sequence[str],
    name: str | None,
) -> tuple[Dataset, pa.Table]:
    """The whole table as one Dataset, and the Arrow table it came from (for grouping)."""
    path, table = _read(path, format)
    available = table.column_names
    for key in target_columns:
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"target keys must be non-empty strings, got {key!r}")
    reserved = [*target_columns.values(), *group_columns]
    reserved += [id_column] if id_column else []
    _check_known(reserved, available, what="columns")
    _check_known(list(exclude), available, what="excluded columns")
    if feature_columns is None:
        skip = {*reserved, *exclude}
        features = [c for c in available if c not in skip and not _PANDAS_INDEX.match(c)]
    else:
        features = list(feature_columns)
        _check_known(features, available, what="feature columns")
        clash = sorted(set(features) & {*reserved, *exclude})
        if clash or len(set(features)) != len(features):
            raise ConfigurationError(
                f"feature_columns must be distinct and must not name a target, site, id or "
                f"excluded column; got {features} (overlap: {clash})"
            )
    if not features and feature_columns is None:  # an explicit [] asks for targets only
        raise DataError(f"{str(path)!r}: no feature columns left; pass feature_columns")
    hint = "one-hot encode it before loading, or pass it in exclude=(...)"
    matrix = np.empty((table.num_rows, len(features)), dtype=np.float32)
    for j, column in enumerate(features):
        matrix[:, j] = _column(table, column, role="feature", numeric_hint=hint)
    targets = {
        key: _column(table, column, role="target", numeric_hint="encode it as numbers first")
        for key, column in target_columns.items()
    }
    ds_name = name if name is not None else _sanitize_id(path.name.split(".")[0], what="name")
    dataset = Dataset(name=ds_name, features=matrix, feature_names=tuple(features), targets=targets)
    return dataset, table


@overload
def load_table(
    path: str | PathLike[str],
    *,
    format: TableFormat | None = None,
    feature_columns: Sequence[str] | None = None,
    target_columns: Mapping[str, str] | None = None,
    site_column: None = None,
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    name: str | None = None,
) -> Dataset: ...


@overload
def load_table(
    path: str | PathLike[str],
    *,
    format: TableFormat | None = None,
    feature_columns: Sequence[str] | None = None,
    target_columns: Mapping[str, str] | None = None,
    site_column: str,
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    name: str | None = None,
) -> dict[str, Dataset]: ...


def load_table(
    path: str | PathLike[str],
    *,
    format: TableFormat | None = None,
    feature_columns: Sequence[str] | None = None,
    target_columns: Mapping[str, str] | None = None,
    site_column: str | None = None,
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    name: str | None = None,
) -> Dataset | dict[str, Dataset]:
    """Load a CSV or Parquet table as a :class:`Dataset` (or one per site).

    Parameters
    ----------
    path:
        The file to read.
    format:
        ``"csv"`` or ``"parquet"``; inferred from the suffix (``.csv``, ``.csv.gz``,
        ``.parquet``, ``.pq``) when omitted.
    feature_columns:
        Feature columns, in the order wanted. Default: every column, in file order, that is
        not a target, site, id or excluded column. An empty sequence loads no features (for a
        caller that adds encoded ones, as ``biofed simulate --one-hot`` does).
    target_columns:
        Target key → column name, e.g. ``{"event": "E", "time": "T"}`` or ``{"label": "y"}``.
    site_column:
        If given, rows are grouped by this column (the "natural" split) and a mapping
        site name → Dataset is returned, in order of first appearance. Site names are
        the column's values made into biofed identifiers (accents stripped, other characters
        replaced by ``-``).
    id_column:
        A record-id column; never used as a feature.
    exclude:
        Other columns to leave out of the default feature set.
    name:
        Dataset name; default: the file name without its suffixes. Per-site datasets are
        named ``f"{name}-{site}"``.

    Returns
    -------
    Dataset or dict[str, Dataset]
        Features as float32 (bool columns as 0/1); targets as int64 or float64.

    Raises
    ------
    DataError
        The file is missing, unreadable or of an unsupported format; a column is unknown,
        non-numeric or has missing values; a site value cannot be made into a site name.
    ConfigurationError
        ``feature_columns`` overlaps targets, the site, id or excluded columns.
    """
    dataset, groups = _load(
        path,
        format=format,
        feature_columns=feature_columns,
        target_columns=target_columns or {},
        group_column=site_column,
        id_column=id_column,
        exclude=exclude,
        name=name,
    )
    if site_column is None:
        return dataset
    return {
        site: dataset.subset(rows, name=f"{dataset.name}-{site}") for site, rows in groups.items()
    }
