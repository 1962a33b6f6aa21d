"""The design matrix of a regression, built the same way at every site.

Numeric covariates enter as they are; a categorical covariate enters as indicator columns
for its agreed levels, the first level the reference (``levels`` travel in the request,
fixed by the coordinator from a first pass of level counts, so every site builds the same
columns in the same order). Rows with a missing covariate are left out (complete cases);
a value outside the agreed levels is an error, never a silent zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from biofed.analytics._table import QueryTable
from biofed.core import Array, DataError


def design_names(covariates: Sequence[str], levels: Mapping[str, Sequence[str]]) -> list[str]:
    """Column names of the design matrix: ``name`` or ``name=level`` per indicator."""
    names: list[str] = []
    for cov in covariates:
        if cov in levels:
            names.extend(f"{cov}={lv}" for lv in list(levels[cov])[1:])
        else:
            names.append(cov)
    return names


def complete_rows(table: QueryTable, cohort: Array, columns: Sequence[str]) -> Array:
    """``cohort`` without rows where any of ``columns`` is missing."""
    mask = np.asarray(cohort, dtype=bool).copy()
    for name in columns:
        mask &= ~table.missing(name)
    return mask


def design_matrix(
    table: QueryTable,
    rows: Array,
    covariates: Sequence[str],
    levels: Mapping[str, Sequence[str]],
) -> Array:
    """``(n_rows, p)`` float64 design matrix of ``covariates`` on the ``rows`` mask.

    Raises
    ------
    DataError
        If a categorical covariate has no agreed levels, a numeric one is given levels, or
        a row holds a level outside the agreed ones.
    """
    parts: list[Array] = []
    for cov in covariates:
        col = table.column(cov)[rows]
        if table.kinds[cov] == "categorical":
            if cov not in levels:
                raise DataError(f"categorical covariate {cov!r} has no agreed levels")
            agreed = [str(v) for v in levels[cov]]
            known = set(agreed)
            if any(str(v) not in known for v in col):
                raise DataError(f"covariate {cov!r} has a level outside the agreed ones")
            for lv in agreed[1:]:
                parts.append(np.asarray([str(v) == lv for v in col], dtype=np.float64))
        else:
            if cov in levels:
                raise DataError(f"numeric covariate {cov!r} was given levels")
            parts.append(np.asarray(col, dtype=np.float64))
    n = int(np.count_nonzero(rows))
    if not parts:
        return np.zeros((n, 0))
    return np.column_stack(parts)


def rare_binary(column: Array, min_cell: int) -> bool:
    """Whether ``column`` takes exactly two values, one of them in fewer than ``min_cell``
    rows (DataSHIELD's ``glmDS1`` check of dichotomous columns against ``nfilter.tab``):
    X'X's row of such a column is the sum over those few rows, so glm and cox refuse it."""
    values, counts = np.unique(column, return_counts=True)
    return len(values) == 2 and int(counts.min()) < min_cell
