"""The secure sum's decoding: a statistic summed on the fixed-point grid comes back exact
where it can be (zeros, counts) and within the stated bound elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.secagg import SecAggConfig
from biofed.secagg._quantise import dequantise_sum, quantise_into


@pytest.mark.parametrize(("clip", "step"), [(1e9, 1e-6), (1e10, 1e-5), (1e12, 1e-3), (1e9, 3e-4)])
def test_zeros_and_counts_decode_exactly_and_sums_within_n_half_steps(
    clip: float, step: float
) -> None:
    rng = np.random.default_rng(7)
    n = 6
    plan = SecAggConfig(dimension=6, clip_range=clip, quantisation_step=step).plan(n)
    total = np.zeros(7, plan.dtype)
    inputs = []
    for _ in range(n):
        x = np.array([0.0, float(rng.integers(0, 10**6)), 1.0, rng.normal(0, 1e6), -clip, clip])
        out = np.zeros(7, plan.dtype)
        quantise_into(out, plan, x, 1)
        total += out
        inputs.append(x)
    exact = np.sum(inputs, axis=0)
    got = dequantise_sum(total, plan)
    if 1.0 / round(1.0 / step) == step:  # s = 1/K (0 on the grid)
        assert got[0] == 0.0  # a flag or an empty cell stays exactly zero
        assert got[1] == exact[1]  # a count is exact
        assert got[2] == n
    # the stated bound: n·s/2, plus float64 rounding of the result
    assert np.all(np.abs(got - exact) <= n * step / 2 + np.abs(exact) * 2.0**-52 * 4)
