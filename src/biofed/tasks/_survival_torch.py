"""Discrete-time survival models whose likelihood is a sum of per-record terms.

Two proportional models on intervals fixed by the job, ``0 = τ_0 < τ_1 < … < τ_K`` with
``τ_k = k · max_time / K``: a record with follow-up time ``t`` and event indicator ``e``
falls in interval ``j`` (``τ_j < t ≤ τ_{j+1}``, or the first one at ``t = 0``) and was at
risk in intervals ``0 … j``. A time beyond ``max_time`` counts as censored at ``max_time``.
Both models share the linear predictor ``η = x·w`` and one baseline value ``α_k`` per
interval:

- **logistic hazard** (Cox 1972's discrete model; Brown 1975; pycox's ``LogisticHazard``,
  Kvamme & Borgan 2019): the hazard of interval ``k`` is ``h_k = σ(α_k + η)``, and the
  record's log-likelihood is that of the Bernoulli outcomes of its intervals, 0 for every
  interval before ``j`` and ``e`` in interval ``j``.
- **piecewise exponential** (Holford 1980; Laird & Olivier 1981, the Poisson form): the
  hazard is constant within an interval, ``λ_k = exp(α_k + η)`` per interval width, and the
  record's log-likelihood is ``Σ_{k ≤ j} (d_k (α_k + η) − λ_k E_k)``, with ``E_k`` the
  fraction of interval ``k`` it was followed for and ``d_k = e·1[k = j]``. With fine
  intervals its estimate of ``w`` tends to Cox's (Whitehead 1980).

Neither likelihood has risk sets: each record's term depends on its own features, time and
event only, so DP-SGD's per-example clipping bounds one record's influence on a step's
clipped sum by C and the accountant's ε is a guarantee (``dp_record_coupling =
"independent"``). The interval boundaries come from the job, never from a site's data: cut
points computed from a site's event times would be a release ε does not cover.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch

from biofed.core import Array, DataError
from biofed.data import Dataset
from biofed.tasks._linear_torch import float64_parameters
from biofed.tasks._metrics import concordance_index, integrated_brier_score
from biofed.tasks._survival import DEFAULT_MAX_TIME, DEFAULT_NUM_INTERVALS, check_survival_args
from biofed.tasks._torch import TorchTask

#: The integrated Brier score's grid: this many points up to the horizon.
_IBS_POINTS = 100


class _DiscreteSurvivalNet(torch.nn.Module):
    """``(n, K)`` interval scores ``α_k + x·w``.

    The baseline is a bias-free ``Linear(1, K)`` applied to a column of ones, so that Opacus
    computes its per-example gradients like any linear layer's.
    """

    def __init__(self, num_features: int, num_intervals: int, init: str) -> None:
        super().__init__()
        self.baseline = torch.nn.Linear(1, num_intervals, bias=False)
        self.linear = torch.nn.Linear(num_features, 1, bias=False)
        if init == "zeros":
            torch.nn.init.zeros_(self.baseline.weight)
            torch.nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones((x.shape[0], 1))
        out: torch.Tensor = self.baseline(ones) + self.linear(x)
        return out


def interval_targets(
    time: torch.Tensor, event: torch.Tensor, cuts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each record's at-risk mask, event indicator and exposure per interval, ``(n, K)`` each.

    ``cuts`` holds ``τ_0 = 0 … τ_K``. Exposure is the fraction of each interval the record
    was followed for (1 for the intervals before its own, ``(t − τ_j)/(τ_{j+1} − τ_j)`` in
    its own, 0 after). A time beyond ``τ_K`` is censored at ``τ_K``.
    """
    dtype = cuts.dtype
    t = time.to(dtype).reshape(-1, 1)
    e = event.to(dtype).reshape(-1, 1)
    upper = cuts[-1]
    late = t > upper
    t = torch.clamp(t, min=0.0, max=float(upper))
    e = torch.where(late, torch.zeros_like(e), e)
    lo, hi = cuts[:-1].reshape(1, -1), cuts[1:].reshape(1, -1)
    exposure = torch.clamp((t - lo) / (hi - lo), min=0.0, max=1.0)
    # interval j holds t when τ_j < t ≤ τ_{j+1}; t = 0 falls in the first interval
    index = torch.clamp(
        torch.searchsorted(cuts[1:], t.reshape(-1), right=False), max=len(lo[0]) - 1
    )
    k = torch.arange(lo.shape[1], device=cuts.device).reshape(1, -1)
    at_risk = (k <= index.reshape(-1, 1)).to(dtype)
    died = (k == index.reshape(-1, 1)).to(dtype) * e
    return at_risk, died, exposure * at_risk


def logistic_hazard_loss(
    outputs: torch.Tensor, targets: Mapping[str, torch.Tensor], cuts: torch.Tensor
) -> torch.Tensor:
    """Mean over records of each record's negative Bernoulli log-likelihood over its intervals."""
    at_risk, died, _ = interval_targets(targets["time"], targets["event"], cuts.to(outputs.dtype))
    terms = torch.nn.functional.binary_cross_entropy_with_logits(outputs, died, reduction="none")
    return (terms * at_risk).sum(dim=1).mean()


def pem_loss(
    outputs: torch.Tensor, targets: Mapping[str, torch.Tensor], cuts: torch.Tensor
) -> torch.Tensor:
    """Mean over records of each record's negative piecewise-exponential log-likelihood."""
    at_risk, died, exposure = interval_targets(
        targets["time"], targets["event"], cuts.to(outputs.dtype)
    )
    terms = exposure * torch.exp(outputs) - died * outputs
    return (terms * at_risk).sum(dim=1).mean()


class _DiscreteSurvivalTorchTask(TorchTask):
    """What the two models share: intervals, parameters, metrics and the DP declaration."""

    #: Each record's loss term depends on that record only: DP-SGD's ε is exact.
    dp_record_coupling: str = "independent"
    _task_name: ClassVar[str]

    def __init__(
        self,
        num_features: int,
        *,
        num_intervals: int = DEFAULT_NUM_INTERVALS,
        max_time: float = DEFAULT_MAX_TIME,
        init: str = "zeros",
        device: str = "cpu",
    ) -> None:
        check_survival_args(num_features, num_intervals, max_time, init)
        self.num_features = num_features
        self.num_intervals = num_intervals
        self.max_time = float(max_time)
        self.init = init
        self.cuts: Array = np.linspace(0.0, self.max_time, num_intervals + 1)
        cuts = torch.from_numpy(self.cuts)
        super().__init__(
            functools.partial(_DiscreteSurvivalNet, num_features, num_intervals, init),
            functools.partial(type(self)._loss, cuts=cuts),
            self._metrics,
            name=self._task_name,
            primary_metric="c_index",
            device=device,
        )

    @staticmethod
    def _loss(
        outputs: torch.Tensor, targets: Mapping[str, torch.Tensor], cuts: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    def hazards(self, scores: Array) -> Array:
        """Each interval's cumulative hazard increment ``(n, K)`` from the scores ``α_k + η``."""
        raise NotImplementedError

    def survival(self, features: Array, parameters: Mapping[str, Array], times: Array) -> Array:
        """``S(t | x)`` ``(n, len(times))`` of each record at each time (float64).

        Within an interval the hazard is constant, so ``S`` decreases log-linearly between
        the boundaries; beyond ``max_time`` it stays at ``S(max_time)``.
        """
        x = np.asarray(features, dtype=np.float64)
        w = np.asarray(parameters["linear.weight"], dtype=np.float64).reshape(-1)
        alpha = np.asarray(parameters["baseline.weight"], dtype=np.float64).reshape(-1)
        increments = self.hazards(alpha[None, :] + (x @ w)[:, None])  # (n, K)
        t = np.clip(np.asarray(times, dtype=np.float64), 0.0, self.max_time)
        fraction = np.clip(
            (t[:, None] - self.cuts[None, :-1]) / np.diff(self.cuts)[None, :], 0.0, 1.0
        )  # (T, K)
        return np.exp(-(increments @ fraction.T))

    def _metrics(self, module: torch.nn.Module, data: Dataset) -> dict[str, float]:
        """``"c_index"`` (risk: ``x·w``) and ``"integrated_brier_score"`` (float64)."""
        params = float64_parameters(module)
        try:
            time = np.asarray(data.targets["time"], dtype=np.float64)
            event = np.asarray(data.targets["event"], dtype=np.float64)
        except KeyError as exc:
            raise DataError(
                f"{self.name} needs the targets 'time' and 'event', missing {exc}"
            ) from None
        x = np.asarray(data.features, dtype=np.float64)
        risk = x @ params["linear.weight"].reshape(-1)
        out = {"c_index": concordance_index(time, -risk, event)}
        horizon = min(self.max_time, float(np.quantile(time, 0.9))) if time.size else 0.0
        grid = np.linspace(float(time.min()) if time.size else 0.0, horizon, _IBS_POINTS)
        if time.size and horizon > grid[0]:
            out["integrated_brier_score"] = integrated_brier_score(
                time, event, self.survival(x, params, grid), grid
            )
        else:
            out["integrated_brier_score"] = float("nan")
        return out


class LogisticHazardTorchTask(_DiscreteSurvivalTorchTask):
    """The built-in ``"logistic_hazard_torch"`` task: a discrete-time logistic-hazard model.

    Interval ``k``'s hazard is ``σ(α_k + x·w)``; each record contributes the Bernoulli terms
    of the intervals it was at risk in (see :mod:`biofed.tasks._survival_torch`). The
    intervals split ``[0, max_time]`` into ``num_intervals`` equal parts, fixed by the job.
    Parameters: ``"linear.weight"`` ``(1, p)`` and ``"baseline.weight"`` ``(K, 1)``.
    Targets: ``"time"`` and ``"event"`` (0/1). Metrics: ``"c_index"`` (risk score ``x·w``,
    which orders survival at every horizon the same way) and ``"integrated_brier_score"``
    (IPCW, Graf et al. 1999, up to the 90th percentile of the evaluated times or
    ``max_time``, whichever is earlier).

    Parameters
    ----------
    num_features:
        Number of feature columns.
    num_intervals:
        Number K of intervals.
    max_time:
        End of the last interval, in the dataset's time unit; later times count as
        censored there.
    init:
        ``"zeros"`` (default) or ``"uniform"`` (torch's default for a linear layer).
    device:
        Where to train.

    Privacy notes
    -------------
    The loss is the mean of per-record terms, each a function of one record alone, so under
    DP-SGD one record changes a step's clipped sum by at most C and the accountant's ε is a
    guarantee (``dp_record_coupling = "independent"``). The intervals are public (the
    job's), so they release nothing about a site's records.
    """

    _task_name = "logistic_hazard_torch"

    @staticmethod
    def _loss(
        outputs: torch.Tensor, targets: Mapping[str, torch.Tensor], cuts: torch.Tensor
    ) -> torch.Tensor:
        return logistic_hazard_loss(outputs, targets, cuts)

    def hazards(self, scores: Array) -> Array:
        """``−log(1 − h_k) = softplus(α_k + η)``: the interval's cumulative-hazard increment."""
        return np.logaddexp(0.0, scores)


class PiecewiseExponentialTorchTask(_DiscreteSurvivalTorchTask):
    """The built-in ``"pem_torch"`` task: a piecewise-exponential (Poisson) survival model.

    The hazard is ``exp(α_k + x·w)`` per interval width, constant within interval ``k``;
    each record contributes its Poisson terms ``d_k (α_k + η) − λ_k E_k`` for the intervals
    it was at risk in (see :mod:`biofed.tasks._survival_torch`). With fine intervals it is
    the Cox model's continuous-time relative (Whitehead 1980) without the Cox partial
    likelihood's risk sets, which couple the records of a batch. Parameters, targets,
    metrics and arguments are :class:`LogisticHazardTorchTask`'s.

    Privacy notes
    -------------
    A sum of per-record terms, like :class:`LogisticHazardTorchTask`: DP-SGD's ε is a
    guarantee (``dp_record_coupling = "independent"``).
    """

    _task_name = "pem_torch"

    @staticmethod
    def _loss(
        outputs: torch.Tensor, targets: Mapping[str, torch.Tensor], cuts: torch.Tensor
    ) -> torch.Tensor:
        return pem_loss(outputs, targets, cuts)

    def hazards(self, scores: Array) -> Array:
        """``λ_k = exp(α_k + η)``: the cumulative hazard over a whole interval."""
        return np.exp(scores)
