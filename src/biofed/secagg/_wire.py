"""Byte-level reading and writing for the secure-aggregation messages (no pickle, no eval).

Every message starts with the same five bytes, ``b"BFSA"`` and a one-byte format version,
then a one-byte kind. Integers are big-endian; identifiers are one length byte then ASCII;
ring vectors are little-endian unsigned words. A reader refuses truncated input, trailing
bytes, unknown versions and kinds, and lengths that do not match what the kind allows.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from biofed.core import ConfigurationError, PayloadError

MAGIC = b"BFSA"
#: Version of the byte format; a reader refuses any other.
FORMAT_VERSION = 1
#: Largest list (participants, shares) one message may carry.
MAX_ITEMS = 1 << 20

# Site and run ids as biofed.core.check_id defines them (1-128 of letters, digits, '.', '_',
# '-', starting with a letter or digit), matched in full: no trailing newline slips through.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IDS = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]{0,127}\n)*")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")


class Writer:
    """Collects the parts of one message and joins them once."""

    __slots__ = ("_parts",)

    def __init__(self, kind: int) -> None:
        self._parts: list[bytes | memoryview] = [MAGIC, bytes((FORMAT_VERSION, kind))]

    def u8(self, value: int) -> Writer:
        self._parts.append(bytes((value,)))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(_U64.pack(value))
        return self

    def f64(self, value: float) -> Writer:
        self._parts.append(_F64.pack(value))
        return self

    def raw(self, data: bytes | memoryview) -> Writer:
        self._parts.append(data)
        return self

    def ident(self, value: str) -> Writer:
        encoded = value.encode("ascii")
        self._parts.append(bytes((len(encoded),)))
        self._parts.append(encoded)
        return self

    def idents(self, values: tuple[str, ...]) -> Writer:
        self._parts.append(_encode_idents(values))
        return self

    def finish(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads one message front to back; every read checks that enough bytes are left."""

    __slots__ = ("_bytes", "_data", "_pos", "_size", "what")

    def __init__(self, data: bytes | bytearray | memoryview, kind: int, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PayloadError(f"{what} must be bytes, got {type(data).__name__}")
        self._data = memoryview(data).cast("B")
        # Slicing bytes is cheaper than slicing a memoryview and copying; keep both views.
        self._bytes = data if isinstance(data, bytes) else None
        self._size = len(self._data)
        self._pos = 0
        self.what = what
        if self.raw(4) != MAGIC:
            raise PayloadError(f"{what}: not a biofed secure-aggregation message")
        version = self.u8()
        if version != FORMAT_VERSION:
            raise PayloadError(
                f"{what}: format version {version} is not supported (this build reads "
                f"version {FORMAT_VERSION})"
            )
        found = self.u8()
        if found != kind:
            raise PayloadError(f"{what}: message kind {found} where kind {kind} was expected")

    def _need(self, count: int) -> int:
        """The position after ``count`` more bytes, or PayloadError if they are not there."""
        end = self._pos + count
        if count < 0 or end > self._size:
            raise PayloadError(
                f"{self.what}: truncated ({self._size} bytes where at least "
                f"{max(end, self._pos)} are needed)"
            )
        return end

    @property
    def position(self) -> int:
        return self._pos

    @property
    def buffer(self) -> memoryview:
        return self._data

    def skip(self, count: int) -> None:
        self._pos = self._need(count)

    def _unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        end = self._need(fmt.size)
        values = fmt.unpack_from(self._data, self._pos)
        self._pos = end
        return values

    def u8(self) -> int:
        end = self._need(1)
        value = self._data[self._pos]
        self._pos = end
        return value

    def u16(self) -> int:
        value: int = self._unpack(_U16)[0]
        return value

    def u32(self) -> int:
        value: int = self._unpack(_U32)[0]
        return value

    def u64(self) -> int:
        value: int = self._unpack(_U64)[0]
        return value

    def f64(self) -> float:
        value: float = self._unpack(_F64)[0]
        return value

    def raw(self, count: int) -> bytes:
        end = self._need(count)
        out = (
            self._bytes[self._pos : end]
            if self._bytes is not None
            else bytes(self._data[self._pos : end])
        )
        self._pos = end
        return out

    def ident(self) -> str:
        raw = self.raw(self.u8())
        text = raw.decode("ascii", errors="replace")
        if not _ID.fullmatch(text):
            raise PayloadError(f"{self.what}: invalid identifier {raw[:32]!r}")
        return text

    def count(self) -> int:
        value = self.u32()
        if value > MAX_ITEMS:
            raise PayloadError(f"{self.what}: {value} items exceed the limit of {MAX_ITEMS}")
        return value

    def idents(self) -> tuple[str, ...]:
        """A count, then that many length-prefixed ids (one pass, one regex for them all)."""
        count = self.count()
        data, pos, size = self._data, self._pos, self._size
        out = []
        for _ in range(count):
            if pos >= size:
                raise PayloadError(f"{self.what}: truncated in a list of identifiers")
            end = pos + 1 + data[pos]
            if end > size:
                raise PayloadError(f"{self.what}: truncated in a list of identifiers")
            out.append(bytes(data[pos + 1 : end]).decode("ascii", errors="replace"))
            pos = end
        self._pos = pos
        try:
            return check_idents(out, "identifiers")
        except ConfigurationError as exc:
            raise PayloadError(f"{self.what}: {exc}") from exc

    def finish(self) -> None:
        extra = len(self._data) - self._pos
        if extra:
            raise PayloadError(f"{self.what}: {extra} unexpected trailing bytes")


def check_sorted_unique(values: Iterable[str], what: str) -> tuple[str, ...]:
    """``values`` as a tuple if strictly increasing (sorted, no repeats).

    Raises ConfigurationError otherwise.
    """
    out = tuple(values)
    for before, after in itertools.pairwise(out):
        if not before < after:
            raise ConfigurationError(f"{what} must be sorted and free of repeats ({after!r})")
    return out


def check_ident(value: object, what: str) -> str:
    """``value`` if it is a valid site or run id, else ConfigurationError."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ConfigurationError(
            f"{what} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit; got {value!r}"[:300]
        )
    return value


def check_idents(values: Iterable[object], what: str) -> tuple[str, ...]:
    """``values`` as a tuple if every one is a valid id (one regex match for all of them)."""
    out: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ConfigurationError(f"{what} must be strings, got {value!r}"[:300])
        out.append(value)
    joined = "\n".join(out) + "\n" if out else ""
    if joined.count("\n") != len(out) or not _IDS.fullmatch(joined):
        for value in out:
            check_ident(value, what)
    return tuple(out)


@lru_cache(maxsize=16)
def _encode_idents(values: tuple[str, ...]) -> bytes:
    """A count and the length-prefixed ids; cached because every site's roster repeats the
    same participant list."""
    parts = [_U32.pack(len(values))]
    for value in values:
        encoded = value.encode("ascii")
        parts.append(bytes((len(encoded),)))
        parts.append(encoded)
    return b"".join(parts)


def check_round(value: object) -> int:
    """``value`` if it is a round number (an integer in [0, 2^64)), else ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ConfigurationError(f"round must be an integer in [0, 2^64), got {value!r}")
    return value


def check_sorted_idents(values: Iterable[object], what: str) -> tuple[str, ...]:
    """``values`` as a tuple if they are valid ids, sorted and distinct.

    Cached: a roster's participant list is checked once, not once per site it goes to.
    """
    out = tuple(values)
    try:
        return _check_sorted_idents(out, what)
    except TypeError as exc:  # unhashable items: not ids in any case
        raise ConfigurationError(f"{what} must be strings") from exc


@lru_cache(maxsize=16)
def _check_sorted_idents(values: tuple[object, ...], what: str) -> tuple[str, ...]:
    return check_sorted_unique(check_idents(values, what), what)
