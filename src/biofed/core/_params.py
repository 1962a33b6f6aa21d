"""Named parameter arrays: the model as it travels between coordinator and sites."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from biofed.core._errors import ConfigurationError, ParameterMismatch, PayloadError

#: dtypes a parameter array may have. Object, string and complex arrays never travel.
ALLOWED_DTYPES: frozenset[np.dtype[Any]] = frozenset(
    np.dtype(t)
    for t in (
        np.float16,
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
)

Array = npt.NDArray[Any]


def is_finite(array: Array) -> bool:
    """True when a floating-point array holds no NaN or ±Inf (other dtypes always are).

    Two allocation-free reductions (NaN propagates through min/max, ±Inf shows as one of
    them) instead of ``np.isfinite(a).all()``, which builds a boolean array of model size.
    """
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return True
    return bool(np.isfinite(array.min()) and np.isfinite(array.max()))


def _readonly(array: Array) -> Array:
    if array.flags.writeable:
        array = array.view()
        array.flags.writeable = False
    return array


class ParameterSet(Mapping[str, Array]):
    """An ordered, immutable mapping from parameter name to numpy array.

    The arrays are kept as read-only views: a ParameterSet handed to a strategy, a task or a
    transport cannot be changed in place by it. Building one does not copy data.

    Parameters
    ----------
    arrays:
        Mapping of name to array (anything :func:`numpy.asarray` accepts). Order is kept.

    Raises
    ------
    ConfigurationError
        If a name is empty or not a string, or an array has a dtype that may not travel.
    """

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Mapping[str, Any] | None = None) -> None:
        items: dict[str, Array] = {}
        for name, value in (arrays or {}).items():
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"parameter names must be non-empty strings, got {name!r}")
            array = np.asarray(value)
            if array.dtype not in ALLOWED_DTYPES:
                raise ConfigurationError(
                    f"parameter {name!r} has dtype {array.dtype}, which cannot travel; "
                    "use a numeric or bool dtype"
                )
            items[name] = _readonly(array)
        self._arrays = items

    # Mapping interface -------------------------------------------------------------------
    def __getitem__(self, name: str) -> Array:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._arrays.items())
        return f"ParameterSet({{{inner}}})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParameterSet):
            return NotImplemented
        return list(self.keys()) == list(other.keys()) and all(
            a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(self.values(), other.values(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    # Helpers -----------------------------------------------------------------------------
    @property
    def spec(self) -> ParameterSpec:
        """Names, shapes and dtypes, without the values."""
        return ParameterSpec(
            entries=tuple((k, tuple(v.shape), v.dtype.str) for k, v in self._arrays.items())
        )

    @property
    def nbytes(self) -> int:
        """Total size of the arrays in bytes."""
        return sum(int(a.nbytes) for a in self._arrays.values())

    @property
    def size(self) -> int:
        """Total number of scalars."""
        return sum(int(a.size) for a in self._arrays.values())

    def map(self, fn: Any) -> ParameterSet:
        """A new ParameterSet with ``fn(array)`` applied to each array."""
        return ParameterSet({k: fn(v) for k, v in self._arrays.items()})

    def copy(self) -> dict[str, Array]:
        """Writable copies of the arrays, as a plain dict (for in-place work)."""
        return {k: np.array(v, copy=True) for k, v in self._arrays.items()}

    def all_finite(self) -> bool:
        """True when no floating-point array holds NaN or ±Inf."""
        return all(is_finite(a) for a in self._arrays.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class ParameterSpec:
    """What a model's parameters look like: ordered (name, shape, dtype string) triples."""

    entries: tuple[tuple[str, tuple[int, ...], str], ...]

    def validate(self, params: ParameterSet, *, what: str = "parameters") -> None:
        """Check that ``params`` has exactly these names, shapes and dtypes and is finite.

        Raises
        ------
        ParameterMismatch
            On a missing or extra name, a wrong shape or a wrong dtype.
        PayloadError
            On NaN or ±Inf in a floating-point array.
        """
        expected = {name: (shape, dtype) for name, shape, dtype in self.entries}
        missing = [n for n in expected if n not in params]
        extra = [n for n in params if n not in expected]
        if missing or extra:
            raise ParameterMismatch(
                f"{what}: names do not match the model (missing {missing}, unexpected {extra})"
            )
        for name, (shape, dtype) in expected.items():
            array = params[name]
            if tuple(array.shape) != shape:
                raise ParameterMismatch(
                    f"{what}: {name!r} has shape {tuple(array.shape)}, the model expects {shape}"
                )
            if array.dtype.str != dtype:
                raise ParameterMismatch(
                    f"{what}: {name!r} has dtype {array.dtype.str}, the model expects {dtype}"
                )
            if not is_finite(array):
                raise PayloadError(f"{what}: {name!r} contains NaN or infinite values")
