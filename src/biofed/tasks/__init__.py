"""biofed.tasks: the task API, the numpy and PyTorch adapters and the built-in tasks.

``TorchTask`` and the built-in torch tasks (``CoxPHTorchTask``,
``LogisticRegressionTorchTask``, ``LogisticHazardTorchTask``,
``PiecewiseExponentialTorchTask``) are imported lazily, on first access, so
``import biofed.tasks`` works without PyTorch installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from biofed.tasks._api import (
    RECORD_COUPLINGS,
    SCAFFOLD_CLIENT_CONTROL,
    SCAFFOLD_CONTROL_DELTA,
    SCAFFOLD_SERVER_CONTROL,
    EvalResult,
    LocalTrainingConfig,
    Task,
    TrainContext,
    TrainResult,
    record_coupling,
    sensitivity_factor,
)
from biofed.tasks._cox import CoxPH, CoxPHTask
from biofed.tasks._logreg import LogisticRegression, LogisticRegressionTask
from biofed.tasks._metrics import concordance_index, integrated_brier_score, roc_auc
from biofed.tasks._numpy import GradientModel, NumpyTask
from biofed.tasks._registry import BUILTIN_TASKS, make_task, parameter_spec

if TYPE_CHECKING:
    from biofed.tasks._cox_torch import CoxPHTorchTask
    from biofed.tasks._logreg_torch import LogisticRegressionTorchTask
    from biofed.tasks._survival_torch import LogisticHazardTorchTask, PiecewiseExponentialTorchTask
    from biofed.tasks._torch import TorchTask

__all__ = [
    "BUILTIN_TASKS",
    "RECORD_COUPLINGS",
    "SCAFFOLD_CLIENT_CONTROL",
    "SCAFFOLD_CONTROL_DELTA",
    "SCAFFOLD_SERVER_CONTROL",
    "CoxPH",
    "CoxPHTask",
    "CoxPHTorchTask",
    "EvalResult",
    "GradientModel",
    "LocalTrainingConfig",
    "LogisticHazardTorchTask",
    "LogisticRegression",
    "LogisticRegressionTask",
    "LogisticRegressionTorchTask",
    "NumpyTask",
    "PiecewiseExponentialTorchTask",
    "Task",
    "TorchTask",
    "TrainContext",
    "TrainResult",
    "concordance_index",
    "integrated_brier_score",
    "make_task",
    "parameter_spec",
    "record_coupling",
    "roc_auc",
    "sensitivity_factor",
]


_LAZY = {
    "CoxPHTorchTask": "biofed.tasks._cox_torch",
    "LogisticHazardTorchTask": "biofed.tasks._survival_torch",
    "LogisticRegressionTorchTask": "biofed.tasks._logreg_torch",
    "PiecewiseExponentialTorchTask": "biofed.tasks._survival_torch",
    "TorchTask": "biofed.tasks._torch",
}


def __getattr__(name: str) -> Any:
    """Import the torch-based names (and so torch) on first access only."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
