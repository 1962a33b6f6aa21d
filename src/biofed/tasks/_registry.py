"""Built-in tasks by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from biofed.core import ConfigurationError, ParameterSpec
from biofed.tasks._api import Task
from biofed.tasks._cox import CoxPHTask
from biofed.tasks._logreg import LogisticRegressionTask
from biofed.tasks._numpy import linear_spec
from biofed.tasks._survival import DEFAULT_MAX_TIME, DEFAULT_NUM_INTERVALS, survival_spec


def _needs_torch(name: str, exc: ImportError) -> str:
    return f"task {name!r} needs PyTorch ({exc}); install it with: pip install 'biofed[torch]'"


def _cox_ph_torch(**kwargs: Any) -> Task:
    """:class:`~biofed.tasks.CoxPHTorchTask`, importing torch only when asked for."""
    try:
        from biofed.tasks._cox_torch import CoxPHTorchTask
    except ImportError as exc:
        raise ConfigurationError(_needs_torch("cox_ph_torch", exc)) from exc
    return CoxPHTorchTask(**kwargs)


def _logistic_regression_torch(**kwargs: Any) -> Task:
    """:class:`~biofed.tasks.LogisticRegressionTorchTask`, importing torch only when asked for."""
    try:
        from biofed.tasks._logreg_torch import LogisticRegressionTorchTask
    except ImportError as exc:
        raise ConfigurationError(_needs_torch("logistic_regression_torch", exc)) from exc
    return LogisticRegressionTorchTask(**kwargs)


def _logistic_hazard_torch(**kwargs: Any) -> Task:
    """:class:`~biofed.tasks.LogisticHazardTorchTask`, importing torch only when asked for."""
    try:
        from biofed.tasks._survival_torch import LogisticHazardTorchTask
    except ImportError as exc:
        raise ConfigurationError(_needs_torch("logistic_hazard_torch", exc)) from exc
    return LogisticHazardTorchTask(**kwargs)


def _pem_torch(**kwargs: Any) -> Task:
    """:class:`~biofed.tasks.PiecewiseExponentialTorchTask`, importing torch only when asked."""
    try:
        from biofed.tasks._survival_torch import PiecewiseExponentialTorchTask
    except ImportError as exc:
        raise ConfigurationError(_needs_torch("pem_torch", exc)) from exc
    return PiecewiseExponentialTorchTask(**kwargs)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "cox_ph": CoxPHTask,
    "cox_ph_torch": _cox_ph_torch,
    "logistic_hazard_torch": _logistic_hazard_torch,
    "logistic_regression": LogisticRegressionTask,
    "logistic_regression_torch": _logistic_regression_torch,
    "pem_torch": _pem_torch,
}


def make_task(name: str, **kwargs: Any) -> Task:
    """Build a built-in task by name.

    Parameters
    ----------
    name:
        ``"cox_ph"`` (:class:`~biofed.tasks.CoxPHTask`), ``"logistic_regression"``
        (:class:`~biofed.tasks.LogisticRegressionTask`), or their PyTorch versions, which
        can train with sample-level DP-SGD: ``"cox_ph_torch"``
        (:class:`~biofed.tasks.CoxPHTorchTask`) and ``"logistic_regression_torch"``
        (:class:`~biofed.tasks.LogisticRegressionTorchTask`); and the discrete-time survival
        models ``"logistic_hazard_torch"`` (:class:`~biofed.tasks.LogisticHazardTorchTask`)
        and ``"pem_torch"`` (:class:`~biofed.tasks.PiecewiseExponentialTorchTask`), whose
        DP-SGD ε is exact, unlike the Cox model's. The torch tasks need the torch extra.
    **kwargs:
        The task's constructor arguments (``num_features=…`` for all of them).

    Raises
    ------
    ConfigurationError
        For an unknown name, arguments the task does not accept, or a torch task without
        PyTorch installed.
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


# The parameter layout of each built-in task, from the same arguments as its constructor and
# without building it: a job's model size is checked before anything is allocated.
def _cox_ph_layout(num_features: int, *, init: str = "zeros") -> ParameterSpec:
    return linear_spec(num_features, init)


def _logistic_regression_layout(
    num_features: int, *, l2: float = 0.0, init: str = "zeros", metric: str = "roc_auc"
) -> ParameterSpec:
    return linear_spec(num_features, init)


def _torch_linear_layout(
    num_features: int, *, init: str = "zeros", device: str = "cpu"
) -> ParameterSpec:
    return linear_spec(num_features, init)


def _torch_survival_layout(
    num_features: int,
    *,
    num_intervals: int = DEFAULT_NUM_INTERVALS,
    max_time: float = DEFAULT_MAX_TIME,
    init: str = "zeros",
    device: str = "cpu",
) -> ParameterSpec:
    return survival_spec(num_features, num_intervals=num_intervals, max_time=max_time, init=init)


_LAYOUTS: dict[str, Callable[..., ParameterSpec]] = {
    "cox_ph": _cox_ph_layout,
    "cox_ph_torch": _torch_linear_layout,
    "logistic_hazard_torch": _torch_survival_layout,
    "logistic_regression": _logistic_regression_layout,
    "logistic_regression_torch": _torch_linear_layout,
    "pem_torch": _torch_survival_layout,
}


def parameter_spec(name: str, **kwargs: Any) -> ParameterSpec:
    """The names, shapes and dtypes of a built-in task's parameters, without allocating them.

    ``parameter_spec(name, **kwargs)`` equals ``make_task(name, **kwargs)
    .init_parameters(rng).spec`` for every ``rng``, but takes no memory and never imports
    torch, so a coordinator can refuse a job whose model is too large before building it.

    Parameters
    ----------
    name:
        A built-in task name (see :func:`make_task`).
    **kwargs:
        The task's constructor arguments.

    Raises
    ------
    ConfigurationError
        For an unknown name or arguments the task does not accept.
    """
    try:
        layout = _LAYOUTS[name]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown task {name!r}; built-in tasks are {sorted(BUILTIN_TASKS)}"
        ) from None
    try:
        return layout(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"task {name!r}: {exc}") from exc
