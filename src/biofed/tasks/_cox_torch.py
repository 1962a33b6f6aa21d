"""The linear Cox model as a :class:`~biofed.tasks.TorchTask`, for sample-level DP-SGD."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from biofed.tasks._cox import CoxPH
from biofed.tasks._linear_torch import LinearTorchTask


def cox_loss(outputs: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """FLamby's batch Cox loss in torch, as :func:`~biofed.tasks._cox.cox_loss_and_score_grad`.

    Examples are ordered by decreasing ``targets["time"]`` (a stable sort); example ``i``'s
    risk set is every example at or before it, and::

        loss = (1/n) Σ_i event_i (log Σ_{j ≤ i} exp(score_j) − score_i)

    Parameters
    ----------
    outputs:
        ``(n, 1)`` or ``(n,)`` risk scores.
    targets:
        ``"time"`` and ``"event"`` (0/1), ``(n,)`` each.
    """
    score = outputs.reshape(-1)
    order = torch.argsort(-targets["time"], stable=True)
    s = score[order]
    event = targets["event"][order].to(s.dtype)
    return (event * (torch.logcumsumexp(s, dim=0) - s)).sum() / s.shape[0]


class CoxPHTorchTask(LinearTorchTask):
    """The built-in ``"cox_ph_torch"`` task: a linear Cox model trained by :class:`TorchTask`.

    The same model, loss and metrics as :class:`~biofed.tasks.CoxPHTask` (FLamby's
    Fed-TCGA-BRCA baseline: a linear layer and the batch Cox partial likelihood), in torch,
    so that local training can run as sample-level DP-SGD (``dp_noise_multiplier``, see
    :class:`~biofed.tasks.LocalTrainingConfig`). Parameters are those of
    ``torch.nn.Linear(p, 1)``, ``"weight"`` ``(1, p)`` and ``"bias"`` ``(1,)``, like
    :class:`~biofed.tasks.CoxPH`'s, so the two tasks' parameters are interchangeable. The
    bias is frozen: it cancels in the partial likelihood, so training it would only spend
    clipping budget and collect noise.

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
    **No sample-level DP guarantee** (``dp_record_coupling = "none"``): a node refuses to
    run this task under sample-level DP-SGD; train
    :class:`~biofed.tasks.PiecewiseExponentialTorchTask` or
    :class:`~biofed.tasks.LogisticHazardTorchTask` instead, whose losses are sums of
    per-record terms (the piecewise-exponential model is the Cox model's discrete-time
    relative, Whitehead 1980).

    Why no bound is declared: the partial likelihood couples the examples of a batch. Each
    example's term depends on its risk set, the batch's examples with later times, so
    example ``i``'s share of the summed gradient is ``(−e_i + Σ_k e_k p_ik) x_i`` with
    ``p_ik`` its weight in event ``k``'s risk set. DP-SGD clips each share to C, but adding
    or removing a record ``r`` also changes ``p_ik`` for every ``i`` in a risk set holding
    ``r``, and so every other share of its batch. Each clipped share has norm ≤ C, so the
    change is at most ``(2b + 1)·C`` for ``b`` other examples, and it comes close to that:
    a record with the longest time enters every risk set, and with features of large norm
    every share is clipped, so each moves by up to 2C (the test
    ``tests/tasks/test_dp_sensitivity.py`` finds changes far above C). With Poisson
    sampling ``b`` is not bounded by the expected batch size (it can reach the site's N),
    so the only bound that holds for every batch is ``(2N + 1)·C``: noise calibrated to it
    leaves nothing to learn, and the accountant's ε for (z, q, steps) with sensitivity C
    would be a heuristic figure, not a guarantee.
    """

    #: The partial likelihood couples a batch's records; no usable bound (see above).
    dp_record_coupling: str = "none"

    def __init__(self, num_features: int, *, init: str = "zeros", device: str = "cpu") -> None:
        super().__init__(
            num_features,
            init=init,
            device=device,
            loss=cox_loss,
            metrics_model=CoxPH(num_features),
            name="cox_ph_torch",
            primary_metric="c_index",
            train_bias=False,  # it cancels in the partial likelihood
        )
