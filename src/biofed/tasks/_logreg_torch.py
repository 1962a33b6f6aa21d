"""Binary logistic regression as a :class:`~biofed.tasks.TorchTask`, for sample-level DP-SGD."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from biofed.data import Dataset
from biofed.tasks._logreg import LogisticRegression
from biofed.tasks._numpy import check_linear_args
from biofed.tasks._torch import TorchTask


def bce_loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean binary cross-entropy of logits ``outputs`` for ``targets["label"]`` (0/1)."""
    logits = outputs.reshape(-1)
    labels = targets["label"].to(logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


def _linear(num_features: int, init: str) -> torch.nn.Linear:
    layer = torch.nn.Linear(num_features, 1)
    if init == "zeros":
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    return layer


class LogisticRegressionTorchTask(TorchTask):
    """The built-in ``"logistic_regression_torch"`` task: logistic regression in torch.

    The model and metrics of :class:`~biofed.tasks.LogisticRegressionTask` (without its L2
    penalty), trained by :class:`TorchTask` so that local training can run as sample-level
    DP-SGD. Parameters are ``torch.nn.Linear(p, 1)``'s, ``"weight"`` ``(1, p)`` and
    ``"bias"`` ``(1,)``, interchangeable with the numpy task's. Target: ``"label"`` (0/1).

    Parameters
    ----------
    num_features:
        Number of feature columns.
    init:
        ``"zeros"`` (default) or ``"uniform"`` (torch's default for a linear layer).
    device:
        Where to train.

    Privacy notes
    -------------
    The mean cross-entropy is a sum of per-example terms, so DP-SGD's per-example clipping
    bounds the sensitivity of each step's sum to C and the accountant's ε for (z, q, steps)
    is a guarantee (``dp_record_coupling = "independent"``; unlike the Cox loss, see
    :class:`~biofed.tasks.CoxPHTorchTask`).
    """

    #: Each record's loss term depends on that record only: DP-SGD's ε is exact.
    dp_record_coupling: str = "independent"

    def __init__(self, num_features: int, *, init: str = "zeros", device: str = "cpu") -> None:
        check_linear_args(num_features, init)
        self.num_features = num_features
        self.init = init
        self._metrics_model = LogisticRegression(num_features)
        super().__init__(
            functools.partial(_linear, num_features, init),
            bce_loss,
            self._metrics,
            name="logistic_regression_torch",
            primary_metric="roc_auc",
            device=device,
        )

    def _metrics(self, module: torch.nn.Module, data: Dataset) -> dict[str, float]:
        """``"accuracy"``, ``"roc_auc"`` and ``"log_loss"``, as the numpy task reports them."""
        params = {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()}
        return self._metrics_model.metrics(params, data)
