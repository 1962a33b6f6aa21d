"""Generated logistic-regression sites, for scale tests and benchmarks.

Every site draws its rows from its own generator, seeded by (seed, site name), so a site's
data is the same in whichever process it is built, and 1,000 sites cost nothing until each
one's first instruction.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from biofed.data import Dataset, SiteData
from biofed.simulation._sites import SiteRecipe

#: The dataset name generated sites hold.
SYNTHETIC_DATASET = "synthetic"


def logistic_site_data(
    node_id: str, *, seed: int = 0, rows: int = 64, features: int = 8
) -> dict[str, SiteData]:
    """One site's generated binary-classification data (name → data).

    Labels follow one logistic model shared by all sites (its weights drawn from ``seed``);
    each site's features are shifted by a site-specific mean, so sites differ (non-IID).
    ``rows`` training rows and ``max(rows // 4, 8)`` test rows.
    """
    truth = np.random.default_rng([seed, 0x7EA7]).standard_normal(features)
    rng = np.random.default_rng([seed, zlib.crc32(node_id.encode())])
    shift = rng.normal(0.0, 0.5, features)
    names = tuple(f"x{i}" for i in range(features))

    def draw(n: int) -> Dataset:
        x = rng.standard_normal((n, features)) + shift
        p = 1.0 / (1.0 + np.exp(-(x @ truth)))
        y = (rng.random(n) < p).astype(np.float64)
        return Dataset(
            name=SYNTHETIC_DATASET, features=x, feature_names=names, targets={"label": y}
        )

    return {SYNTHETIC_DATASET: SiteData(train=draw(rows), test=draw(max(rows // 4, 8)))}


def logistic_recipes(
    num_sites: int, *, seed: int = 0, rows: int = 64, features: int = 8
) -> list[SiteRecipe]:
    """Recipes of ``num_sites`` generated sites named ``site-0000``, ``site-0001``, …"""
    width = max(4, len(str(num_sites - 1)))
    return [
        SiteRecipe(
            node_id=f"site-{i:0{width}d}",
            load_data=functools.partial(
                logistic_site_data, f"site-{i:0{width}d}", seed=seed, rows=rows, features=features
            ),
        )
        for i in range(num_sites)
    ]
