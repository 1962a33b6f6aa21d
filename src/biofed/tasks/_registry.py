"""Built-in tasks by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from biofed.core import ConfigurationError
from biofed.tasks._api import Task
from biofed.tasks._cox import CoxPHTask
from biofed.tasks._logreg import LogisticRegressionTask

BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "cox_ph": CoxPHTask,
    "logistic_regression": LogisticRegressionTask,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a built-in task by name.

    Parameters
    ----------
    name:
        ``"cox_ph"`` (:class:`~biofed.tasks.CoxPHTask`) or ``"logistic_regression"``
        (:class:`~biofed.tasks.LogisticRegressionTask`).
    **kwargs:
        The task's constructor arguments (``num_features=…`` for both).

    Raises
    ------
    ConfigurationError
        For an unknown name or arguments the task does not accept.
    """
    try:
        factory = BUILTIN_TASKS[name]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown task {name!r}; built-in tasks are {sorted(BUILTIN_TASKS)} "
            "(write your own with NumpyTask or TorchTask)"
        ) from None
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(
            f"task {name!r}: {exc}; e.g. make_task({name!r}, num_features=39)"
        ) from exc
