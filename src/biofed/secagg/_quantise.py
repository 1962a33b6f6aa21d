"""Fixed-point encoding of float32 vectors into the ring Z_{2^b}, and back.

A site's value x becomes ``q = ⌊(clip(x, -r, r) + r) / s + 1/2⌋`` in ``[0, L]``
(``L = ⌈2r/s⌉``: rounding to the nearest step, halves up), computed in float64; the site
sends ``w · q`` and, as one more ring element, its weight ``w``. The plan guarantees
``n · max_weight · L < 2^b``, so the sum over the sites never wraps, and
``s · Σ w q / Σ w − r`` is the weighted mean of the clipped values up to ``s/2``
(deterministic rounding; no stochastic rounding).
"""

from __future__ import annotations

import numpy as np

from biofed.core import Array, ParameterMismatch, PayloadError
from biofed.secagg._config import SecAggPlan

_CHUNK = 1 << 17  # values per pass: fewer numpy calls beat cache residency here (measured)


def check_vector(plan: SecAggPlan, vector: object) -> Array:
    """``vector`` if it is a 1-D float32 (a model update) or float64 (a statistic of
    :mod:`biofed.analytics`, quantised without first rounding to float32) array of the
    plan's length."""
    if (
        not isinstance(vector, np.ndarray)
        or vector.dtype not in (np.float32, np.float64)
        or vector.ndim != 1
    ):
        what = (
            f"{vector.dtype} array of shape {vector.shape}"
            if isinstance(vector, np.ndarray)
            else type(vector).__name__
        )
        raise ParameterMismatch(
            f"the vector to aggregate must be a 1-D float32 or float64 array of length "
            f"{plan.dimension}, got a {what}"
        )
    if vector.size != plan.dimension:
        raise ParameterMismatch(
            f"the vector to aggregate has {vector.size} values, the plan {plan.dimension}"
        )
    return vector


def quantise_into(out: Array, plan: SecAggPlan, vector: Array, weight: int) -> None:
    """Write ``w · q(vector)`` and then ``w`` into ``out`` (d + 1 ring elements).

    Works through the vector in cache-sized chunks: ``y = x/s + r/s`` in float64, clipped to
    ``[0, 2r/s]`` (the same as clipping x to [-r, r]), and ``q = ⌊y + 1/2⌋`` (round half
    up), so ``|q·s − (clip(x) + r)| ≤ s/2`` up to float64 rounding. ``q ≤ L < 2^(b−1)``
    (the plan puts at least two sites' worth of sums in the ring), so the float-to-integer
    conversion goes through the signed type of the ring's width, which numpy does fastest.

    Raises
    ------
    PayloadError
        If ``vector`` holds NaN or infinity (nothing sensible to clip them to).
    """
    if not np.isfinite(vector).all():
        raise PayloadError("the vector to aggregate holds NaN or infinite values")
    d = plan.dimension
    clip = plan.config.clip_range
    step = plan.config.quantisation_step
    inverse = 1.0 / step
    offset = clip * inverse + 0.5
    top = 2 * clip / step + 0.5  # ⌊top⌋ ≤ ⌈2r/s⌉ = L
    signed = out.view(np.int32 if out.dtype == np.uint32 else np.int64)
    w = out.dtype.type(weight)
    scratch = np.empty(min(_CHUNK, d), dtype=np.float64)
    for start in range(0, d, _CHUNK):
        stop = min(start + _CHUNK, d)
        f = scratch[: stop - start]
        np.copyto(f, vector[start:stop])
        f *= inverse
        f += offset
        np.clip(f, 0.5, top, out=f)
        np.copyto(signed[start:stop], f, casting="unsafe")  # truncation = floor here
        q = out[start:stop]
        np.multiply(q, w, out=q)
    out[d] = w


def dequantise(total: Array, plan: SecAggPlan) -> tuple[Array, int]:
    """The float32 weighted mean and the total weight from the unmasked ring sum."""
    total_weight = int(total[-1])
    if total_weight <= 0:
        raise PayloadError("the unmasked total weight is zero: nothing to average")
    d = plan.dimension
    scale = plan.config.quantisation_step / total_weight
    clip = plan.config.clip_range
    mean = np.empty(d, dtype=np.float32)
    scratch = np.empty(min(_CHUNK, d), dtype=np.float64)
    for start in range(0, d, _CHUNK):
        stop = min(start + _CHUNK, d)
        f = scratch[: stop - start]
        np.copyto(f, total[start:stop], casting="unsafe")
        f *= scale
        f -= clip
        np.copyto(mean[start:stop], f, casting="same_kind")
    return mean, total_weight


def dequantise_sum(total: Array, plan: SecAggPlan) -> Array:
    """The float64 weighted sum ``Σ wᵢ clip(xᵢ)`` from the unmasked ring sum, within
    ``Σ wᵢ · s/2`` of it (what a statistic's secure sum needs: :mod:`biofed.analytics` sends
    weight 1, so a count is exact and a sum is within ``n · s/2``).

    The offset of the grid (``Σ wᵢ`` times the level of 0) is removed in integer arithmetic
    before the levels are scaled: decoding ``s · Σ wq − r · Σ w`` in float64 would lose
    about ``n · r · 2^-52`` to cancellation (1e-6 with r = 1e9), enough to turn a zero (a
    flag, an empty cell) into a small non-zero value. With a step 1/K (1e-6, 1e-5…) and a
    whole r, 0 is on the grid and decodes to exactly 0, and a sum of integers (a count)
    to that integer exactly (the levels are divided by K, correctly rounded)."""
    total_weight = int(total[-1])
    d = plan.dimension
    step = plan.config.quantisation_step
    # 0 sits at level r/s of the grid: the level quantise_into gives it comes off in
    # integers, what is left of r/s in float64 (nothing when s = 1/K and r·K is whole:
    # the grid then has 0 on it, and a float rounding of r·(1/s) must not move it)
    clip = plan.config.clip_range
    at = clip * (1.0 / step)
    zero = int(np.floor(at + 0.5))
    per_unit = round(1.0 / step)
    aligned = per_unit >= 1 and 1.0 / per_unit == step and float(clip).is_integer()
    fraction = 0.0 if aligned else at - zero
    signed = np.int32 if total.dtype == np.uint32 else np.int64
    offset = total.dtype.type((total_weight * zero) % (1 << (8 * total.dtype.itemsize)))
    # Σ w (q − q₀) fits the signed type: |q − q₀| ≤ L/2 and n · max_weight · L < 2^b
    levels: Array = (np.asarray(total[:d]) - offset).view(signed).astype(np.float64)
    if fraction:
        levels -= total_weight * fraction
    if per_unit >= 1 and 1.0 / per_unit == step:  # s = 1/K: dividing by K keeps integers exact
        return np.asarray(levels / per_unit, dtype=np.float64)
    return np.asarray(levels * step, dtype=np.float64)
