"""Evaluation metrics shared by the built-in tasks: Harrell's C-index and ROC AUC."""

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
