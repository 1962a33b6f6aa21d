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
        with pytest.raises(PayloadError, match=r"truncated|not valid|data section"):
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


# -- compatibility with the reference safetensors library, and zero-copy behaviour ------------


@given(parameter_sets())
def test_reference_library_reads_ours_and_we_read_its(params: ParameterSet) -> None:
    from safetensors.numpy import load, save

    if "__metadata__" in params:
        return
    ours = encode_parameters(params)
    theirs = load(ours)
    assert set(theirs) == set(params)
    for name, array in params.items():
        np.testing.assert_array_equal(theirs[name], array)
        assert theirs[name].dtype == array.dtype
    reference = save({k: np.ascontiguousarray(v) for k, v in params.items()})
    back = decode_parameters(reference)
    assert set(back) == set(params)
    for name, array in params.items():
        np.testing.assert_array_equal(back[name], array)


def test_decoded_arrays_are_read_only_views_of_the_buffer() -> None:
    buffer = bytearray(encode_parameters(_model()))
    params = decode_parameters(buffer)
    weight = params["weight"]
    assert not weight.flags.writeable
    assert np.shares_memory(weight, np.frombuffer(buffer, dtype=np.uint8))


def test_segments_are_views_of_the_arrays() -> None:
    from biofed.core import encode_segments

    weight = np.arange(6, dtype=np.float32)
    segments = encode_segments(ParameterSet({"w": weight}))
    assert np.shares_memory(np.frombuffer(segments[1], dtype=np.float32), weight)
    assert b"".join(segments) == encode_parameters(ParameterSet({"w": weight}))


def _with_header(header: dict[str, object], data: bytes) -> bytes:
    import json

    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        (
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "does not match its shape",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
            },
            b"\0" * 4,
            "overlap",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
            b"\0" * 8,
            "overlap or leave gaps",
        ),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 12, "data section"),
        (
            {"a": {"dtype": "OBJ", "shape": [1], "data_offsets": [0, 8]}},
            b"\0" * 8,
            "unsupported dtype",
        ),
        (
            {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            "invalid shape",
        ),
        (
            {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}},
            b"\0" * 4,
            "malformed",
        ),
        ({"__metadata__": {"k": 1}}, b"", "metadata"),
    ],
)
def test_hand_made_malformed_headers_are_refused(header, data, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PayloadError, match=match):
        decode_parameters(_with_header(header, data))
