"""Evaluation metrics shared by the built-in tasks: C-index, ROC AUC, integrated Brier score."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from biofed.core import Array, DataError

# Upper bound on the number of pair comparisons held in memory at once by the C-index.
_PAIR_CHUNK = 1 << 21


def _as_vector(values: npt.ArrayLike, *, what: str, dtype: Any = np.float64) -> Array:
    array = np.asarray(values, dtype=dtype).ravel()
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise DataError(f"{what} contains NaN; drop or impute those examples first")
    return array


def concordance_index(
    time: npt.ArrayLike, score: npt.ArrayLike, event: npt.ArrayLike | None = None
) -> float:
    """Harrell's concordance index, with the conventions of ``lifelines.utils.concordance_index``.

    A higher ``score`` predicts a *longer* survival (pass ``-risk`` for a risk score). A pair
    ``(i, j)`` is comparable when ``i`` had the event and ``j`` left the study later
    (``time[j] > time[i]``), or at the same time without an event. Comparable pairs count 1
    when ``score[j] > score[i]``, 0.5 when the scores tie and 0 otherwise.

    Parameters
    ----------
    time:
        ``(n,)`` event or censoring times.
    score:
        ``(n,)`` predicted scores (higher = longer survival).
    event:
        ``(n,)`` 1 where the event was observed, 0 where censored; all observed if ``None``.

    Returns
    -------
    float
        The C-index in [0, 1], or NaN when there is no comparable pair.

    Raises
    ------
    DataError
        If the arrays differ in length or contain NaN.
    """
    t = _as_vector(time, what="time")
    s = _as_vector(score, what="score")
    e = np.ones(t.shape, dtype=bool) if event is None else _as_vector(event, what="event") != 0
    if not t.shape == s.shape == e.shape:
        raise DataError(
            f"time, score and event must have the same length, got {t.size}, {s.size}, {e.size}"
        )
    died = np.flatnonzero(e)
    if died.size == 0:
        return float("nan")
    t_row, s_row, censored_row = t[None, :], s[None, :], ~e[None, :]
    chunk = max(1, _PAIR_CHUNK // max(1, t.size))
    pairs = correct = tied = 0
    for start in range(0, died.size, chunk):
        rows = died[start : start + chunk]
        ti, si = t[rows, None], s[rows, None]
        comparable = (t_row > ti) | ((t_row == ti) & censored_row)
        pairs += int(np.count_nonzero(comparable))
        correct += int(np.count_nonzero(comparable & (s_row > si)))
        tied += int(np.count_nonzero(comparable & (s_row == si)))
    if pairs == 0:
        return float("nan")
    return (correct + 0.5 * tied) / pairs


def _average_ranks(values: Array) -> Array:
    """1-based ranks of ``values``, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    return (upper - 0.5 * (counts - 1))[inverse.ravel()]


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (the Mann–Whitney statistic; tied scores count one half).

    Parameters
    ----------
    labels:
        ``(n,)`` binary labels (0/1 or bool); 1 is the positive class.
    scores:
        ``(n,)`` scores, higher meaning more likely positive.

    Returns
    -------
    float
        The AUC in [0, 1], or NaN when only one class is present.

    Raises
    ------
    DataError
        If the arrays differ in length, a label is not 0 or 1, or a score is NaN.
    """
    y = _as_vector(labels, what="labels")
    s = _as_vector(scores, what="scores")
    if y.shape != s.shape:
        raise DataError(f"labels and scores must have the same length, got {y.size} and {s.size}")
    positive = y == 1
    if not np.all(positive | (y == 0)):
        raise DataError("labels must be 0 or 1; encode the positive class as 1")
    n_pos = int(np.count_nonzero(positive))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(_average_ranks(s)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def censoring_survival(time: Array, event: Array, at: Array, *, left: bool = False) -> Array:
    """The Kaplan–Meier estimate ``G`` of the censoring distribution's survival, at ``at``.

    Censorings are the "events" (``event == 0``); a censoring tied with an event is counted
    after it (the usual convention: the event's record was still under observation).
    ``left=True`` gives the left limits ``G(t−)``.
    """
    times = np.unique(time)
    at_risk = time.size - np.searchsorted(np.sort(time), times, side="left")
    censored = np.bincount(np.searchsorted(times, time[event == 0]), minlength=times.size).astype(
        np.float64
    )
    steps = np.cumprod(1.0 - censored / at_risk)
    index = np.searchsorted(times, at, side="left" if left else "right")
    return np.concatenate(([1.0], steps))[index]


def integrated_brier_score(
    time: npt.ArrayLike, event: npt.ArrayLike, survival: npt.ArrayLike, grid: npt.ArrayLike
) -> float:
    """The integrated Brier score with inverse probability of censoring weights (IPCW).

    Graf, Schmoor, Sauerbrei and Schumacher 1999, "Assessment and comparison of prognostic
    classification schemes for survival data": at each time ``t`` of ``grid``::

        BS(t) = (1/n) Σ_i [ S_i(t)² · 1(T_i ≤ t, δ_i = 1) / G(T_i−)
                            + (1 − S_i(t))² · 1(T_i > t) / G(t) ]

    with ``G`` the Kaplan–Meier estimate of the censoring survival from the same records
    (:func:`censoring_survival`), and the integral is the trapezoidal rule over ``grid``
    divided by its length (as ``sksurv.metrics.integrated_brier_score``). Records whose
    weight would divide by ``G = 0`` contribute nothing. Lower is better; a model that
    predicts 0.5 everywhere scores 0.25.

    Parameters
    ----------
    time, event:
        ``(n,)`` follow-up times and event indicators (1 event, 0 censored).
    survival:
        ``(n, T)`` predicted ``S_i(t)`` at each grid time.
    grid:
        ``(T,)`` increasing times, at least two.

    Raises
    ------
    DataError
        On mismatched shapes, NaN, or a grid that is not increasing with two or more points.
    """
    t = _as_vector(time, what="time")
    e = _as_vector(event, what="event") != 0
    g = _as_vector(grid, what="grid")
    s = np.asarray(survival, dtype=np.float64)
    if t.shape != e.shape or s.shape != (t.size, g.size):
        raise DataError(
            f"survival must be (n, T) = ({t.size}, {g.size}) for {t.size} records and "
            f"{g.size} grid times, got {s.shape} (event: {e.size})"
        )
    if np.isnan(s).any():
        raise DataError("survival contains NaN")
    if g.size < 2 or not np.all(np.diff(g) > 0):
        raise DataError("grid must hold two or more increasing times")
    if t.size == 0:
        return float("nan")
    g_at_event = censoring_survival(t, e, t, left=True)  # (n,)
    g_at_grid = censoring_survival(t, e, g)  # (T,)
    with np.errstate(divide="ignore"):
        w_event = np.where(g_at_event > 0, 1.0 / g_at_event, 0.0)
        w_alive = np.where(g_at_grid > 0, 1.0 / g_at_grid, 0.0)
    died_by = (t[:, None] <= g[None, :]) & e[:, None]
    alive = t[:, None] > g[None, :]
    scores = (s**2 * died_by * w_event[:, None] + (1.0 - s) ** 2 * alive * w_alive[None, :]).mean(
        axis=0
    )
    area = float(np.sum(np.diff(g) * (scores[1:] + scores[:-1]) / 2.0))
    return area / float(g[-1] - g[0])
