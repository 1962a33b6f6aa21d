"""One file per site: write a simulated federation out, and read one site's file back.

A demo or an integration test gives each node process only its own file, as in a real
deployment where a site never sees another site's records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from biofed.core import Array, ConfigurationError, DataError
from biofed.data._dataset import Dataset, FederatedDataset, SiteData
from biofed.data._loaders import TableFormat, _group_rows, _load, _load_table

_SPLITS = ("train", "test")


def write_site_files(
    fed: FederatedDataset, out_dir: str | PathLike[str], *, format: TableFormat = "csv"
) -> dict[str, Path]:
    """Write each site's train and test examples to its own file ``out_dir/<site>.<format>``.

    Each file holds the feature columns, one column per target (named by its key) and a
    ``split`` column (``"train"`` / ``"test"``). Read one back with :func:`load_site_file`.
    Existing files are overwritten; ``out_dir`` is created if needed.

    Returns
    -------
    dict[str, Path]
        Site name → file written.
    """
    if format not in ("csv", "parquet"):
        raise ConfigurationError(f"format must be 'csv' or 'parquet', got {format!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for site, data in fed.sites.items():
        parts = [data.train] if data.test is None else [data.train, data.test]
        pooled = Dataset.concat(parts, name=data.train.name)
        columns = [*pooled.feature_names, *pooled.targets, "split"]
        if len(set(columns)) != len(columns):
            raise DataError(
                f"site {site!r}: feature names, target keys and 'split' must all differ to be "
                "written as columns; rename the clashing feature"
            )
        arrays: dict[str, Array] = {
            n: np.ascontiguousarray(pooled.features[:, j])
            for j, n in enumerate(pooled.feature_names)
        }
        arrays.update(pooled.targets)
        split = np.repeat(np.array(_SPLITS[: len(parts)]), [len(d) for d in parts])
        table = pa.table({**{k: pa.array(v) for k, v in arrays.items()}, "split": pa.array(split)})
        path = out / f"{site}.{format}"
        if format == "csv":
            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        paths[site] = path
    return paths


def load_site_file(
    path: str | PathLike[str],
    *,
    target_columns: Mapping[str, str] | None = None,
    feature_columns: Sequence[str] | None = None,
    split_column: str = "split",
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    format: TableFormat | None = None,
    name: str | None = None,
) -> SiteData:
    """Read one site's file (as written by :func:`write_site_files`) back as :class:`SiteData`.

    Rows whose ``split_column`` is ``"train"`` form the training set and ``"test"`` the test
    set (``None`` if there are none), in file order. The other parameters are those of
    :func:`load_table`; for a file written by :func:`write_site_files`, targets are stored
    under their keys, e.g. ``target_columns={"event": "event", "time": "time"}``.

    Raises
    ------
    DataError
        As :func:`load_table`; also if the split column holds anything but ``train`` and
        ``test``, or there are no training rows.
    """
    dataset, groups = _load(
        path,
        format=format,
        feature_columns=feature_columns,
        target_columns=target_columns or {},
        group_column=split_column,
        id_column=id_column,
        exclude=exclude,
        name=name,
    )
    return _split(dataset, groups, split_column)


def _check_split_values(groups: Mapping[str, Array], split_column: str) -> None:
    other = sorted(set(groups) - set(_SPLITS))
    if other:
        shown = ", ".join(repr(v) for v in other[:5]) + (", …" if len(other) > 5 else "")
        raise DataError(
            f"split column {split_column!r} must hold 'train' (and optionally 'test') only; "
            f"found {shown}"
        )


def _split(dataset: Dataset, groups: Mapping[str, Array], split_column: str) -> SiteData:
    """``dataset``'s rows divided into train and test by the split column's row groups."""
    _check_split_values(groups, split_column)
    if "train" not in groups:
        raise DataError(
            f"split column {split_column!r} must hold 'train' rows; found {sorted(groups)}"
        )
    train = dataset.subset(groups["train"], name=f"{dataset.name}-train")
    test = dataset.subset(groups["test"], name=f"{dataset.name}-test") if "test" in groups else None
    return SiteData(train=train, test=test)


def load_split_table(
    path: str | PathLike[str],
    *,
    site_column: str,
    split_column: str,
    target_columns: Mapping[str, str] | None = None,
    feature_columns: Sequence[str] | None = None,
    id_column: str | None = None,
    exclude: Sequence[str] = (),
    format: TableFormat | None = None,
    name: str | None = None,
) -> dict[str, SiteData]:
    """Read a table holding every site's rows, with their train/test split, as site → SiteData.

    Rows are grouped by ``site_column`` (as :func:`load_table` does) and, within each site,
    into train and test by ``split_column`` (as :func:`load_site_file` does). Neither column is
    ever a feature. The other parameters are those of :func:`load_table`.

    Raises
    ------
    DataError
        As :func:`load_table`; also if the split column holds anything but ``train`` and
        ``test``, or a site has no training rows.
    """
    dataset, table = _load_table(
        path,
        format=format,
        feature_columns=feature_columns,
        target_columns=target_columns or {},
        group_columns=[site_column, split_column],
        id_column=id_column,
        exclude=exclude,
        name=name,
    )
    split_rows = _group_rows(table, split_column)
    _check_split_values(split_rows, split_column)
    which = np.empty(len(dataset), dtype=object)
    for value, rows in split_rows.items():
        which[rows] = value
    sites: dict[str, SiteData] = {}
    for site, rows in _group_rows(table, site_column).items():
        part = dataset.subset(rows, name=f"{dataset.name}-{site}")
        groups = {
            value: np.flatnonzero(which[rows] == value) for value in dict.fromkeys(which[rows])
        }
        try:
            sites[site] = _split(part, groups, split_column)
        except DataError as exc:
            raise DataError(f"site {site!r}: {exc}") from None
    return sites
