"""``biofed simulate --data``: a user's table made into a federation, checked on the way.

The flags name the site, split, id, feature and target columns; the targets' coding is checked
(event and label 0/1); text columns are optionally one-hot encoded and missing numbers
imputed (``--one-hot``, ``--impute``) from per-site summaries; and features are optionally
standardised with the pooled training
mean and standard deviation, found from per-site sums.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from biofed.core import Array
    from biofed.data import FederatedDataset, SiteData, TableScan

# The SDK is imported where it is used, so that `biofed --help` stays fast.

_SURVIVAL = frozenset({"event", "time"})
_CLASSIFICATION = frozenset({"label"})
# Column names that usually mean a record id, a flag or a split, not a measurement.
_ID_LIKE = re.compile(r"(^id$|_id$|^id_|^is_|_flag$|^flag|^split$|^index$|^unnamed|^row)", re.I)
# Above this ratio of the largest to the smallest feature std, unscaled training misbehaves.
SCALE_RATIO_WARNING = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TableOptions:
    """What the ``--data`` flags say about the table."""

    path: Path
    site_column: str | None
    targets: tuple[str, ...]
    test_fraction: float
    split_column: str | None = None
    features: str | None = None
    exclude: str | None = None
    id_column: str | None = None
    impute: str | None = None
    one_hot: bool = False
    min_category_count: int = 10


def _names(value: str | None, flag: str) -> list[str] | None:
    from biofed.core import ConfigurationError

    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ConfigurationError(f"{flag} needs comma-separated column names, got {value!r}")
    return names


def parse_targets(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``KEY=COLUMN`` items as a mapping; only event/time or label are meaningful."""
    from biofed.core import ConfigurationError

    targets: dict[str, str] = {}
    for item in items:
        key, sep, column = item.partition("=")
        if not sep or not key or not column:
            raise ConfigurationError(
                "--target must look like KEY=COLUMN (e.g. event=E, time=T or label=y), "
                f"got {item!r}"
            )
        if key in targets:
            raise ConfigurationError(f"--target {key}= is given twice")
        targets[key] = column
    keys = set(targets)
    unknown = sorted(keys - _SURVIVAL - _CLASSIFICATION)
    if unknown:
        raise ConfigurationError(
            f"unknown --target key {unknown[0]!r}: use event=COL and time=COL (survival) or "
            "label=COL (classification)"
        )
    if keys & _SURVIVAL and keys & _CLASSIFICATION:
        raise ConfigurationError(
            "--target label= cannot be combined with event=/time=: one task's targets only "
            "(event and time for cox_ph, label for logistic_regression)"
        )
    if keys & _SURVIVAL and keys != _SURVIVAL:
        raise ConfigurationError("survival needs both --target event=COL and --target time=COL")
    return targets


def check_task_targets(task: str, targets: set[str]) -> None:
    """Refuse targets the task would not use (e.g. ``label`` with ``cox_ph``)."""
    from biofed.core import ConfigurationError

    wanted = _CLASSIFICATION if task.startswith("logistic_regression") else _SURVIVAL
    known = ("cox_ph", "cox_ph_torch", "logistic_regression", "logistic_regression_torch")
    if task in known and targets != wanted:
        raise ConfigurationError(
            f"--task {task} uses --target {' and '.join(sorted(wanted))}, got "
            f"{', '.join(sorted(targets))}: the others would be silently ignored"
        )


def _check_binary(values: Array, *, key: str, column: str) -> None:
    import numpy as np

    from biofed.core import ConfigurationError

    seen = {float(v) for v in np.unique(values)}
    if seen <= {0.0, 1.0}:
        return
    if seen <= {1.0, 2.0}:
        raise ConfigurationError(
            f"{key} column {column!r} is coded 1/2 (R's convention, 2 = {key}); recode it as "
            f"0/1 ({column} - 1) before loading"
        )
    shown = sorted(seen)[:5]
    raise ConfigurationError(
        f"{key} column {column!r} must be 0/1 or booleans, found values {shown}; recode it"
    )


def load_user_federation(options: TableOptions, seed: int) -> FederatedDataset:
    """The table as a federation: split by its split column, or drawn with ``seed``."""
    from dataclasses import replace

    import numpy as np

    from biofed.core import ConfigurationError
    from biofed.data import (
        FederatedDataset,
        load_split_table,
        load_table,
        scan_table,
        train_test_split,
    )

    if options.site_column is None:
        raise ConfigurationError(
            "--data needs --site-column COL: the column naming each row's site"
        )
    targets = parse_targets(options.targets)
    if not targets:
        raise ConfigurationError("--data needs --target KEY=COLUMN (event=…, time=… or label=…)")
    features = _names(options.features, "--features")
    exclude = _names(options.exclude, "--exclude") or ()
    reserved = [*targets.values(), options.site_column]
    reserved += [c for c in (options.split_column, options.id_column) if c is not None]
    scan = scan_table(
        options.path,
        site_column=options.site_column,
        reserved=reserved,
        feature_columns=features,
        exclude=exclude,
        split_column=options.split_column,
    )
    _check_prepared(scan, options)
    prepared = {*scan.text, *scan.missing}
    if prepared:  # loaded as they are, and encoded after the split
        features = [f for f in scan.features if f not in prepared]
    sites: dict[str, SiteData] = {}
    if options.split_column is not None:
        sites = load_split_table(
            options.path,
            site_column=options.site_column,
            split_column=options.split_column,
            target_columns=targets,
            feature_columns=features,
            id_column=options.id_column,
            exclude=exclude,
        )
        empty = [site for site, data in sites.items() if data.test is None]
        if empty:
            raise ConfigurationError(
                f"site {empty[0]!r} has no 'test' rows in split column "
                f"{options.split_column!r}; every site needs a test set"
            )
    else:
        per_site = load_table(
            options.path,
            site_column=options.site_column,
            target_columns=targets,
            feature_columns=features,
            id_column=options.id_column,
            exclude=exclude,
        )
        rng = np.random.default_rng(seed)
        stratify = "event" if "event" in targets else "label"
        for site, ds in per_site.items():
            if prepared:  # carry each row's index through the split, to find its raw values
                rows = scan.site_rows[site].astype(np.float64)
                ds = replace(ds, targets={**ds.targets, _ROW: rows})
            sites[site] = train_test_split(ds, options.test_fraction, rng, stratify_key=stratify)
    for key in ("event", "label"):
        if key in targets:
            parts = [d.target(key) for s in sites.values() for d in (s.train, s.test) if d]
            _check_binary(np.concatenate(parts), key=key, column=targets[key])
    if prepared:
        sites = _encode_sites(sites, scan, options)
    return FederatedDataset(name=options.path.stem, sites=sites)


_ROW = "__row__"


def _check_prepared(scan: TableScan, options: TableOptions) -> None:
    """Refuse text columns without --one-hot and missing values without --impute, all at once."""
    from biofed.core import ConfigurationError
    from biofed.data import IMPUTE_METHODS

    if options.impute is not None and options.impute not in IMPUTE_METHODS:
        raise ConfigurationError(
            f"--impute must be one of {', '.join(IMPUTE_METHODS)}, got {options.impute!r}"
        )
    if options.min_category_count < 1:
        raise ConfigurationError(
            f"--min-category-count must be ≥ 1, got {options.min_category_count}"
        )
    problems = []
    if scan.text and not options.one_hot:
        problems.append(
            f"text columns {', '.join(map(repr, scan.text))} are not numeric; pass --one-hot "
            "(a vocabulary pooled over the sites' training rows) or --exclude them"
        )
    if scan.missing and options.impute is None:
        problems.append(
            f"columns {', '.join(map(repr, scan.missing))} have missing values; pass "
            "--impute mean|median|zero (pooled over the sites' training rows) or drop those rows"
        )
    if problems:
        raise ConfigurationError("; ".join(problems))


def _encode_sites(
    sites: dict[str, SiteData], scan: TableScan, options: TableOptions
) -> dict[str, SiteData]:
    """Each site's train and test rows with the prepared columns encoded by one pooled fit."""
    import numpy as np

    from biofed.data import Dataset, SiteData, fit_encoder

    def rows_of(site: str, ds: Dataset, split: str) -> Any:
        if _ROW in ds.targets:
            return ds.target(_ROW).astype(np.int64)
        rows = scan.site_rows[site]
        assert scan.split is not None
        return rows[scan.split[rows] == split]

    def raw(rows: Any) -> dict[str, Any]:
        return {col: values[rows] for col, values in scan.raw.items()}

    train_rows = {site: rows_of(site, data.train, "train") for site, data in sites.items()}
    encoder = fit_encoder(
        [raw(rows) for rows in train_rows.values()],
        numeric=scan.missing,
        text=scan.text,
        impute=cast('Literal["mean", "median", "zero"]', options.impute or "mean"),
        min_category_count=options.min_category_count,
    )

    def encoded(ds: Dataset, rows: Any) -> Dataset:
        extra = encoder.apply(raw(rows))
        return Dataset(
            name=ds.name,
            features=np.hstack([ds.features, extra]),
            feature_names=(*ds.feature_names, *encoder.feature_names),
            targets={k: v for k, v in ds.targets.items() if k != _ROW},
        )

    out: dict[str, SiteData] = {}
    for site, data in sites.items():
        test = data.test
        out[site] = SiteData(
            train=encoded(data.train, train_rows[site]),
            test=None if test is None else encoded(test, rows_of(site, test, "test")),
        )
    return out


def id_like_features(fed: FederatedDataset) -> list[str]:
    """Feature columns whose names look like an id, a flag or a split."""
    names = next(iter(fed.sites.values())).train.feature_names
    return [n for n in names if _ID_LIKE.search(n)]


def scale_warning(fed: FederatedDataset) -> str | None:
    """A one-line warning when the features' pooled stds differ by more than 100×."""
    import numpy as np

    from biofed.data import pooled_train_moments

    moments = pooled_train_moments(fed)
    std = moments.std
    positive = np.flatnonzero(std > 0)
    if positive.size < 2:
        return None
    big = positive[np.argmax(std[positive])]
    small = positive[np.argmin(std[positive])]
    ratio = float(std[big] / std[small])
    if ratio <= SCALE_RATIO_WARNING:
        return None
    names = moments.feature_names
    return (
        f"feature scales differ {ratio:.0f}× (std of {names[big]!r} {std[big]:.3g}, of "
        f"{names[small]!r} {std[small]:.3g}); pass --standardise"
    )
