"""Array codec: ParameterSet <-> bytes with safetensors.

Security notes
--------------
Threat: a payload that crosses a trust boundary (network message, checkpoint, task bundle)
must not be able to execute code when it is read, and must not crash or mislead the reader.
pickle-based formats (``torch.save``, ``np.save(allow_pickle=True)``) run code on load, so
biofed uses safetensors only (a JSON header plus raw little-endian buffers; Hugging Face's
format, audited by Trail of Bits in 2023). On top of the library's own checks the decoder
bounds the header and total size before parsing, refuses dtypes outside
:data:`~biofed.core.ALLOWED_DTYPES`, refuses NaN/Inf and, when a spec is given, any name,
shape or dtype that differs from the model's.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from biofed.core._errors import PayloadError
from biofed.core._params import ParameterSet, ParameterSpec

#: Default upper bound on a decoded payload (16 GiB): larger claims are refused up front.
MAX_PAYLOAD_BYTES = 16 * 1024**3
_MAX_HEADER_BYTES = 64 * 1024**2
_ORDER_KEY = "biofed.order"


def encode_parameters(params: ParameterSet, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize ``params`` to safetensors bytes, keeping the names' order.

    Parameters
    ----------
    params:
        The arrays to encode (no parameter may be named ``__metadata__``).
    metadata:
        Optional string key/values stored in the header (must not use the ``biofed.`` prefix).
    """
    if "__metadata__" in params:
        raise PayloadError("'__metadata__' is reserved by safetensors and cannot name a parameter")
    meta = dict(metadata or {})
    if any(k.startswith("biofed.") for k in meta):
        raise PayloadError("metadata keys starting with 'biofed.' are reserved")
    meta[_ORDER_KEY] = json.dumps(list(params.keys()))
    arrays = {k: np.require(v, requirements="C") for k, v in params.items()}
    return bytes(_st_save(arrays, metadata=meta))


def decode_parameters(
    data: bytes | bytearray | memoryview,
    *,
    spec: ParameterSpec | None = None,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    allow_nonfinite: bool = False,
) -> ParameterSet:
    """Parse safetensors bytes into a ParameterSet, validating everything that can be wrong.

    Parameters
    ----------
    data:
        The payload.
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
    view = memoryview(data)
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
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
        arrays = _st_load(bytes(view))
    except (SafetensorError, ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"payload is not valid safetensors: {exc}") from exc
    metadata = header.get("__metadata__") or {}
    order = list(arrays.keys())
    if isinstance(metadata, dict) and _ORDER_KEY in metadata:
        try:
            declared = json.loads(metadata[_ORDER_KEY])
        except (TypeError, ValueError) as exc:
            raise PayloadError("payload's name order metadata is corrupt") from exc
        if not isinstance(declared, list) or sorted(map(str, declared)) != sorted(order):
            raise PayloadError("payload's name order metadata does not match its tensors")
        order = [str(n) for n in declared]
    try:
        params = ParameterSet({name: arrays[name] for name in order})
    except ValueError as exc:
        raise PayloadError(str(exc)) from exc
    if spec is not None:
        spec.validate(params, what="payload")
    elif not allow_nonfinite and not params.all_finite():
        raise PayloadError("payload contains NaN or infinite values")
    return params
