"""Red team of the node's norm-bound step (issue 15): a coordinator-side bound that is
odd but well-formed (subnormal, near the float64 limit) or malformed (a bool, a string)
must neither crash an honest node nor let an update leave beyond the bound."""

from __future__ import annotations

import numpy as np
import pytest

from biofed.core import ConfigurationError, ParameterSet
from biofed.node._step_bound import bound_update, check_bound

#: The attacks overflow float64 on purpose (that is what they test); numpy says so.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.mark.parametrize("bad", [True, False, "1.0", None, [1.0], -0.0, 1e-400])
def test_a_malformed_bound_is_refused_naming_the_directive(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"robust\.max_update_norm"):
        check_bound(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bound", [5e-324, 1e-300, 1e-30, 1e300, 1.7e308])
def test_an_extreme_bound_keeps_the_update_within_it(dtype: type, bound: float) -> None:
    start = ParameterSet({"w": np.array([1.0, -2.0, 3.0e30], dtype=dtype)})
    trained = ParameterSet({"w": np.array([4.0, 2.0, -3.0e30], dtype=dtype)})
    sent, norm = bound_update(trained, start, check_bound(bound))
    assert sent["w"].dtype == dtype
    assert np.isfinite(sent["w"]).all()
    moved = float(np.linalg.norm(sent["w"].astype(np.float64) - start["w"].astype(np.float64)))
    assert moved <= bound
    assert np.isfinite(norm)


def test_an_update_whose_norm_overflows_is_bounded_not_leaked() -> None:
    """float64 parameters 1e300 apart: the update's squared norm overflows; the node must
    still send something within the bound, never the raw model (it sends no change)."""
    start = ParameterSet({"w": np.array([1e300, -1e300], dtype=np.float64)})
    trained = ParameterSet({"w": np.array([-1e300, 1e300], dtype=np.float64)})
    sent, norm = bound_update(trained, start, 1.0)
    assert norm == np.inf
    moved = float(np.linalg.norm(sent["w"] - start["w"]))
    assert moved <= 1.0
