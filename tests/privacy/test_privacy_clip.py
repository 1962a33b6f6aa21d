"""L2 clipping: the clipped norm never exceeds C, whatever the dtypes and sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from biofed.core import ConfigurationError, ParameterSet, PayloadError
from biofed.privacy import clip_l2, l2_norm

_DTYPES = st.sampled_from([np.float16, np.float32, np.float64])


@st.composite
def parameter_sets(draw: st.DrawFn) -> ParameterSet:
    count = draw(st.integers(1, 3))
    arrays = {}
    for i in range(count):
        dtype = draw(_DTYPES)
        limit = 1e3 if dtype == np.float16 else 1e6
        elements = st.floats(-limit, limit, allow_nan=False, width=np.finfo(dtype).bits)
        arrays[f"p{i}"] = draw(
            hnp.arrays(dtype, hnp.array_shapes(max_dims=2, max_side=8), elements=elements)
        )
    return ParameterSet(arrays)


@settings(max_examples=150, deadline=None)
@given(params=parameter_sets(), max_norm=st.floats(1e-3, 1e3))
def test_clipped_norm_never_exceeds_the_bound(params: ParameterSet, max_norm: float) -> None:
    clipped, norm = clip_l2(params, max_norm)
    assert norm == pytest.approx(l2_norm(params))
    assert l2_norm(clipped) <= max_norm
    assert clipped.spec == params.spec
    if norm <= max_norm:
        assert clipped is params
    else:  # a scaled copy: direction kept, norm at the bound up to the dtype's rounding
        eps = max(float(np.finfo(a.dtype).eps) for a in params.values())
        assert l2_norm(clipped) == pytest.approx(max_norm, rel=max(64 * eps, 1e-9), abs=1e-3)


def test_norm_is_global_over_float_arrays_only() -> None:
    params = ParameterSet(
        {
            "w": np.array([3.0, 0.0], dtype=np.float32),
            "b": np.array([4.0]),
            "steps": np.array([100], dtype=np.int64),
        }
    )
    clipped, norm = clip_l2(params, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["w"], [0.6, 0.0], rtol=1e-6)
    # float32 rounding may shrink the common factor by a few float32 ulps (never grow it).
    np.testing.assert_allclose(clipped["b"], [0.8], rtol=1e-6)
    assert clipped["steps"].tolist() == [100]
    assert clipped["w"].dtype == np.float32


def test_within_bound_is_returned_unchanged() -> None:
    params = ParameterSet({"w": np.array([0.3, 0.4])})
    clipped, norm = clip_l2(params, 1.0)
    assert clipped is params
    assert norm == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bound_is_validated(bad: float) -> None:
    with pytest.raises(ConfigurationError, match="max_norm must be"):
        clip_l2(ParameterSet({"w": np.ones(2)}), bad)


def test_non_finite_update_is_refused() -> None:
    with pytest.raises(PayloadError, match="NaN or infinite"):
        clip_l2(ParameterSet({"w": np.array([1.0, np.nan])}), 1.0)


def test_large_float32_norm_is_accurate() -> None:
    values = np.full(300_000, 0.1, dtype=np.float32)
    expected = math.sqrt(300_000 * float(np.float32(0.1)) ** 2)
    assert l2_norm(ParameterSet({"w": values})) == pytest.approx(expected, rel=1e-12)
