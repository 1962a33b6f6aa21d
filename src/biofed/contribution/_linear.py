"""A fast, exact value function for linear built-in models: :class:`LinearScore`.

GTG-Shapley and TMC spend hundreds of coalition evaluations per round, and through a task's
``evaluate`` each one builds a :class:`~biofed.core.ParameterSet`, validates it, computes the
loss beside the metric and, for the Cox task, the C-index by an ``O(n²)`` pair mask. For a
model whose prediction is linear, ``X wᵀ + b`` with parameters ``weight (1, p)`` and
``bias (1,)`` (the built-in ``cox_ph`` and ``logistic_regression``), the metric needs only
that vector, and the C-index's comparable pairs depend only on the validation data's times
and events: :class:`LinearScore` finds them once and scores a prediction with one vectorised
comparison over the pairs.

Exactness: the coalition's parameters are built as :class:`~biofed.contribution.RoundGame`
builds them (float64 step, cast to the global model's dtype), the prediction is computed as
the task's ``predict`` computes it (float64, ``X · w + b``), and the metric counts the same
pairs with the same arithmetic as :func:`~biofed.tasks.concordance_index` (lifelines'
convention, on ``-risk``), so a coalition's value is the value the task's ``evaluate``
gives, to the last bit (tested on Fed-TCGA-BRCA). ``roc_auc`` and ``accuracy`` call the
tasks' own functions on the prediction.

Own code, not a library's: lifelines and scikit-survival compute one C-index per call from
scratch; the point here is to keep the pair set across hundreds of calls.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.tasks import concordance_index, roc_auc

#: Above this many candidate pairs (events × rows) the pairs are not kept and each call
#: runs :func:`~biofed.tasks.concordance_index` (chunked) instead: 64 Mi pairs of indices
#: would take 1 GiB.
MAX_KEPT_PAIRS = 1 << 26

#: Metrics a :class:`LinearScore` computes (the built-in linear tasks' primary metrics).
LINEAR_METRICS = ("accuracy", "c_index", "roc_auc")


class LinearScore:
    """``value(parameters) -> float``: a metric of the linear prediction ``X wᵀ + b``.

    Parameters
    ----------
    features:
        ``(n, p)`` validation features.
    metric:
        ``"c_index"`` (needs ``time`` and ``event``; risk = the prediction, higher = shorter
        survival, as the Cox task), ``"roc_auc"`` or ``"accuracy"`` (threshold 0 on the
        logit; both need ``label``).
    time, event, label:
        ``(n,)`` targets.

    Notes
    -----
    Calling it on parameters other than ``weight (1, p)`` and ``bias (1,)`` raises
    :class:`~biofed.core.ConfigurationError`. The result is NaN where the metric is
    undefined (no comparable pair, one class), like the tasks' ``evaluate``.
    """

    __slots__ = (
        "_event",
        "_event_rows",
        "_label",
        "_later_rows",
        "_pairs",
        "_time",
        "features",
        "metric",
    )

    def __init__(
        self,
        features: npt.ArrayLike,
        metric: str,
        *,
        time: npt.ArrayLike | None = None,
        event: npt.ArrayLike | None = None,
        label: npt.ArrayLike | None = None,
    ) -> None:
        if metric not in LINEAR_METRICS:
            raise ConfigurationError(
                f"contribution: LinearScore metric must be one of {LINEAR_METRICS}, got {metric!r}"
            )
        self.features: Array = np.asarray(features, dtype=np.float64)
        if self.features.ndim != 2:
            raise ConfigurationError("contribution: LinearScore features must be (n, p)")
        self.metric = metric
        n = self.features.shape[0]
        self._event_rows: Array = np.zeros(0, dtype=np.intp)
        self._later_rows: Array = np.zeros(0, dtype=np.intp)
        self._label: Array = np.zeros(0)
        self._pairs = 0
        self._time: Array = np.zeros(0)
        self._event: Array = np.zeros(0)
        if metric == "c_index":
            if time is None or event is None:
                raise ConfigurationError("contribution: a c_index LinearScore needs time and event")
            t = np.asarray(time, dtype=np.float64).ravel()
            e = np.asarray(event, dtype=np.float64).ravel() != 0
            if t.shape != (n,) or e.shape != (n,):
                raise ConfigurationError(
                    f"contribution: time and event must have {n} values, one per row"
                )
            # concordance_index's comparable pairs: i had the event, j left later, or at
            # the same time censored.
            self._time, self._event = t, e.astype(np.float64)
            died = np.flatnonzero(e)
            if died.size * n > MAX_KEPT_PAIRS:
                self._pairs = -1  # too many to keep: concordance_index per call
                return
            comparable = (t[None, :] > t[died, None]) | (
                (t[None, :] == t[died, None]) & ~e[None, :]
            )
            rows, cols = np.nonzero(comparable)
            self._event_rows = died[rows]
            self._later_rows = cols.astype(np.intp)
            self._pairs = int(rows.size)
        else:
            if label is None:
                raise ConfigurationError(f"contribution: a {metric} LinearScore needs label")
            self._label = np.asarray(label, dtype=np.float64).ravel()
            if self._label.shape != (n,):
                raise ConfigurationError(f"contribution: label must have {n} values, one per row")

    def __repr__(self) -> str:
        return f"LinearScore(metric={self.metric!r}, rows={self.features.shape[0]})"

    @property
    def num_features(self) -> int:
        """``p``."""
        return int(self.features.shape[1])

    def fits(self, x: ParameterSet) -> bool:
        """Whether ``x`` is the linear layout this scores: ``weight (1, p)``, ``bias (1,)``,
        floating point."""
        return (
            list(x) == ["weight", "bias"]
            and x["weight"].shape == (1, self.num_features)
            and x["bias"].shape == (1,)
            and all(np.issubdtype(a.dtype, np.floating) for a in x.values())
        )

    def predict(self, weight: Array, bias: float) -> Array:
        """``X · weight + bias`` in float64, as the built-in linear tasks' ``predict``."""
        return np.asarray(self.features.dot(weight) + bias, dtype=np.float64)

    def of_prediction(self, prediction: Array) -> float:
        """The metric of an ``(n,)`` prediction (risk for ``c_index``, logit otherwise)."""
        if prediction.shape[0] == 0:
            return math.nan
        if self.metric == "c_index":
            if self._pairs == -1:
                return concordance_index(self._time, -prediction, self._event)
            if self._pairs == 0:
                return math.nan
            ri = prediction[self._event_rows]
            rj = prediction[self._later_rows]
            # concordant on -risk: -r_j > -r_i ⇔ r_i > r_j (negation is exact).
            correct = int(np.count_nonzero(ri > rj))
            tied = int(np.count_nonzero(ri == rj))
            return (correct + 0.5 * tied) / self._pairs
        if self.metric == "roc_auc":
            return roc_auc(self._label, prediction)
        return float(np.mean((prediction > 0) == (self._label == 1)))

    def __call__(self, parameters: ParameterSet) -> float:
        if not isinstance(parameters, ParameterSet) or not self.fits(parameters):
            raise ConfigurationError(
                "contribution: LinearScore needs parameters weight (1, "
                f"{self.num_features}) and bias (1,)"
            )
        weight = parameters["weight"].astype(np.float64)[0]
        bias = parameters["bias"].astype(np.float64)[0]
        return self.of_prediction(self.predict(weight, bias))
