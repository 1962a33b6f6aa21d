"""Linear Cox proportional-hazards model with FLamby's mini-batch partial likelihood."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from biofed.core import Array, ParameterSet
from biofed.data import Dataset
from biofed.tasks._metrics import concordance_index
from biofed.tasks._numpy import NumpyTask, check_linear_args, linear_init


def cox_loss_and_score_grad(score: Array, time: Array, event: Array) -> tuple[float, Array]:
    """FLamby's Cox loss of one batch and its gradient with respect to the scores.

    Examples are ordered by decreasing time (a stable sort, so tied times keep their order);
    example ``i``'s risk set is every example at or before it in that order, and::

        loss = (1/n) Σ_i event_i (log Σ_{j ≤ i} exp(score_j) − score_i)

    (Breslow's partial likelihood, averaged over the batch size, not the event count).

    Parameters
    ----------
    score:
        ``(n,)`` risk scores (higher = higher hazard).
    time, event:
        ``(n,)`` times and 0/1 event indicators.

    Returns
    -------
    tuple[float, Array]
        The loss and its ``(n,)`` gradient with respect to ``score``.
    """
    n = score.shape[0]
    order = (-time).argsort(kind="stable")
    s = score[order]
    e = event[order]
    lse = np.logaddexp.accumulate(s)
    loss = float(e.dot(lse - s)) / n
    # d loss / d s_k = Σ_{i ≥ k} e_i exp(s_k − lse_i) − e_k, the sum taken in log space.
    neg = -lse
    neg[e == 0] = -np.inf
    tail = np.logaddexp.accumulate(neg[::-1])[::-1]
    grad_sorted = np.exp(s + tail)
    grad_sorted -= e
    grad_sorted /= n
    grad = np.empty_like(grad_sorted)
    grad[order] = grad_sorted
    return loss, grad


_ZERO_BIAS = np.zeros(1)
_ZERO_BIAS.flags.writeable = False


class CoxPH:
    """A linear Cox proportional-hazards model, ``risk = X wᵀ + b``.

    Parameters are named like ``torch.nn.Linear(p, 1)``'s, so a PyTorch version of the same
    model is interchangeable: ``"weight"`` ``(1, p)`` and ``"bias"`` ``(1,)`` (the bias
    cancels in the partial likelihood and never moves). Targets: ``"event"`` (0/1) and
    ``"time"``.

    Parameters
    ----------
    num_features:
        ``p``.
    init:
        ``"zeros"`` (default) or ``"uniform"`` (torch's default for a linear layer).
    """

    target_keys: tuple[str, ...] = ("event", "time")

    def __init__(self, num_features: int, *, init: str = "zeros") -> None:
        check_linear_args(num_features, init)
        self.num_features = num_features
        self.init = init

    def __repr__(self) -> str:
        return f"CoxPH(num_features={self.num_features}, init={self.init!r})"

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """Initial ``weight`` and ``bias`` (float32)."""
        return linear_init(self.num_features, rng, self.init)

    def predict(self, params: Mapping[str, Array], X: Array) -> Array:
        """The ``(n,)`` risk scores ``X wᵀ + b`` (higher = higher hazard)."""
        return np.asarray(X.dot(params["weight"][0]) + params["bias"][0], dtype=np.float64)

    def loss_and_grad(
        self, params: Mapping[str, Array], X: Array, targets: Mapping[str, Array]
    ) -> tuple[float, dict[str, Array]]:
        """The batch Cox loss (see :func:`cox_loss_and_score_grad`) and its gradient."""
        score = self.predict(params, X)
        loss, dscore = cox_loss_and_score_grad(score, targets["time"], targets["event"])
        return loss, {"weight": dscore.dot(X)[None, :], "bias": _ZERO_BIAS}

    def metrics(self, params: Mapping[str, Array], data: Dataset) -> dict[str, float]:
        """``"c_index"`` (lifelines' convention, on ``-risk``) and the full-batch ``"cox_loss"``."""
        X = np.asarray(data.features, dtype=np.float64)
        time = np.asarray(data.target("time"), dtype=np.float64)
        event = np.asarray(data.target("event"), dtype=np.float64)
        if time.size == 0:
            return {"c_index": float("nan"), "cox_loss": float("nan")}
        score = self.predict(params, X)
        loss, _ = cox_loss_and_score_grad(score, time, event)
        return {"c_index": concordance_index(time, -score, event), "cox_loss": loss}


class CoxPHTask(NumpyTask):
    """The built-in ``"cox_ph"`` task: :class:`CoxPH` trained by :class:`NumpyTask`.

    Parameters
    ----------
    num_features:
        Number of feature columns.
    init:
        ``"zeros"`` or ``"uniform"``, see :class:`CoxPH`.
    """

    def __init__(self, num_features: int, *, init: str = "zeros") -> None:
        super().__init__(CoxPH(num_features, init=init), name="cox_ph", primary_metric="c_index")
