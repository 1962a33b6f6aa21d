"""What the linear torch tasks share: a ``Linear(p, 1)`` model trained by :class:`TorchTask`
whose metrics are computed by its numpy twin, in float64."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Protocol

import torch

from biofed.core import Array
from biofed.data import Dataset
from biofed.tasks._numpy import check_linear_args
from biofed.tasks._torch import LossFn, TorchTask


class _MetricsModel(Protocol):
    def metrics(self, params: Mapping[str, Array], data: Dataset) -> dict[str, float]: ...


def float64_parameters(module: torch.nn.Module) -> dict[str, Array]:
    """The module's ``state_dict`` as float64 numpy arrays (for metrics computed in numpy)."""
    return {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()}


def linear_layer(num_features: int, init: str, *, train_bias: bool = True) -> torch.nn.Linear:
    """``Linear(p, 1)``: zeros or torch's default initialisation; a frozen bias unless
    ``train_bias``."""
    layer = torch.nn.Linear(num_features, 1)
    if init == "zeros":
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    if not train_bias:
        layer.bias.requires_grad_(False)
    return layer


class LinearTorchTask(TorchTask):
    """A ``Linear(p, 1)`` task: ``loss`` trains it, ``metrics_model`` (the numpy task's model,
    whose parameters have the same names and shapes) evaluates it."""

    def __init__(
        self,
        num_features: int,
        *,
        init: str,
        device: str,
        loss: LossFn,
        metrics_model: _MetricsModel,
        name: str,
        primary_metric: str,
        train_bias: bool = True,
    ) -> None:
        check_linear_args(num_features, init)
        self.num_features = num_features
        self.init = init
        self._metrics_model = metrics_model
        super().__init__(
            functools.partial(linear_layer, num_features, init, train_bias=train_bias),
            loss,
            self._metrics,
            name=name,
            primary_metric=primary_metric,
            device=device,
        )

    def _metrics(self, module: torch.nn.Module, data: Dataset) -> dict[str, float]:
        """The numpy model's metrics of the module's parameters (float64)."""
        return self._metrics_model.metrics(float64_parameters(module), data)
