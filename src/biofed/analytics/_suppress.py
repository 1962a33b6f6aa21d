"""Statistical disclosure control of released tables: small cells, complements, dominance.

One implementation, used by a site on its own answer (plain mode) and by the coordinator
on the consortium totals (secure mode, and plain mode after combining).

* :func:`small_cells` — primary suppression: a count in ``1 .. min_cell - 1``.
* :func:`protect_table` — complementary suppression of a 2-D count table together with its
  row, column and grand totals, so that no suppressed entry can be recomputed from the
  published ones.
* :func:`protect_vector` — the 1-D case (a histogram and its total).
* :func:`dominated` — the dominance ((n, k) with n = 1) rule for sums.

Security notes
--------------
Threat: a reader recovering a suppressed cell by subtraction — a row total minus the row's
published cells (the textbook attack on tables with one suppressed cell per line), or by
solving the table's linear system (a suppressed cell on no cycle of suppressed cells is
fixed by the equations even when every line has two suppressions). The standard
(Hundepool et al., *Statistical Disclosure Control*, Wiley 2012, §5.2–5.4; Cox 1980,
"Suppression methodology and statistical disclosure control", JASA 75) is that every line
(row or column of the table extended by its totals) holding a suppressed entry holds at
least two, and, stronger, that the linear system "cells of a line sum to its total" leaves
every suppressed entry undetermined. :func:`protect_table` enforces both: it adds
complements line by line (in a line with a single suppression, preferably where the
crossing line needs one too, else the smallest non-zero entry), then audits the system
exactly (an entry is fixed iff it lies in the row space of the constraint matrix on the
suppressed entries; thin SVD) and adds complements until no suppressed entry is
determined. Not covered: the narrow *intervals* non-negativity can leave for a suppressed
cell (τ-ARGUS's linear-programming audit of protection ranges); this is why primary
suppression uses ``min_cell`` and complements are small non-zero cells.

Dominance: a sum where one record's |value| exceeds ``dominance`` × the cell's Σ|value|
mostly reveals that record. Under secure aggregation no one holds the consortium's largest
record, so each site flags a cell dominated *at the site*; if no site flags it, the largest
record is at most ``dominance`` × its site's Σ|value| ≤ ``dominance`` × the total, so the
consortium cell is not dominated either (sound, possibly over-suppressing).
"""

from __future__ import annotations

import numpy as np

from biofed.core import Array

_MAX_AUDIT_ENTRIES = 4096


def small_cells(counts: Array | float, min_cell: int) -> Array:
    """Boolean mask of counts in ``[1, min_cell)`` (zero cells are published)."""
    c = np.asarray(counts, dtype=np.float64)
    return np.asarray((c > 0) & (c < min_cell), dtype=bool)


def dominated(abs_sum: Array, abs_max: Array, dominance: float) -> Array:
    """Boolean mask of sums where one record makes up more than ``dominance`` of the cell's
    Σ|value| (``dominance`` 1.0 switches the rule off)."""
    total = np.asarray(abs_sum, dtype=np.float64)
    top = np.asarray(abs_max, dtype=np.float64)
    if dominance >= 1.0:
        return np.zeros(total.shape, dtype=bool)
    return np.asarray((total > 0) & (top > dominance * total), dtype=bool)


def protect_vector(
    counts: Array, suppressed: Array, min_cell: int, *, total_known: bool = True
) -> tuple[Array, bool]:
    """Complementary suppression of a 1-D table of counts and its published total.

    Parameters
    ----------
    counts:
        ``(k,)`` counts.
    suppressed:
        ``(k,)`` bool, cells already suppressed (e.g. by a site); small cells are added.
    min_cell:
        The minimum cell count.
    total_known:
        False when the total is not published anyway (a sum of partial answers): then a
        single suppressed cell needs no complement.

    Returns
    -------
    (mask, total_suppressed)
        The cells to suppress, and whether the total must be suppressed too (when it is
        itself small, or no second cell can hide a single suppression).
    """
    c = np.asarray(counts, dtype=np.float64)
    mask = np.asarray(suppressed, dtype=bool) | small_cells(c, min_cell)
    total = float(c.sum())
    if 0 < total < min_cell:
        return np.ones(c.shape, dtype=bool), True
    total_suppressed = not total_known
    if total_known and int(mask.sum()) == 1:
        pick = _smallest(c, ~mask)
        if pick is None:
            total_suppressed = True
        else:
            mask[pick] = True
    return mask, total_suppressed


def _smallest(values: Array, allowed: Array) -> int | None:
    """Index of the smallest non-zero allowed value (else any allowed one), or None."""
    idx = np.flatnonzero(allowed)
    if idx.size == 0:
        return None
    vals = values.ravel()[idx]
    nonzero = idx[vals > 0]
    pool = nonzero if nonzero.size else idx
    return int(pool[np.argmin(values.ravel()[pool])])


def _extended(counts: Array) -> Array:
    """The table with its row totals (last column), column totals (last row) and total."""
    r, c = counts.shape
    ext = np.zeros((r + 1, c + 1))
    ext[:r, :c] = counts
    ext[:r, c] = counts.sum(axis=1)
    ext[r, :c] = counts.sum(axis=0)
    ext[r, c] = counts.sum()
    return ext


def _constraints(r: int, c: int) -> Array:
    """Rows: every line of the extended (r+1)×(c+1) table sums its cells to its total."""
    n = (r + 1) * (c + 1)
    rows = []
    for i in range(r + 1):
        a = np.zeros(n)
        a[i * (c + 1) : i * (c + 1) + c] = 1.0
        a[i * (c + 1) + c] = -1.0
        rows.append(a)
    for j in range(c + 1):
        a = np.zeros(n)
        a[[i * (c + 1) + j for i in range(r)]] = 1.0
        a[r * (c + 1) + j] = -1.0
        rows.append(a)
    return np.asarray(rows)


def determined(mask_ext: Array) -> Array:
    """Which suppressed entries of an extended table the published ones fix exactly.

    An unknown entry is determined iff its unit vector lies in the row space of the
    constraint matrix restricted to the unknowns, i.e. iff its leverage (the squared norm
    of its column in an orthonormal basis of that row space, from a thin SVD) is 1.
    """
    r1, c1 = mask_ext.shape
    unknown = np.flatnonzero(mask_ext.ravel())
    out = np.zeros(mask_ext.size, dtype=bool)
    if unknown.size == 0:
        return out.reshape(mask_ext.shape)
    a = _constraints(r1 - 1, c1 - 1)[:, unknown]
    _, sing, vt = np.linalg.svd(a, full_matrices=False)
    rank = int((sing > 1e-9 * max(1.0, float(sing.max(initial=0.0)))).sum())
    leverage = (vt[:rank] ** 2).sum(axis=0)
    out[unknown[leverage > 1.0 - 1e-9]] = True
    return out.reshape(mask_ext.shape)


def protect_table(counts: Array, suppressed: Array, min_cell: int) -> Array:
    """Complementary suppression of a 2-D count table and its totals.

    Parameters
    ----------
    counts:
        ``(r, c)`` counts.
    suppressed:
        ``(r + 1, c + 1)`` bool over the extended table (cells, row totals in the last
        column, column totals in the last row, the grand total in the corner): entries
        already suppressed (by a site, or partial totals); small entries are added.
    min_cell:
        The minimum cell count.

    Returns
    -------
    Array
        ``(r + 1, c + 1)`` bool: every entry to withhold. Each line with a suppressed entry
        holds at least two, and no suppressed entry is determined by the published ones.
    """
    cells = np.asarray(counts, dtype=np.float64)
    r, c = cells.shape
    ext = _extended(cells)
    small = small_cells(ext, min_cell)
    if small[r, c]:
        return np.ones(ext.shape, dtype=bool)  # a small total: nothing can be published safely
    mask = np.asarray(suppressed, dtype=bool).copy() | small
    audit = ext.size <= _MAX_AUDIT_ENTRIES
    for _ in range(ext.size + 1):
        changed = _two_per_line(ext, mask)
        if not changed and audit:
            fixed = determined(mask)
            if fixed.any():
                i, j = np.argwhere(fixed)[0]
                changed = _add_complement(ext, mask, int(i), int(j))
                if not changed:
                    return np.ones(ext.shape, dtype=bool)
        if not changed:
            return mask
    return np.ones(ext.shape, dtype=bool)


def _two_per_line(ext: Array, mask: Array) -> bool:
    """Give every line of the extended table with one suppressed entry a second one.

    The complement for a row is chosen in a column that already needs one (it settles two
    lines at once), else in a column that already has two, else the smallest non-zero
    entry; columns likewise. This closes a lone small cell with a rectangle of four.
    """
    changed = False
    for _ in range(ext.size):
        again = False
        for grid, values in ((mask, ext), (mask.T, ext.T)):
            for i in range(grid.shape[0]):
                if grid[i].sum() != 1:
                    continue
                pick = _complement(values[i], grid[i], grid.sum(axis=0))
                if pick is not None:
                    grid[i, pick] = True
                    again = changed = True
        if not again:
            break
    return changed


def _complement(values: Array, hidden: Array, crossing: Array) -> int | None:
    """Index of the best entry to add in a line (see :func:`_two_per_line`)."""
    best: tuple[int, bool, float] | None = None
    pick = None
    for j in np.flatnonzero(~hidden):
        need = crossing[j]
        rank = 0 if need == 1 else 1 if need >= 2 else 2
        key = (rank, bool(values[j] == 0), float(values[j]))
        if best is None or key < best:
            best, pick = key, int(j)
    return pick


def _add_complement(ext: Array, mask: Array, i: int, j: int) -> bool:
    """Suppress one more entry in row ``i`` or column ``j`` (the smaller candidate)."""
    row = _smallest(ext[i], ~mask[i])
    col = _smallest(ext[:, j], ~mask[:, j])
    options = []
    if row is not None:
        options.append((ext[i, row] if ext[i, row] > 0 else np.inf, (i, row)))
    if col is not None:
        options.append((ext[col, j] if ext[col, j] > 0 else np.inf, (col, j)))
    if not options:
        return False
    _, (a, b) = min(options, key=lambda o: o[0])
    mask[a, b] = True
    return True
