"""The audit log's entry format: canonical JSON lines, hash-chained and signed.

Every participant (each node and the coordinator) keeps one log in its own folder and is
its only writer. Each line is one entry, a JSON object in canonical form (sorted keys,
separators ``,`` and ``:``, no ASCII escaping, UTF-8) ending in ``\\n``::

    {"data":{...},"event":"bundle.approved","hash":"<hex>","prev":"<hex>","seq":7,
     "sig":"<base64>","time":1767225600.25,"writer":"hosp-a"}

``seq``
    1-based position; the n-th line holds ``seq == n``.
``time``
    Seconds since the epoch (float) from the writer's clock.
``writer``
    The writer's participant name: the CN of the certificate its signature verifies with.
``event``
    A dotted name: ``dataset.registered``, ``agreement.signed``, ``bundle.approved``,
    ``bundle.revoked``, ``job.accepted``, ``job.refused``, ``round.sent``, ``round.received``,
    ``config.changed``, ``run.submitted``…
``data``
    A JSON object with string keys and no NaN or infinity; what the event is about.
``prev``
    The ``hash`` of the previous entry (:data:`GENESIS`, 64 zeros, for the first).
``hash``
    Hex SHA-256 of the canonical JSON of the entry without ``hash`` and ``sig``.
``sig``
    Standard base64 of the DER ECDSA P-256 / SHA-256 signature, by the writer's kit key, over
    the ASCII bytes of ``hash``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from biofed.core import BiofedError

LOG_FILE = "audit.jsonl"
"""The audit log's file name in a participant's folder."""

GENESIS = "0" * 64
"""The ``prev`` of the first entry."""

MAX_LINE_BYTES = 1 << 20
"""The longest entry line (1 MiB) that :meth:`AuditLog.append` writes and readers accept."""

_KEYS = ("data", "event", "hash", "prev", "seq", "sig", "time", "writer")
_HEX64 = re.compile(r"[0-9a-f]{64}")
SIGNATURE = ec.ECDSA(hashes.SHA256())
"""The entry signature scheme: ECDSA with SHA-256 (on the writer's P-256 kit key)."""


class AuditLogError(BiofedError, ValueError):
    """An audit log is damaged or belongs to another writer; nothing was appended."""

    code = "audit_log"


class BadEntry(ValueError):
    """One line of a log is not a well-formed, self-consistent entry (the reason is the text)."""


def canonical(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (sorted keys, no spaces, UTF-8, no NaN).

    Raises
    ------
    ValueError
        If ``value`` is not JSON (non-string keys, NaN, infinity, other types, lone surrogates).
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
        return text.encode("utf-8")
    except (TypeError, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One entry of an audit log (see the module docstring for the meaning of each field)."""

    seq: int
    time: float
    writer: str
    event: str
    data: Mapping[str, Any]
    prev: str
    hash: str
    sig: str

    def to_json(self) -> dict[str, Any]:
        """The entry as the JSON object stored on its line."""
        return {
            "data": dict(self.data),
            "event": self.event,
            "hash": self.hash,
            "prev": self.prev,
            "seq": self.seq,
            "sig": self.sig,
            "time": self.time,
            "writer": self.writer,
        }

    def line(self) -> bytes:
        """The entry's line in the log: its canonical JSON and ``\\n``."""
        return canonical(self.to_json()) + b"\n"


def entry_hash(
    *, seq: int, time: float, writer: str, event: str, data: Mapping[str, Any], prev: str
) -> str:
    """Hex SHA-256 of the canonical JSON of an entry without ``hash`` and ``sig``."""
    body = {
        "data": dict(data),
        "event": event,
        "prev": prev,
        "seq": seq,
        "time": time,
        "writer": writer,
    }
    return hashlib.sha256(canonical(body)).hexdigest()


def decode_signature(sig: str) -> bytes:
    """The DER bytes of a ``sig`` field; raises :class:`BadEntry` unless canonical base64."""
    try:
        der = base64.b64decode(sig.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise BadEntry("the signature is not base64") from exc
    if base64.b64encode(der).decode("ascii") != sig:
        raise BadEntry("the signature is not in canonical base64")
    return der


def parse_entry(raw: bytes) -> AuditEntry:
    """Parse one line (without its ``\\n``) and check its form and its own ``hash``.

    The chain link (``prev``), position (``seq``) and signature are the caller's to check.

    Raises
    ------
    BadEntry
        With the reason: not UTF-8 JSON, a field missing, extra or of the wrong type, not in
        canonical form, or a ``hash`` that does not match the content.

    Security notes
    --------------
    The log file is untrusted input. Requiring the exact canonical bytes (one serialisation
    per entry, in the spirit of RFC 8785 JCS) leaves no room for edits that keep the hash,
    such as duplicate keys, escapes or whitespace; NaN and infinity are refused.
    """

    def refuse(constant: str) -> Any:
        raise BadEntry(f"the entry holds {constant}, which is not JSON")

    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadEntry(f"the line is not UTF-8 JSON ({exc})") from exc
    if not isinstance(obj, dict) or sorted(obj) != list(_KEYS):
        raise BadEntry(f"an entry is a JSON object with exactly the keys {', '.join(_KEYS)}")
    seq, moment = obj["seq"], obj["time"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise BadEntry("seq must be a positive integer")
    if not isinstance(moment, float) or not math.isfinite(moment):
        raise BadEntry("time must be a finite float")
    texts = ("writer", "event", "prev", "hash", "sig")
    if not all(isinstance(obj[key], str) for key in texts) or not isinstance(obj["data"], dict):
        raise BadEntry("writer, event, prev, hash and sig must be strings and data an object")
    if not _HEX64.fullmatch(obj["prev"]) or not _HEX64.fullmatch(obj["hash"]):
        raise BadEntry("prev and hash must be 64 lowercase hex digits")
    try:
        exact = canonical(obj) == raw
    except ValueError as exc:
        raise BadEntry(f"the entry is not canonical JSON ({exc})") from exc
    if not exact:
        raise BadEntry("the line is not in canonical JSON form (it was edited)")
    entry = AuditEntry(
        seq=seq,
        time=moment,
        writer=obj["writer"],
        event=obj["event"],
        data=MappingProxyType(obj["data"]),
        prev=obj["prev"],
        hash=obj["hash"],
        sig=obj["sig"],
    )
    fields = {k: obj[k] for k in ("seq", "time", "writer", "event", "data", "prev")}
    if entry_hash(**fields) != entry.hash:
        raise BadEntry("the hash does not match the entry's content (the entry was changed)")
    return entry
