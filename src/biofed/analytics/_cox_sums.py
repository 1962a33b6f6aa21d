"""The maths of federated Cox regression: risk-set sums at a site, the partial likelihood
from summed risk-set sums at the coordinator.

Why our own code: lifelines and statsmodels fit Cox models on one table in memory; neither
splits the partial likelihood into per-site sums, which is the whole point here. The
formulas are the textbook ones (Cox 1972; Breslow 1974; Efron 1977; Therneau &
Grambsch, *Modeling Survival Data*, 2000, ch. 3), written to reproduce lifelines'
``CoxPHFitter`` (which uses Efron's ties) and statsmodels' ``PHReg`` (Breslow).

For agreed event times ``t_1 < … < t_T`` every site sends, per time, the sums over its
rows at risk (``time >= t_j``) of ``φ = exp(xβ)``, ``φx`` and ``φxxᵀ`` (``s0``, ``s1``,
``s2``; ``xxᵀ`` is symmetric, so only its upper triangle row by row: :func:`unpack`), the
same sums over its rows with an event at ``t_j`` (``t0``, ``t1``, ``t2``, Efron only), the
event count ``d_j``, and once the sum of ``x`` over its events (``xe``). Risk sets span
the sites, so only the *sums* of these enter the log partial likelihood;
:func:`partial_likelihood` turns them into the log-likelihood, gradient and Hessian."""

from __future__ import annotations

import numpy as np

from biofed.core import Array, DataError


def packed(p: int) -> int:
    """Values in the upper triangle of a ``p × p`` matrix."""
    return p * (p + 1) // 2


def unpack(values: Array, p: int) -> Array:
    """The symmetric ``p × p`` matrix whose upper triangle (row by row) is ``values``."""
    out = np.zeros((p, p))
    out[np.triu_indices(p)] = values
    return out + np.triu(out, 1).T


def risk_index(times: Array, events: Array, grid: Array, *, binned: bool) -> Array:
    """Per row, ``L``: how many of the agreed times it is at risk at (rows are at risk at
    ``grid[0:L]``); an event row's event time is ``grid[L - 1]``.

    ``binned``: a row's time counts as the first grid point at or after it (the ``grid``
    option); otherwise every event time must be a grid point (the union of the sites'
    event times).

    Raises
    ------
    DataError
        If an event lies beyond the grid's last point, or (unbinned) an event time is not
        one of the agreed times (the site's data changed between passes).
    """
    t = np.asarray(times, dtype=np.float64)
    ev = np.asarray(events, dtype=bool)
    if len(grid) == 0:
        if np.any(ev):
            raise DataError("an event time is not one of the agreed event times")
        return np.zeros(len(t), dtype=np.int64)
    if binned:
        first = np.searchsorted(grid, t, side="left")
        if np.any(ev & (first >= len(grid))):
            raise DataError("an event time lies beyond the time grid's last point; extend it")
        return np.minimum(first + 1, len(grid)).astype(np.int64)
    index = np.searchsorted(grid, t, side="right").astype(np.int64)
    hit = (index > 0) & (grid[np.maximum(index - 1, 0)] == t)
    if np.any(ev & ~hit):
        raise DataError("an event time is not one of the agreed event times")
    return index


def _grouped_sums(x: Array, phi: Array, group: Array, size: int) -> tuple[Array, Array, Array]:
    """Per group ``g`` in ``[0, size)``: Σφ, Σφx and Σφxxᵀ (packed)."""
    p = x.shape[1]
    upper = np.triu_indices(p)
    b0 = np.bincount(group, weights=phi, minlength=size).astype(np.float64)
    b1 = np.zeros((size, p))
    np.add.at(b1, group, phi[:, None] * x)
    b2 = np.zeros((size, packed(p)))
    if len(group):
        order = np.argsort(group, kind="stable")
        sorted_groups = group[order]
        starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for s, e in zip(starts, ends, strict=True):
            rows = order[s:e]
            xw = x[rows] * phi[rows, None]
            b2[sorted_groups[s]] = (xw.T @ x[rows])[upper]
    return b0, b1, b2


def risk_sums(
    x: Array, index: Array, events: Array, beta: Array, size: int, *, efron: bool
) -> dict[str, Array]:
    """One site's per-time sums on the ``size`` agreed times (see the module docstring).

    ``x`` is the site's design matrix centred on the pooled means, ``index`` from
    :func:`risk_index`, ``beta`` on ``x``'s scale.

    Raises
    ------
    DataError
        If ``exp(xβ)`` overflows (a diverging Newton step).
    """
    ev = np.asarray(events, dtype=bool)
    with np.errstate(over="ignore", invalid="ignore"):
        phi = np.exp(x @ beta)
    if not np.all(np.isfinite(phi)):
        raise DataError("exp(xβ) overflows at this Newton step (the fit diverges)")
    b0, b1, b2 = _grouped_sums(x, phi, index, size + 1)
    # at risk at time j: rows with L > j → reverse cumulative sums over L = j+1 … size
    s0 = np.cumsum(b0[::-1])[::-1][1:]
    s1 = np.cumsum(b1[::-1], axis=0)[::-1][1:]
    s2 = np.cumsum(b2[::-1], axis=0)[::-1][1:]
    tie = index[ev] - 1
    out = {
        "s0": s0,
        "s1": s1,
        "s2": s2,
        "d": np.bincount(tie, minlength=size).astype(np.float64),
    }
    if efron:
        t0, t1, t2 = _grouped_sums(x[ev], phi[ev], tie, size)
        out |= {"t0": t0, "t1": t1, "t2": t2}
    return out


def partial_likelihood(
    sums: dict[str, Array], xe: Array, beta: Array, *, efron: bool
) -> tuple[float, Array, Array]:
    """Log partial likelihood, gradient and Hessian (on ``xe``'s and ``beta``'s scale)
    from summed per-time sums.

    Efron's ties: at a time with ``d`` events the risk set loses ``k/d`` of the tied
    events' sums for the ``k``-th of them (``k = 0 … d−1``); Breslow's keeps it whole.

    Raises
    ------
    DataError
        If a risk set's sum is not positive (an event time no site is at risk at).
    """
    d = np.rint(sums["d"]).astype(np.int64)
    p = len(beta)
    jj = np.repeat(np.arange(len(d)), np.maximum(d, 0))
    if efron:
        ff = np.concatenate([np.arange(k) / k for k in d if k > 0] or [np.zeros(0)])
        den = sums["s0"][jj] - ff * sums["t0"][jj]
        num = sums["s1"][jj] - ff[:, None] * sums["t1"][jj]
    else:
        ff = np.zeros(len(jj))
        den = sums["s0"][jj]
        num = sums["s1"][jj]
    if np.any(~(den > 0)):
        raise DataError("a risk set is empty at an event time (the sites' sums disagree)")
    a = num / den[:, None]
    loglik = float(xe @ beta - np.log(den).sum())
    grad = xe - a.sum(axis=0)
    w1 = np.bincount(jj, weights=1.0 / den, minlength=len(d))
    second = w1 @ sums["s2"] if len(d) else np.zeros(packed(p))
    if efron and len(d):
        w2 = np.bincount(jj, weights=ff / den, minlength=len(d))
        second = second - w2 @ sums["t2"]
    hess = a.T @ a - unpack(second, p)
    return loglik, grad, (hess + hess.T) / 2
