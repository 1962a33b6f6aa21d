"""The tamper-evident audit log that every participant appends to (``audit.jsonl``).

The entry format, its hashing and its signature are in :mod:`biofed.governance._audit._entry`;
checking a log is :func:`~biofed.governance._audit._verify.verify_log`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import math
import os
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from biofed.core import ConfigurationError, check_id
from biofed.governance._audit._entry import (
    GENESIS,
    MAX_LINE_BYTES,
    AuditEntry,
    AuditLogError,
    BadEntry,
    canonical,
    entry_hash,
    parse_entry,
)
from biofed.governance._audit._signer import AuditSigner

_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class _Tail:
    stamp: tuple[int, int]  # (inode, size) of the file when its last entry was read
    seq: int
    hash: str


class AuditLog:
    """An append-only, hash-chained, signed audit log file with one writer.

    Opening reads the last entry to continue the chain (creating an empty file if there is
    none). :meth:`append` may be called from many threads and from many processes that open
    the same file with the same signer; they keep one chain.

    Parameters
    ----------
    path:
        The log file (``audit.jsonl`` in the participant's folder, which must exist).
    signer:
        The writer: every entry carries its name and signature.
    clock:
        Seconds since the epoch (injected for tests).

    Raises
    ------
    AuditLogError
        If the last line is incomplete or damaged, or was not written by ``signer``: the
        chain cannot be continued, and forking it silently would hide what happened.

    Security notes
    --------------
    Tamper evidence, not tamper proofing: anyone who can write the file can damage it, but
    cannot change, insert, remove or reorder an entry without :func:`verify_log` naming the
    place, nor rewrite the chain without the writer's key (hash chain as in RFC 6962's
    append-only logs, ECDSA signatures per FIPS 186-5). Dropping the newest entries is only
    detectable against a head recorded elsewhere: :meth:`head` travels with every message to
    the other party, which records it in its own log (:mod:`~biofed.governance._audit._anchor`),
    and ``biofed audit verify LOG --against OTHER`` checks it. ``fcntl.flock`` serialises
    writers; each entry is written with one ``write`` and ``fsync``-ed before :meth:`append`
    returns (durable, POSIX).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signer: AuditSigner,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = Path(path)
        self._signer = signer
        self._clock = clock
        self._lock = threading.Lock()
        self._tail: _Tail | None = None
        if not self._path.parent.is_dir():
            raise ConfigurationError(
                f"cannot keep an audit log in {self._path.parent}: no such folder"
            )
        with self._lock, self._locked() as fd:
            self._read_tail(fd)

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, writer={self._signer.name!r})"

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def writer(self) -> str:
        """The writer's participant name."""
        return self._signer.name

    def follower(self, *, signed_events: Collection[str] | None = None) -> AuditFollower:
        """A reader of this log's entries, each checked against this writer's key (only
        those of ``signed_events`` when given; the chain is checked for all)."""
        return AuditFollower(self._path, self._signer, signed_events=signed_events)

    def head(self) -> str:
        """The log's head, ``"<seq>:<hash>"`` of its newest entry (``""`` while empty).

        This is what the other party of an exchange records in its own log (see
        :mod:`biofed.governance._audit._anchor`); it covers every entry up to ``seq``.

        Raises
        ------
        AuditLogError
            If the log was damaged or written by someone else since it was opened.
        """
        with self._lock, self._locked() as fd:
            tail = self._read_tail(fd)
        return "" if tail.seq == 0 else f"{tail.seq}:{tail.hash}"

    def append(self, event: str, data: Mapping[str, Any] | None = None) -> AuditEntry:
        """Sign and append one entry, durably, and return it.

        Parameters
        ----------
        event:
            The event name, a biofed id such as ``"bundle.approved"``.
        data:
            A JSON object: string keys, values of JSON types, no NaN or infinity.

        Raises
        ------
        ConfigurationError
            If ``event`` or ``data`` is not acceptable (nothing is written).
        AuditLogError
            If the log was damaged or written by someone else since it was opened.
        """
        check_id(event, what="audit event")
        payload = _json_object(data)
        with self._lock, self._locked() as fd:
            tail = self._read_tail(fd)
            moment = float(self._clock())
            if not math.isfinite(moment):
                raise ConfigurationError(f"the audit clock returned {moment!r}")
            digest = entry_hash(
                seq=tail.seq + 1,
                time=moment,
                writer=self._signer.name,
                event=event,
                data=payload,
                prev=tail.hash,
            )
            sig = base64.b64encode(self._signer.sign(digest.encode("ascii"))).decode("ascii")
            entry = AuditEntry(
                seq=tail.seq + 1,
                time=moment,
                writer=self._signer.name,
                event=event,
                data=MappingProxyType(payload),
                prev=tail.hash,
                hash=digest,
                sig=sig,
            )
            line = entry.line()
            if len(line) > MAX_LINE_BYTES:
                raise ConfigurationError(
                    f"audit entry {event!r} is {len(line)} bytes; the limit is {MAX_LINE_BYTES}"
                    " (log digests of large payloads, not the payloads)"
                )
            _write_all(fd, line, tail.stamp[1])
            self._tail = _Tail((tail.stamp[0], tail.stamp[1] + len(line)), entry.seq, digest)
            return entry

    @contextmanager
    def _locked(self) -> Iterator[int]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        created = not self._path.exists()
        fd = os.open(self._path, flags, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                _fsync_folder(self._path.parent)
            yield fd
        finally:
            os.close(fd)  # also releases the lock

    def _read_tail(self, fd: int) -> _Tail:
        info = os.fstat(fd)
        stamp = (info.st_ino, info.st_size)
        if self._tail is not None and self._tail.stamp == stamp:
            return self._tail
        if info.st_size == 0:
            self._tail = _Tail(stamp, 0, GENESIS)
            return self._tail
        raw = _last_line(fd, info.st_size)
        where = f"the last line of {self._path}"
        advice = (
            "run `biofed audit verify` on it, keep it as evidence and start a new log; "
            "nothing was appended"
        )
        if raw is None:
            raise AuditLogError(f"{where} is incomplete (truncated or a torn write): {advice}")
        try:
            entry = parse_entry(raw)
        except BadEntry as exc:
            raise AuditLogError(f"{where} is damaged ({exc}): {advice}") from exc
        if not self._signer.signed_by_me(entry):
            raise AuditLogError(
                f"{where} was not written and signed by {self._signer.name!r} "
                f"(it names {entry.writer!r}): one log per writer; {advice}"
            )
        self._tail = _Tail(stamp, entry.seq, entry.hash)
        return self._tail


class AuditFollower:
    """Reads one's own audit log incrementally: each call returns the entries appended since
    the last one, each checked (canonical form, chain, position, and signed by ``signer``;
    with ``signed_events``, the signature of those events only: the chain already fixes the
    others, and a reader that derives state from some events needs only theirs signed).

    Used to derive state from the log itself rather than from an unsigned side file (the
    site's bundle approvals, :class:`~biofed.governance.ApprovalStore`).

    Security notes
    --------------
    Threat: state kept in a plain file next to the log (``approvals.json``) is edited by hand,
    bypassing the audited command. Read back from the signed, hash-chained log, such state
    can only come from entries signed with the writer's key (ECDSA P-256, FIPS 186-5) in an
    unbroken chain (RFC 6962-style). A log replaced or shortened under the reader starts the
    reading over (``reset``), so nothing it no longer holds is remembered.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signer: AuditSigner,
        *,
        signed_events: Collection[str] | None = None,
    ) -> None:
        self._path = Path(path)
        self._signer = signer
        self._signed_events = None if signed_events is None else frozenset(signed_events)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None  # (inode, offset) read so far
        self._seq = 0
        self._prev = GENESIS

    def read(self) -> tuple[list[AuditEntry], bool]:
        """``(new entries, reset)``: ``reset`` is true when the log was replaced or shortened
        since the last call (the entries then start from the first one; forget the rest).

        Raises
        ------
        AuditLogError
            If an entry is damaged, out of place or not signed by the writer.
        """
        with self._lock:
            try:
                stream = self._path.open("rb")
            except FileNotFoundError:
                reset = self._stamp is not None
                self._stamp, self._seq, self._prev = None, 0, GENESIS
                return [], reset
            with stream:
                info = os.fstat(stream.fileno())
                reset = self._stamp is not None and (
                    self._stamp[0] != info.st_ino or info.st_size < self._stamp[1]
                )
                if reset or self._stamp is None:
                    self._stamp, self._seq, self._prev = (info.st_ino, 0), 0, GENESIS
                offset = self._stamp[1]
                stream.seek(offset)
                entries: list[AuditEntry] = []
                while (raw := stream.readline(MAX_LINE_BYTES + 1)).endswith(b"\n"):
                    entries.append(self._check(raw[:-1], self._seq + 1))
                    offset += len(raw)
                    self._seq, self._prev = entries[-1].seq, entries[-1].hash
                    self._stamp = (info.st_ino, offset)
            return entries, reset

    def _check(self, raw: bytes, seq: int) -> AuditEntry:
        where = f"{self._path} entry {seq}"
        try:
            entry = parse_entry(raw)
        except BadEntry as exc:
            raise AuditLogError(f"{where} is damaged ({exc})") from exc
        if entry.seq != seq or entry.prev != self._prev:
            raise AuditLogError(f"{where} is out of place: the chain is broken")
        if entry.writer != self._signer.name:
            raise AuditLogError(f"{where} names writer {entry.writer!r}, not {self._signer.name!r}")
        checked = self._signed_events is None or entry.event in self._signed_events
        if checked and not self._signer.signed_by_me(entry):
            raise AuditLogError(f"{where} is not signed by {self._signer.name!r}")
        return entry


def _json_object(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """``data`` as the plain JSON object a reader of the log will see."""
    if data is None:
        return {}
    if not isinstance(data, Mapping) or not all(isinstance(key, str) for key in data):
        raise ConfigurationError("audit data must be a mapping with string keys")
    try:
        value = json.loads(canonical(dict(data)))
    except ValueError as exc:
        raise ConfigurationError(f"audit data must be JSON without NaN or infinity: {exc}") from exc
    assert isinstance(value, dict)
    return value


def _last_line(fd: int, size: int) -> bytes | None:
    """The last line of the file without its newline, or None if it has no newline."""
    if os.pread(fd, 1, size - 1) != b"\n":
        return None
    end = size - 1
    start = end
    parts: list[bytes] = []
    while start > 0 and end - start <= MAX_LINE_BYTES:
        step = min(_CHUNK, start)
        chunk = os.pread(fd, step, start - step)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            parts.append(chunk[cut + 1 :])
            start -= step - cut - 1
            break
        parts.append(chunk)
        start -= step
    return b"".join(reversed(parts))


def _write_all(fd: int, line: bytes, size_before: int) -> None:
    view = memoryview(line)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError:
        # Never leave a torn line behind: we hold the lock, so the file ended at size_before.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size_before)
        raise


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
