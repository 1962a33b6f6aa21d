"""Binary logistic regression with an optional L2 penalty."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from biofed.core import Array, ConfigurationError, ParameterSet
from biofed.core.checks import check_float
from biofed.data import Dataset
from biofed.tasks._metrics import roc_auc
from biofed.tasks._numpy import NumpyTask, check_linear_args, linear_init


def _sigmoid(z: Array) -> Array:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def _bce(z: Array, y: Array) -> float:
    """Mean binary cross-entropy of logits ``z`` for labels ``y``, without overflow."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


#: The metrics a logistic regression task can report as its primary metric.
LOGISTIC_METRICS = ("roc_auc", "accuracy")


def check_logistic_metric(metric: str) -> str:
    """``metric`` if a logistic task can make it its primary metric, else a clear error."""
    if metric not in LOGISTIC_METRICS:
        raise ConfigurationError(
            f"metric must be one of {', '.join(LOGISTIC_METRICS)} for logistic regression, "
            f"got {metric!r}"
        )
    return metric


class LogisticRegression:
    """``P(label = 1 | x) = σ(x wᵀ + b)``, fitted by mean binary cross-entropy.

    Parameters are named like ``torch.nn.Linear(p, 1)``'s: ``"weight"`` ``(1, p)`` and
    ``"bias"`` ``(1,)``. Target: ``"label"`` (0/1).

    Parameters
    ----------
    num_features:
        ``p``.
    l2:
        Adds ``l2/2 ‖w‖²`` to the loss (the bias is not penalised); ≥ 0.
    init:
        ``"zeros"`` (default) or ``"uniform"`` (torch's default for a linear layer).
    """

    target_keys: tuple[str, ...] = ("label",)

    def __init__(self, num_features: int, *, l2: float = 0.0, init: str = "zeros") -> None:
        check_linear_args(num_features, init)
        self.num_features = num_features
        self.l2 = check_float(l2, "l2", minimum=0)
        self.init = init

    def __repr__(self) -> str:
        return f"LogisticRegression(num_features={self.num_features}, l2={self.l2})"

    def init_parameters(self, rng: np.random.Generator) -> ParameterSet:
        """Initial ``weight`` and ``bias`` (float32)."""
        return linear_init(self.num_features, rng, self.init)

    def predict(self, params: Mapping[str, Array], X: Array) -> Array:
        """The ``(n,)`` logits ``X wᵀ + b``."""
        return np.asarray(X @ params["weight"][0] + params["bias"][0], dtype=np.float64)

    def loss_and_grad(
        self, params: Mapping[str, Array], X: Array, targets: Mapping[str, Array]
    ) -> tuple[float, dict[str, Array]]:
        """Mean cross-entropy (plus the L2 term) of the batch and its gradient."""
        z = self.predict(params, X)
        y = targets["label"]
        loss = _bce(z, y)
        dz = (_sigmoid(z) - y) / z.shape[0]
        dw = dz @ X
        if self.l2:
            w = params["weight"][0]
            loss += 0.5 * self.l2 * float(w @ w)
            dw = dw + self.l2 * w
        return loss, {"weight": dw[None, :], "bias": np.array([dz.sum()])}

    def metrics(self, params: Mapping[str, Array], data: Dataset) -> dict[str, float]:
        """``"accuracy"`` (threshold 0.5), ``"roc_auc"`` and ``"log_loss"`` (no L2 term)."""
        y = np.asarray(data.target("label"), dtype=np.float64)
        if y.size == 0:
            return {"accuracy": float("nan"), "roc_auc": float("nan"), "log_loss": float("nan")}
        z = self.predict(params, np.asarray(data.features, dtype=np.float64))
        return {
            "accuracy": float(np.mean((z > 0) == (y == 1))),
            "roc_auc": roc_auc(y, z),
            "log_loss": _bce(z, y),
        }


class LogisticRegressionTask(NumpyTask):
    """The built-in ``"logistic_regression"`` task: :class:`LogisticRegression` on
    :class:`NumpyTask`.

    Parameters
    ----------
    num_features:
        Number of feature columns.
    l2:
        L2 penalty on the weights, see :class:`LogisticRegression`.
    init:
        ``"zeros"`` or ``"uniform"``.
    metric:
        The primary metric: ``"roc_auc"`` (default) or ``"accuracy"`` (threshold 0.5). Every
        evaluation reports both, with ``"log_loss"``.
    """

    #: The loss is a mean of per-record terms plus a data-independent penalty.
    dp_record_coupling = "independent"

    def __init__(
        self, num_features: int, *, l2: float = 0.0, init: str = "zeros", metric: str = "roc_auc"
    ) -> None:
        super().__init__(
            LogisticRegression(num_features, l2=l2, init=init),
            name="logistic_regression",
            primary_metric=check_logistic_metric(metric),
        )
