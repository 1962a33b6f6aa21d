"""L2 clipping of an update: bound one contributor's influence before noise is added."""

from __future__ import annotations

import math

import numpy as np

from biofed.core import Array, ParameterSet, PayloadError
from biofed.core.checks import check_float

# Elements per float64 block when summing squares: bounds the temporary copy that a
# float32/float16 array needs for an accurate sum, without a per-element Python loop.
_BLOCK = 1 << 16


def _is_float(array: Array) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _sum_squares(array: Array) -> float:
    flat = array.reshape(-1)
    if flat.dtype == np.float64:
        return float(flat @ flat)
    total = 0.0
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK].astype(np.float64)
        total += float(block @ block)
    return total


def l2_norm(params: ParameterSet) -> float:
    """The global L2 norm over every floating-point array of ``params``.

    Squares are summed in float64 whatever the arrays' dtype. Integer and bool arrays are
    not part of the norm (see :func:`clip_l2`).
    """
    return math.sqrt(sum(_sum_squares(a) for a in params.values() if _is_float(a)))


def clip_l2(params: ParameterSet, max_norm: float) -> tuple[ParameterSet, float]:
    """Scale ``params`` so that its global L2 norm is at most ``max_norm``.

    Parameters
    ----------
    params:
        The update to clip (typically the difference between local and global weights).
    max_norm:
        The clipping bound C > 0.

    Returns
    -------
    tuple[ParameterSet, float]
        The clipped update (same names, shapes and dtypes; the input itself when it is
        already within the bound) and the norm **before** clipping, which adaptive clipping
        needs.

    Raises
    ------
    ConfigurationError
        If ``max_norm`` is not a finite number > 0.
    PayloadError
        If a floating-point array holds NaN or ±Inf (its norm is undefined).

    Privacy notes
    -------------
    Clipping bounds the L2 sensitivity of one contributor's update to C, which is what the
    Gaussian mechanism's guarantee is calibrated to (Abadi et al. 2016, "Deep Learning with
    Differential Privacy"; McMahan et al. 2018, "Learning Differentially Private Recurrent
    Language Models"). The bound holds on the values as stored: after scaling in the arrays'
    own dtype, the norm is measured again in float64 and the factor shrunk by a few ulps until
    it is ≤ C, so float32/float16 rounding cannot push a clipped update past C.

    Integer and bool arrays (counters such as batch-norm's ``num_batches_tracked``) are
    neither measured nor changed; :class:`GaussianNoise` refuses them, so they cannot leave a
    site as if they were protected.
    """
    bound = check_float(max_norm, "max_norm", above=0)
    if not params.all_finite():
        raise PayloadError("cannot clip an update that contains NaN or infinite values")
    norm = l2_norm(params)
    if norm <= bound:
        return params, norm
    factor = bound / norm
    for _ in range(64):
        clipped = ParameterSet(
            {
                name: (array * array.dtype.type(factor)) if _is_float(array) else array
                for name, array in params.items()
            }
        )
        if l2_norm(clipped) <= bound:
            return clipped, norm
        # Rounding in a narrow dtype overshot the bound: shrink by a few of its ulps.
        coarsest = max(
            (np.finfo(a.dtype).eps for a in params.values() if _is_float(a)), default=0.0
        )
        factor *= 1.0 - 4.0 * float(coarsest)
    raise AssertionError("unreachable: clipping did not converge")  # pragma: no cover
