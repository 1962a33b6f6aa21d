"""Statistical disclosure control of the heterogeneity report's tables: which counts may be
shown, histogram bars merged until safe, categories recoded into ``other`` until safe.

Privacy notes
-------------
Threat: a count below the disclosure threshold ``k`` (``min_cell``) shown outright, or recovered
by subtracting shown counts from one another — from a site's total, or from a sum over sites
(the differencing attack that primary cell suppression alone leaves open; Hundepool et al.,
*Statistical Disclosure Control*, Wiley 2012, on secondary suppression and global recoding).
Rather than suppress cells and then search for complementary ones, the tables are recoded:

* **histograms** (:func:`merge_bars`): adjacent bins are merged, across all sites at once,
  until every bar holds 0 or at least ``k`` of each site's values. Every site's bars and every
  sum over sites are then on the same bars, so no shown count and no difference of shown
  counts is in ``1 … k − 1``. Under- and overflow join the outermost bins;
* **categories** (:func:`recode`): a category a site holds fewer than ``k`` times goes into the
  site's ``other``, which grows with the site's next-smallest categories until it is 0 or at
  least ``k``; which categories a site hides is never shown.

Both keep totals (a site's values all stay in some bar or category), so nothing is dropped
silently. Written here rather than taken from a library: SDC packages (sdcMicro, τ-ARGUS) work
on record-level microdata or on whole tables at one holder, not on per-site summaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from biofed.core import Array, DataError
from biofed.data._summary import NumericStats

OTHER = "other"


def safe(count: float, k: int) -> bool:
    """A count the report may rest on: none, or at least ``k``."""
    return count == 0 or count >= k


def merge_bars(
    name: str, stats: Mapping[str, NumericStats], k: int
) -> tuple[Array, dict[str, Array]] | None:
    """The common bars' edges and each site's count per bar, every count 0 or ≥ ``k``.

    Under- and overflow join the outermost bins; then, while some bar is unsafe at some site
    (a count in ``1 … k − 1``), the leftmost such bar is merged with the neighbour holding more
    of the short sites' values (so bars fill soonest and stay narrow). Ends at the latest with
    one bar, safe as every site shown has ``n ≥ k`` values. ``None`` when a site has no
    histogram, or the edges make no bin.

    Raises
    ------
    DataError
        A site's histogram is on other edges than the first site's.
    """
    if not stats or any(s.edges is None or s.counts is None for s in stats.values()):
        return None
    sites = sorted(stats)
    first = stats[sites[0]].edges or ()
    for site in sites:
        if stats[site].edges != first:
            raise DataError(f"site {site!r}: numeric {name!r}: histogram not on the common edges")
    if len(first) < 2:
        return None
    fine = np.array([stats[s].counts for s in sites], dtype=np.int64)
    fine[:, 1] += fine[:, 0]  # underflow into the first bin
    fine[:, -2] += fine[:, -1]  # overflow into the last
    fine = fine[:, 1:-1]
    edges = np.asarray(first, dtype=np.float64)

    bars = [fine[:, j] for j in range(fine.shape[1])]  # each bar: its count per site
    starts = list(range(fine.shape[1]))  # each bar's first fine bin
    while True:
        unsafe = [j for j, c in enumerate(bars) if np.any((c > 0) & (c < k))]
        if not unsafe:
            break
        j = unsafe[0]
        short = (bars[j] > 0) & (bars[j] < k)  # the sites this bar is too small for
        # merge with the neighbour holding more of those sites' values (it fills the bar
        # soonest, so bars stay narrow), the left one on a tie
        left = bars[j - 1][short].sum() if j > 0 else -1
        right = bars[j + 1][short].sum() if j + 1 < len(bars) else -1
        other = j - 1 if left >= right else j + 1
        lo, hi = min(j, other), max(j, other)
        bars[lo : hi + 1] = [bars[lo] + bars[hi]]
        del starts[hi]
    bar_edges = np.array([edges[s] for s in starts] + [edges[-1]])
    counts = {site: np.array([c[i] for c in bars], dtype=np.int64) for i, site in enumerate(sites)}
    return bar_edges, counts


@dataclass(frozen=True, slots=True)
class Recoded:
    """One site's category counts as the report may use them (see :func:`recode`)."""

    total: int
    counts: Mapping[str, int]  # the categories shown, with OTHER
    hidden: frozenset[str]  # categories the site holds but shows only inside OTHER
    merged_before: bool  # the site merged categories into OTHER before sending

    def count(self, category: str) -> int | None:
        """The site's count of ``category``; ``None`` when it may be inside ``other`` (and
        for ``other`` itself when it holds merged categories: not comparable)."""
        if category == OTHER:
            return None if self.hidden or self.merged_before else self.counts[OTHER]
        if category in self.counts:
            return self.counts[category]
        if category in self.hidden or self.merged_before:
            return None
        return 0


def recode(counts: Mapping[str, int], k: int, merged: int) -> Recoded:
    """Categories below ``k`` into ``other``, and ``other`` grown with the next-smallest
    category until it is 0 or ≥ ``k`` (the total is ≥ ``k``, so this ends)."""
    total = sum(counts.values())
    kept = {c: n for c, n in counts.items() if c != OTHER and n >= k}
    while kept and not safe(total - sum(kept.values()), k):
        del kept[min(kept, key=lambda c: (kept[c], c))]
    return Recoded(
        total=total,
        counts={**kept, OTHER: total - sum(kept.values())},
        hidden=frozenset(c for c, n in counts.items() if c != OTHER and n > 0 and c not in kept),
        merged_before=merged > 0,
    )
