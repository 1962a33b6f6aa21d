"""The public names of biofed.tasks, and that importing it does not need torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import biofed.tasks
from biofed.core import ConfigurationError
from biofed.tasks import CoxPHTask, LogisticRegressionTask, make_task

EXPECTED = [
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


def test_all_is_the_sorted_public_api() -> None:
    assert biofed.tasks.__all__ == EXPECTED
    # "isort-style" order, as ruff's RUF022 keeps it: CONSTANTS, then Classes, then functions.
    kind = {True: 0, False: 1}
    assert biofed.tasks.__all__ == sorted(
        biofed.tasks.__all__, key=lambda n: (kind[n.isupper()] if n[0].isupper() else 2, n)
    )


def test_every_public_name_resolves() -> None:
    pytest.importorskip("torch")
    for name in EXPECTED:
        assert getattr(biofed.tasks, name) is not None
    with pytest.raises(AttributeError):
        _ = biofed.tasks.NoSuchThing


def test_import_works_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import biofed.tasks as t\n"
        "assert t.make_task('cox_ph', num_features=3).name == 'cox_ph'\n"
        "try:\n"
        "    t.TorchTask\n"
        "except ImportError as exc:\n"
        "    assert 'biofed[torch]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('TorchTask imported without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_tasks_does_not_import_torch() -> None:
    code = "import sys, biofed.tasks; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_make_task() -> None:
    cox = make_task("cox_ph", num_features=39)
    assert isinstance(cox, CoxPHTask)
    assert cox.primary_metric == "c_index"
    logreg = make_task("logistic_regression", num_features=5, l2=0.1)
    assert isinstance(logreg, LogisticRegressionTask)
    with pytest.raises(ConfigurationError, match=r"cox_ph.*logistic_regression"):
        make_task("mlp")
    with pytest.raises(ConfigurationError, match="num_features"):
        make_task("cox_ph")
    with pytest.raises(ConfigurationError, match="unexpected keyword"):
        make_task("cox_ph", num_features=3, lr=0.1)
