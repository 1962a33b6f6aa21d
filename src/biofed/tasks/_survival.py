"""The discrete-time survival models' arguments and parameter layout, without torch.

The models themselves are in :mod:`biofed.tasks._survival_torch`; this module lets
:func:`biofed.tasks.parameter_spec` size them without importing torch.
"""

from __future__ import annotations

from biofed.core import ParameterSpec
from biofed.core.checks import check_float, check_int
from biofed.tasks._numpy import check_linear_args

#: Default number of intervals and end of the last one (days: ten years of follow-up).
DEFAULT_NUM_INTERVALS = 10
DEFAULT_MAX_TIME = 3650.0
_MAX_INTERVALS = 1000


def check_survival_args(num_features: int, num_intervals: int, max_time: float, init: str) -> None:
    """Validate the discrete-time survival models' arguments (one line per cause)."""
    check_linear_args(num_features, init)
    check_int(num_intervals, "num_intervals", minimum=1, maximum=_MAX_INTERVALS)
    check_float(max_time, "max_time", above=0)


def survival_spec(
    num_features: int,
    *,
    num_intervals: int = DEFAULT_NUM_INTERVALS,
    max_time: float = DEFAULT_MAX_TIME,
    init: str = "zeros",
) -> ParameterSpec:
    """The parameter layout of both models, without allocating it.

    ``"linear.weight"`` ``(1, p)`` (the log-hazard ratios) and ``"baseline.weight"``
    ``(K, 1)`` (one baseline value per interval), float32.
    """
    check_survival_args(num_features, num_intervals, max_time, init)
    return ParameterSpec(
        entries=(
            ("baseline.weight", (num_intervals, 1), "<f4"),
            ("linear.weight", (1, num_features), "<f4"),
        )
    )
