"""Standardise features with the pooled mean and standard deviation, computed federatedly.

Each site reduces its training features to sufficient statistics (count, per-feature sum and
sum of squares); the statistics are added up across sites, and the pooled mean and standard
deviation follow from the totals. No row leaves a site: only these sums do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from biofed.core import Array, DataError
from biofed.data._dataset import Dataset, FederatedDataset, SiteData


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureMoments:
    """One site's (or a sum of sites') sufficient statistics for feature means and variances.

    Attributes
    ----------
    feature_names:
        The columns, in the matrix's order.
    count:
        Number of rows.
    total, total_sq:
        ``(p,)`` per-feature sum and sum of squares (float64).
    """

    feature_names: tuple[str, ...]
    count: int
    total: Array
    total_sq: Array

    @staticmethod
    def of(dataset: Dataset) -> FeatureMoments:
        """The statistics of one dataset (what a site computes locally)."""
        x = np.asarray(dataset.features, dtype=np.float64)
        return FeatureMoments(
            feature_names=dataset.feature_names,
            count=len(dataset),
            total=x.sum(axis=0),
            total_sq=np.einsum("ij,ij->j", x, x),
        )

    @staticmethod
    def combine(parts: Iterable[FeatureMoments]) -> FeatureMoments:
        """The sum of several sites' statistics (the federated step: sums only)."""
        items = list(parts)
        if not items:
            raise DataError("cannot combine the statistics of zero sites")
        names = items[0].feature_names
        if any(m.feature_names != names for m in items):
            raise DataError("cannot combine statistics of sites with different feature columns")
        return FeatureMoments(
            feature_names=names,
            count=sum(m.count for m in items),
            total=np.sum([m.total for m in items], axis=0),
            total_sq=np.sum([m.total_sq for m in items], axis=0),
        )

    @property
    def mean(self) -> Array:
        """``(p,)`` per-feature mean."""
        if self.count == 0:
            raise DataError("no rows: the mean is undefined")
        return np.asarray(self.total / self.count, dtype=np.float64)

    @property
    def std(self) -> Array:
        """``(p,)`` per-feature population standard deviation."""
        mean = self.mean
        variance = np.maximum(self.total_sq / self.count - mean * mean, 0.0)
        return np.asarray(np.sqrt(variance), dtype=np.float64)


@dataclass(frozen=True, slots=True, kw_only=True)
class Standardiser:
    """``x ↦ (x − mean) / std`` per feature; a constant feature (std 0) is only centred."""

    feature_names: tuple[str, ...]
    mean: Array
    std: Array

    @staticmethod
    def from_moments(moments: FeatureMoments) -> Standardiser:
        """The transform of the pooled statistics."""
        return Standardiser(feature_names=moments.feature_names, mean=moments.mean, std=moments.std)

    def apply(self, dataset: Dataset) -> Dataset:
        """``dataset`` with its features transformed (targets unchanged)."""
        if dataset.feature_names != self.feature_names:
            raise DataError(
                f"dataset {dataset.name!r} has features {list(dataset.feature_names)}, the "
                f"standardiser was fitted on {list(self.feature_names)}"
            )
        scale = np.where(self.std > 0, self.std, 1.0)
        x = (np.asarray(dataset.features, dtype=np.float64) - self.mean) / scale
        return Dataset(
            name=dataset.name,
            features=x,
            feature_names=dataset.feature_names,
            targets=dataset.targets,
        )


def pooled_train_moments(fed: FederatedDataset) -> FeatureMoments:
    """The training features' statistics pooled over the sites: each site's sums, added."""
    return FeatureMoments.combine(FeatureMoments.of(s.train) for s in fed.sites.values())


def standardise_sites(fed: FederatedDataset) -> tuple[FederatedDataset, Standardiser]:
    """Every site's train and test features standardised with the pooled training statistics.

    The mean and standard deviation are those of all sites' training rows together, found
    from per-site sums (:class:`FeatureMoments`); the same transform is applied everywhere.
    """
    scaler = Standardiser.from_moments(pooled_train_moments(fed))
    sites = {
        site: SiteData(
            train=scaler.apply(data.train),
            test=None if data.test is None else scaler.apply(data.test),
        )
        for site, data in fed.sites.items()
    }
    return FederatedDataset(name=fed.name, sites=sites), scaler
