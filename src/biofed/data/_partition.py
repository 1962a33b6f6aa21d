"""Split one dataset: train/test, and into simulated sites (IID, label skew, quantity skew).

The partitioners are for simulations and benchmarks only: in a real federation each site
already holds its own data. Every function takes an explicit ``np.random.Generator``, so a
seeded generator gives the same split every time.
"""

from __future__ import annotations

import numpy as np

from biofed.core import Array, ConfigurationError, DataError
from biofed.core.checks import check_float, check_int
from biofed.data._dataset import Dataset, SiteData


def _check_rng(rng: object) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ConfigurationError(
            f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )


def _check_sites(ds: Dataset, num_sites: object) -> int:
    k = check_int(num_sites, "num_sites", minimum=1)
    if k > len(ds):
        raise ConfigurationError(
            f"num_sites={k} is more than the {len(ds)} examples of dataset {ds.name!r}; "
            "use fewer sites"
        )
    return k


def _apportion(proportions: Array, total: int) -> Array:
    """Integer counts summing to ``total``, following cumulative ``proportions``."""
    cuts = np.minimum(np.floor(np.cumsum(proportions) * total).astype(np.int64), total)
    cuts[-1] = total
    return np.diff(cuts, prepend=0)


def _groups(labels: Array) -> list[Array]:
    """Row indices of each distinct value of ``labels`` (sorted values, rows ascending)."""
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes))[:-1])


def _sites(ds: Dataset, assignment: Array, num_sites: int) -> dict[str, Dataset]:
    """Site ``k`` gets the rows assigned ``k``, in their original order."""
    order = np.argsort(assignment, kind="stable")
    bounds = np.cumsum(np.bincount(assignment, minlength=num_sites))[:-1]
    return {
        f"site-{k}": ds.subset(rows, name=f"{ds.name}-site-{k}")
        for k, rows in enumerate(np.split(order, bounds))
    }


def partition_iid(ds: Dataset, num_sites: int, rng: np.random.Generator) -> dict[str, Dataset]:
    """Shuffle the examples and deal them to ``num_sites`` sites of (nearly) equal size.

    Returns
    -------
    dict[str, Dataset]
        ``"site-0"`` … ``"site-{num_sites-1}"`` → that site's examples (original row order);
        sizes differ by at most one. Every example goes to exactly one site.
    """
    _check_rng(rng)
    k = _check_sites(ds, num_sites)
    n = len(ds)
    assignment = np.empty(n, dtype=np.int64)
    assignment[rng.permutation(n)] = np.arange(n, dtype=np.int64) * k // n
    return _sites(ds, assignment, k)


def partition_dirichlet(
    ds: Dataset,
    num_sites: int,
    alpha: float,
    rng: np.random.Generator,
    *,
    label_key: str = "label",
    min_size: int = 1,
    max_tries: int = 1000,
) -> dict[str, Dataset]:
    """Label-skewed sites: each class is spread over the sites in Dirichlet(alpha) proportions.

    For every class, proportions ``p ~ Dir(alpha · 1)`` over the sites are drawn and the class's
    (shuffled) examples are cut in those proportions. Small ``alpha`` (0.1) gives sites that
    hold mostly one class; large ``alpha`` (100) approaches an IID split. The whole draw is
    repeated until every site has at least ``min_size`` examples.

    Parameters
    ----------
    ds, num_sites, rng:
        As :func:`partition_iid`.
    alpha:
        Dirichlet concentration, > 0.
    label_key:
        The target holding discrete class labels.
    min_size:
        Fewest examples a site may get (≥ 1).
    max_tries:
        Draws to attempt before giving up.

    Raises
    ------
    ConfigurationError
        Invalid parameters, ``num_sites * min_size`` above the dataset size, or no draw in
        ``max_tries`` gave every site ``min_size`` examples (raise ``alpha`` or lower
        ``num_sites`` / ``min_size``).
    DataError
        The dataset has no target ``label_key``.
    """
    _check_rng(rng)
    k = _check_sites(ds, num_sites)
    a = check_float(alpha, "alpha", above=0)
    floor = check_int(min_size, "min_size", minimum=1)
    tries = check_int(max_tries, "max_tries", minimum=1)
    if k * floor > len(ds):
        raise ConfigurationError(
            f"{k} sites of at least min_size={floor} need {k * floor} examples; dataset "
            f"{ds.name!r} has {len(ds)}"
        )
    classes = _groups(ds.target(label_key))
    site_ids = np.arange(k, dtype=np.int64)
    concentration = np.full(k, a)
    assignment = np.empty(len(ds), dtype=np.int64)
    for _ in range(tries):
        for rows in classes:
            counts = _apportion(rng.dirichlet(concentration), len(rows))
            assignment[rng.permutation(rows)] = np.repeat(site_ids, counts)
        if np.bincount(assignment, minlength=k).min() >= floor:
            return _sites(ds, assignment, k)
    raise ConfigurationError(
        f"no Dirichlet(alpha={a}) draw in {tries} tries gave each of {k} sites at least "
        f"{floor} examples; raise alpha, or lower num_sites or min_size"
    )


def partition_quantity_skew(
    ds: Dataset, num_sites: int, alpha: float, rng: np.random.Generator
) -> dict[str, Dataset]:
    """Sites of unequal size: sizes follow Dirichlet(alpha) proportions, each site ≥ 1 example.

    Examples are shuffled before dealing, so each site's label mix is IID; only the amounts
    differ. Small ``alpha`` gives a few large sites and many tiny ones.

    Raises
    ------
    ConfigurationError
        ``num_sites`` not in ``[1, len(ds)]``, or ``alpha`` ≤ 0.
    """
    _check_rng(rng)
    k = _check_sites(ds, num_sites)
    a = check_float(alpha, "alpha", above=0)
    n = len(ds)
    sizes = 1 + _apportion(rng.dirichlet(np.full(k, a)), n - k)
    assignment = np.empty(n, dtype=np.int64)
    assignment[rng.permutation(n)] = np.repeat(np.arange(k, dtype=np.int64), sizes)
    return _sites(ds, assignment, k)


def train_test_split(
    dataset: Dataset,
    test_fraction: float,
    rng: np.random.Generator,
    stratify_key: str | None = None,
) -> SiteData:
    """Hold out a random ``test_fraction`` of ``dataset`` as its test set.

    The test set has ``round(n * test_fraction)`` examples, kept within ``[1, n - 1]``. With
    ``stratify_key``, each value of that target is represented in the test set in proportion
    to its count (largest-remainder rounding). Both splits keep the original row order and
    are named ``f"{dataset.name}-train"`` / ``f"{dataset.name}-test"``.

    Raises
    ------
    ConfigurationError
        ``test_fraction`` not strictly between 0 and 1.
    DataError
        Fewer than 2 examples, or no target ``stratify_key``.
    """
    _check_rng(rng)
    fraction = check_float(test_fraction, "test_fraction", above=0, below=1)
    n = len(dataset)
    if n < 2:
        raise DataError(f"dataset {dataset.name!r} has {n} example(s); a split needs at least 2")
    n_test = min(max(int(np.floor(n * fraction + 0.5)), 1), n - 1)
    groups = [np.arange(n)] if stratify_key is None else _groups(dataset.target(stratify_key))
    sizes = np.array([len(g) for g in groups], dtype=np.int64)
    quotas = sizes * n_test / n
    per_group = np.floor(quotas).astype(np.int64)
    short = n_test - int(per_group.sum())
    per_group[np.argsort(per_group - quotas, kind="stable")[:short]] += 1
    test = np.zeros(n, dtype=bool)
    for rows, count in zip(groups, per_group, strict=True):
        test[rng.choice(rows, size=int(count), replace=False)] = True
    return SiteData(
        train=dataset.subset(np.flatnonzero(~test), name=f"{dataset.name}-train"),
        test=dataset.subset(np.flatnonzero(test), name=f"{dataset.name}-test"),
    )
