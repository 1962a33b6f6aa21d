"""safetensors codec: round trips, and every kind of malformed payload refused clearly."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from biofed.core import (
    ParameterMismatch,
    ParameterSet,
    PayloadError,
    decode_parameters,
    encode_parameters,
)

_dtypes = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_])
_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", min_size=1, max_size=12)


@st.composite
def parameter_sets(draw: st.DrawFn) -> ParameterSet:
    names = draw(st.lists(_names, min_size=0, max_size=5, unique=True))
    arrays = {}
    for name in names:
        dtype = draw(_dtypes)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        elements = None
        if np.issubdtype(dtype, np.floating):
            elements = st.floats(-1e6, 1e6, allow_nan=False, width=np.dtype(dtype).itemsize * 8)
        arrays[name] = draw(hnp.arrays(dtype, shape, elements=elements))
    return ParameterSet(arrays)


@given(parameter_sets())
def test_round_trip_keeps_names_order_dtypes_and_values(params: ParameterSet) -> None:
    if "__metadata__" in params:
        with pytest.raises(PayloadError, match="reserved"):
            encode_parameters(params)
        return
    decoded = decode_parameters(encode_parameters(params), spec=params.spec)
    assert decoded == params
    assert list(decoded) == list(params)


def _model() -> ParameterSet:
    return ParameterSet(
        {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(2, np.float32)}
    )


def test_truncated_payload_is_refused() -> None:
    data = encode_parameters(_model())
    for cut in (0, 4, 8, 20, len(data) - 1):
        with pytest.raises(PayloadError, match=r"truncated|not valid"):
            decode_parameters(data[:cut])


def test_header_claiming_more_than_present_is_refused() -> None:
    data = bytearray(encode_parameters(_model()))
    data[:8] = struct.pack("<Q", 10**12)
    with pytest.raises(PayloadError, match="truncated or corrupt"):
        decode_parameters(bytes(data))


def test_garbage_is_refused() -> None:
    with pytest.raises(PayloadError):
        decode_parameters(struct.pack("<Q", 5) + b"nope!" + b"\0" * 16)


def test_oversized_payload_is_refused_before_parsing() -> None:
    data = encode_parameters(_model())
    with pytest.raises(PayloadError, match="exceeds the limit"):
        decode_parameters(data, max_bytes=len(data) - 1)


def test_nan_and_inf_are_refused() -> None:
    for bad in (np.nan, np.inf, -np.inf):
        arr = np.zeros(3, np.float32)
        arr[1] = bad
        with pytest.raises(PayloadError, match="NaN or infinite"):
            decode_parameters(encode_parameters(ParameterSet({"w": arr})))


def test_shape_and_dtype_mismatch_against_the_model() -> None:
    spec = _model().spec
    wrong_shape = ParameterSet(
        {"weight": np.zeros((3, 2), np.float32), "bias": np.ones(2, np.float32)}
    )
    with pytest.raises(ParameterMismatch, match="shape"):
        decode_parameters(encode_parameters(wrong_shape), spec=spec)
    wrong_dtype = ParameterSet(
        {"weight": np.zeros((2, 3), np.float64), "bias": np.ones(2, np.float32)}
    )
    with pytest.raises(ParameterMismatch, match="dtype"):
        decode_parameters(encode_parameters(wrong_dtype), spec=spec)
    extra = ParameterSet({**_model(), "smuggled": np.zeros(1, np.float32)})
    with pytest.raises(ParameterMismatch, match="unexpected"):
        decode_parameters(encode_parameters(extra), spec=spec)


def test_pickle_bytes_are_never_executed() -> None:
    import pickle

    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    with pytest.raises(PayloadError):
        decode_parameters(pickle.dumps(Boom()))


def test_order_metadata_tampering_is_detected() -> None:
    data = encode_parameters(_model())
    tampered = data.replace(b'\\"weight\\"', b'\\"weighx\\"')
    assert tampered != data
    with pytest.raises(PayloadError):
        decode_parameters(tampered)
