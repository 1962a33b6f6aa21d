"""Binary logistic regression as a :class:`~biofed.tasks.TorchTask`, for sample-level DP-SGD."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from biofed.tasks._linear_torch import LinearTorchTask
from biofed.tasks._logreg import LogisticRegression


def bce_loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean binary cross-entropy of logits ``outputs`` for ``targets["label"]`` (0/1)."""
    logits = outputs.reshape(-1)
    labels = targets["label"].to(logits.dtype)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)


class LogisticRegressionTorchTask(LinearTorchTask):
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
        super().__init__(
            num_features,
            init=init,
            device=device,
            loss=bce_loss,
            metrics_model=LogisticRegression(num_features),
            name="logistic_regression_torch",
            primary_metric="roc_auc",
        )
