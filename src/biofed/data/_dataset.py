"""A site's dataset as the task sees it: a feature matrix and named target arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from biofed.core import Array, DataError, check_id


def _readonly(array: Array) -> Array:
    view = array.view()
    view.flags.writeable = False
    return view


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """Tabular examples held by one site (or pooled, in a simulation).

    Attributes
    ----------
    name:
        A biofed identifier for the dataset.
    features:
        ``(n, p)`` float32 matrix, read-only.
    feature_names:
        ``p`` column names, in the matrix's order.
    targets:
        Named ``(n,)`` arrays: ``{"event", "time"}`` for survival, ``{"label"}`` for
        classification.
    """

    name: str
    features: Array
    feature_names: tuple[str, ...]
    targets: Mapping[str, Array] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        check_id(self.name, what="dataset name")
        features = np.asarray(self.features)
        if features.ndim != 2:
            raise DataError(f"dataset {self.name!r}: features must be 2-D, got {features.ndim}-D")
        if not np.issubdtype(features.dtype, np.number):
            raise DataError(f"dataset {self.name!r}: features must be numeric")
        features = np.ascontiguousarray(features, dtype=np.float32)
        if not np.isfinite(features).all():
            raise DataError(f"dataset {self.name!r}: features contain missing or infinite values")
        names = tuple(self.feature_names)
        if len(names) != features.shape[1]:
            raise DataError(
                f"dataset {self.name!r}: {len(names)} feature names for {features.shape[1]} columns"
            )
        targets: dict[str, Array] = {}
        for key, value in self.targets.items():
            array = np.asarray(value)
            if array.shape != (features.shape[0],):
                raise DataError(
                    f"dataset {self.name!r}: target {key!r} has shape {array.shape}, "
                    f"expected ({features.shape[0]},)"
                )
            targets[key] = _readonly(np.ascontiguousarray(array))
        object.__setattr__(self, "features", _readonly(features))
        object.__setattr__(self, "feature_names", names)
        object.__setattr__(self, "targets", MappingProxyType(targets))

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def num_features(self) -> int:
        """Number of feature columns."""
        return int(self.features.shape[1])

    def target(self, key: str) -> Array:
        """The target array ``key``, with a clear error if the dataset lacks it."""
        try:
            return self.targets[key]
        except KeyError:
            raise DataError(
                f"dataset {self.name!r} has no target {key!r} (it has {sorted(self.targets)})"
            ) from None

    def subset(self, indices: Sequence[int] | Array, *, name: str | None = None) -> Dataset:
        """The examples at ``indices`` (a copy), optionally under another name."""
        idx = np.asarray(indices, dtype=np.int64)
        return Dataset(
            name=name or self.name,
            features=self.features[idx],
            feature_names=self.feature_names,
            targets={k: v[idx] for k, v in self.targets.items()},
        )

    @staticmethod
    def concat(parts: Sequence[Dataset], *, name: str) -> Dataset:
        """Stack datasets with the same columns and targets (pooled training in simulation)."""
        if not parts:
            raise DataError("cannot concatenate zero datasets")
        first = parts[0]
        for part in parts[1:]:
            if part.feature_names != first.feature_names or set(part.targets) != set(first.targets):
                raise DataError(f"cannot pool {part.name!r} with {first.name!r}: columns differ")
        return Dataset(
            name=name,
            features=np.concatenate([p.features for p in parts]),
            feature_names=first.feature_names,
            targets={k: np.concatenate([p.targets[k] for p in parts]) for k in first.targets},
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteData:
    """What one site holds for a study: a training set and, optionally, a held-out test set."""

    train: Dataset
    test: Dataset | None = None

    def split(self, which: str) -> Dataset:
        """``"train"`` or ``"test"``; a clear error if the site has no such split."""
        if which == "train":
            return self.train
        if which == "test" and self.test is not None:
            return self.test
        raise DataError(f"site has no {which!r} split")


@dataclass(frozen=True, slots=True, kw_only=True)
class FederatedDataset:
    """Site name → :class:`SiteData`, for simulations and benchmarks (never a real deployment,
    where each site only ever holds its own part)."""

    name: str
    sites: Mapping[str, SiteData]

    def __post_init__(self) -> None:
        if not self.sites:
            raise DataError(f"federated dataset {self.name!r} has no sites")
        for site in self.sites:
            check_id(site, what="site name")
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))

    def pooled(self, which: str) -> Dataset:
        """All sites' ``which`` split stacked in site order."""
        return Dataset.concat(
            [s.split(which) for s in self.sites.values()], name=f"{self.name}-pooled-{which}"
        )
