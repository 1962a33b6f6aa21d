"""Array codec: ParameterSet <-> the safetensors format, without copies.

The format (Hugging Face safetensors): an 8-byte little-endian header length, a JSON header
mapping each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an
optional ``"__metadata__"`` object of strings), padded with spaces, then the raw
little-endian tensor bytes. biofed writes and reads it itself so that large models move with
no extra copy: :func:`encode_segments` returns the header plus *views* of the arrays' memory
(streamed in chunks by the transport), and :func:`decode_parameters` returns arrays that are
read-only views into the buffer it was given. ``tests/core`` checks both directions against
the reference ``safetensors`` library.

Security notes
--------------
Threat: a payload that crosses a trust boundary (network message, checkpoint, task bundle)
must not be able to execute code when it is read, and must not crash or mislead the reader.
pickle-based formats (``torch.save``, ``np.save(allow_pickle=True)``) run code on load; this
format holds only a JSON header and numbers. The decoder bounds the total and header sizes
before parsing; accepts only the numeric dtypes of :data:`~biofed.core.ALLOWED_DTYPES`;
requires every tensor's byte range to match its shape exactly, to lie inside the data
section, and the ranges to tile the data section with no gap or overlap (the spec's rule,
which stops two names aliasing the same bytes); refuses NaN/Inf; and, given a spec, any
name, shape or dtype that differs from the model's.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from biofed.core._errors import PayloadError
from biofed.core._params import Array, ParameterSet, ParameterSpec

#: Default upper bound on a decoded payload (16 GiB): larger claims are refused up front.
MAX_PAYLOAD_BYTES = 16 * 1024**3
_MAX_HEADER_BYTES = 64 * 1024**2
_ORDER_KEY = "biofed.order"
_METADATA = "__metadata__"

_CODES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("<u1"),
    "I8": np.dtype("<i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
}
_NAMES = {dtype: code for code, dtype in _CODES.items()}


def _code(array: Array, name: str) -> str:
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    code = _NAMES.get(np.dtype(dtype.str if dtype.kind != "b" else np.bool_))
    if code is None:
        raise PayloadError(f"parameter {name!r} has dtype {array.dtype}, which cannot travel")
    return code


def encode_segments(
    params: ParameterSet, *, metadata: Mapping[str, str] | None = None
) -> list[memoryview]:
    """The safetensors encoding of ``params`` as segments: the header, then each array's
    bytes as a view of its memory (no copy for contiguous little-endian arrays).

    Parameters
    ----------
    params:
        The arrays to encode (no parameter may be named ``__metadata__``).
    metadata:
        Optional string key/values stored in the header (no ``biofed.`` prefix).
    """
    if _METADATA in params:
        raise PayloadError("'__metadata__' is reserved by safetensors and cannot name a parameter")
    meta = dict(metadata or {})
    if any(k.startswith("biofed.") for k in meta):
        raise PayloadError("metadata keys starting with 'biofed.' are reserved")
    meta[_ORDER_KEY] = json.dumps(list(params.keys()))
    header: dict[str, Any] = {_METADATA: meta}
    datas: list[memoryview] = []
    offset = 0
    for name, array in params.items():
        code = _code(array, name)
        data = np.ascontiguousarray(array, dtype=_CODES[code]).reshape(-1)
        view = data.view(np.uint8).data
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + view.nbytes],
        }
        offset += view.nbytes
        datas.append(view)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return [memoryview(struct.pack("<Q", len(text)) + text), *datas]


def encode_parameters(params: ParameterSet, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize ``params`` to safetensors bytes, keeping the names' order."""
    return b"".join(encode_segments(params, metadata=metadata))


def _parse_header(view: memoryview, max_bytes: int) -> tuple[dict[str, Any], int]:
    if len(view) > max_bytes:
        raise PayloadError(f"payload of {len(view)} bytes exceeds the limit of {max_bytes} bytes")
    if len(view) < 8:
        raise PayloadError(f"payload is truncated: {len(view)} bytes, a header needs at least 8")
    (header_len,) = struct.unpack("<Q", view[:8])
    if header_len > _MAX_HEADER_BYTES or 8 + header_len > len(view):
        raise PayloadError(
            f"payload is truncated or corrupt: header claims {header_len} bytes, "
            f"{len(view) - 8} are present"
        )
    try:
        header = json.loads(bytes(view[8 : 8 + header_len]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"payload header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise PayloadError("payload header is not a JSON object")
    return header, 8 + header_len


def _tensor_entry(name: str, entry: object) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise PayloadError(f"payload entry {name!r} is malformed")
    dtype = _CODES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
    if dtype is None:
        raise PayloadError(f"payload entry {name!r} has an unsupported dtype {entry['dtype']!r}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise PayloadError(f"payload entry {name!r} has an invalid shape")
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
    ):
        raise PayloadError(f"payload entry {name!r} has invalid data offsets")
    begin, end = offsets
    if end - begin != math.prod(shape) * dtype.itemsize:
        raise PayloadError(f"payload entry {name!r}: byte range does not match its shape")
    return dtype, tuple(shape), begin, end


def decode_parameters(
    data: bytes | bytearray | memoryview,
    *,
    spec: ParameterSpec | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    allow_nonfinite: bool = False,
) -> ParameterSet:
    """Parse safetensors bytes into a ParameterSet of read-only views into ``data``.

    Parameters
    ----------
    data:
        The payload (kept alive by the returned arrays; not copied).
    spec:
        If given, the decoded arrays must match it exactly (names, shapes, dtypes).
    max_bytes:
        Refuse payloads larger than this.
    allow_nonfinite:
        Accept NaN/Inf values (never for model updates).

    Raises
    ------
    PayloadError
        Truncated, oversized or corrupt bytes; a disallowed dtype; NaN/Inf.
    ParameterMismatch
        The arrays do not match ``spec``.
    """
    view = memoryview(data).cast("B")
    header, start = _parse_header(view, max_bytes)
    metadata = header.pop(_METADATA, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise PayloadError("payload metadata must map strings to strings")
    entries = {name: _tensor_entry(name, entry) for name, entry in header.items()}
    ranges = sorted((begin, end) for _, _, begin, end in entries.values())
    position = 0
    for begin, end in ranges:
        if begin != position:
            raise PayloadError("payload tensors overlap or leave gaps in the data section")
        position = end
    if start + position != len(view):
        raise PayloadError(
            f"payload data section has {len(view) - start} bytes, its tensors cover {position}"
        )
    order = sorted(entries, key=lambda n: entries[n][2])
    if _ORDER_KEY in metadata:
        try:
            declared = json.loads(metadata[_ORDER_KEY])
        except ValueError as exc:
            raise PayloadError("payload's name order metadata is corrupt") from exc
        if not isinstance(declared, list) or sorted(map(str, declared)) != sorted(entries):
            raise PayloadError("payload's name order metadata does not match its tensors")
        order = [str(n) for n in declared]
    buffer = (
        view.obj
        if isinstance(view.obj, (bytes, bytearray)) and view.nbytes == len(view.obj)
        else view
    )
    arrays: dict[str, Array] = {}
    for name in order:
        dtype, shape, begin, end = entries[name]
        count = (end - begin) // dtype.itemsize
        arrays[name] = np.frombuffer(
            buffer, dtype=dtype, count=count, offset=start + begin
        ).reshape(shape)
    try:
        params = ParameterSet(arrays)
    except ValueError as exc:
        raise PayloadError(str(exc)) from exc
    if spec is not None:
        spec.validate(params, what="payload")
    elif not allow_nonfinite and not params.all_finite():
        raise PayloadError("payload contains NaN or infinite values")
    return params


def decode_metadata(data: bytes | bytearray | memoryview) -> dict[str, str]:
    """The string metadata of a safetensors payload (without the biofed-reserved keys)."""
    header, _ = _parse_header(memoryview(data).cast("B"), MAX_PAYLOAD_BYTES)
    meta = header.get(_METADATA) or {}
    if not isinstance(meta, dict):
        raise PayloadError("payload metadata must be an object")
    return {str(k): str(v) for k, v in meta.items() if not str(k).startswith("biofed.")}
