"""The dataset registry at a node: which local files a site offers, as they were when its
operator registered them.

Registering reads the file once and records its schema, row count and a SHA-256 of its
bytes. Before use, the node re-checks the file; a file that changed since registration is
flagged and refused until the operator registers it again (``replace=True``), so a study
never silently trains on data nobody reviewed.

Security notes
--------------
Threat: the data behind a dataset name changes after the site's review (a file swapped or
edited, by accident or not), so a study would run on data outside what was approved. The
content digest (SHA-256, FIPS 180-4) is checked before every use; a mismatch is sticky (the
flag persists across restarts) until re-registration, and each change of state can be
written to the audit log through the ``audit`` hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from biofed.core import ConfigurationError, DataError, PolicyViolation, check_id
from biofed.core.checks import check_int
from biofed.data import describe_table
from biofed.governance._files import write_atomically
from biofed.governance._hooks import AuditHook, no_audit

DatasetState = Literal["ok", "changed", "missing"]
_FORMAT = 1


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredDataset:
    """A dataset as its site registered it."""

    name: str
    path: str
    format: str
    columns: tuple[tuple[str, str], ...]
    num_rows: int
    sha256: str
    size: int
    registered_at: float
    description: str = ""
    tags: tuple[str, ...] = ()
    min_cohort: int = 10
    targets: Mapping[str, str] = field(default_factory=dict)
    split_column: str | None = None
    changed: bool = False

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["columns"] = [list(c) for c in self.columns]
        out["tags"] = list(self.tags)
        out["targets"] = dict(self.targets)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisteredDataset:
        """Parse the stored form."""
        try:
            return cls(
                **{
                    **data,
                    "columns": tuple(tuple(c) for c in data["columns"]),
                    "tags": tuple(data.get("tags", ())),
                    "targets": dict(data.get("targets", {})),
                }
            )
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"dataset registry entry is corrupt: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class DatasetCheck:
    """The outcome of re-checking a registered dataset's file."""

    name: str
    state: DatasetState
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True when the file is exactly what was registered."""
        return self.state == "ok"


class DatasetRegistry:
    """A node's registered datasets, kept in ``<node folder>/datasets.json``.

    Parameters
    ----------
    path:
        The registry file (created on first registration; written atomically).
    audit:
        Called with (event, data) on every change: ``dataset.registered``,
        ``dataset.changed``, ``dataset.removed``.
    clock:
        Wall clock (injected for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._audit = audit or no_audit
        self._clock = clock
        self._lock = threading.Lock()

    # -- storage -----------------------------------------------------------------------------
    def _load(self) -> dict[str, RegisteredDataset]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot read the dataset registry {self.path}: {exc}"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ConfigurationError(f"{self.path} is not a biofed dataset registry")
        return {d["name"]: RegisteredDataset.from_json(d) for d in data.get("datasets", [])}

    def _save(self, entries: Mapping[str, RegisteredDataset]) -> None:
        payload = {"format": _FORMAT, "datasets": [e.to_json() for e in entries.values()]}
        write_atomically(self.path, json.dumps(payload, indent=2, sort_keys=True).encode())

    # -- operations ----------------------------------------------------------------------------
    def add(
        self,
        name: str,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        description: str = "",
        tags: tuple[str, ...] = (),
        min_cohort: int = 10,
        targets: Mapping[str, str] | None = None,
        split_column: str | None = None,
        replace_existing: bool = False,
    ) -> RegisteredDataset:
        """Register (or, with ``replace_existing``, re-register) a dataset file."""
        check_id(name, what="dataset name")
        check_int(min_cohort, "min_cohort", minimum=1)
        file = Path(path).resolve()
        schema = describe_table(file, format=format)  # type: ignore[arg-type]
        names = {c for c, _ in schema.columns}
        wanted = {*(targets or {}).values(), *([split_column] if split_column else [])}
        if wanted - names:
            raise DataError(f"{file.name} has no column(s) {sorted(wanted - names)}")
        with self._lock:
            entries = self._load()
            if name in entries and not replace_existing:
                raise ConfigurationError(
                    f"dataset {name!r} is already registered; pass replace to re-register it"
                )
            entry = RegisteredDataset(
                name=name,
                path=str(file),
                format=schema.format,
                columns=schema.columns,
                num_rows=schema.num_rows,
                sha256=file_digest(file),
                size=file.stat().st_size,
                registered_at=self._clock(),
                description=description,
                tags=tuple(tags),
                min_cohort=min_cohort,
                targets=dict(targets or {}),
                split_column=split_column,
            )
            entries[name] = entry
            self._save(entries)
        self._audit(
            "dataset.registered",
            {
                "name": name,
                "sha256": entry.sha256,
                "rows": entry.num_rows,
                "columns": [c for c, _ in entry.columns],
                "min_cohort": min_cohort,
            },
        )
        return entry

    def list(self) -> list[RegisteredDataset]:
        """Every registered dataset, by name."""
        with self._lock:
            return sorted(self._load().values(), key=lambda e: e.name)

    def get(self, name: str) -> RegisteredDataset:
        """One dataset; LookupError if it is not registered."""
        with self._lock:
            entries = self._load()
        if name not in entries:
            raise LookupError(f"no dataset {name!r} is registered at this node")
        return entries[name]

    def remove(self, name: str) -> None:
        """Unregister a dataset (the file is left alone)."""
        with self._lock:
            entries = self._load()
            if name not in entries:
                raise LookupError(f"no dataset {name!r} is registered at this node")
            del entries[name]
            self._save(entries)
        self._audit("dataset.removed", {"name": name})

    def check(self, name: str) -> DatasetCheck:
        """Re-read the file and compare it with the registration; flags a change."""
        entry = self.get(name)
        if entry.changed:
            return DatasetCheck(
                name=name,
                state="changed",
                reason="the file changed since registration; register it again",
            )
        file = Path(entry.path)
        if not file.is_file():
            return DatasetCheck(name=name, state="missing", reason=f"{file} no longer exists")
        if file.stat().st_size == entry.size and file_digest(file) == entry.sha256:
            return DatasetCheck(name=name, state="ok")
        with self._lock:
            entries = self._load()
            entries[name] = replace(entries[name], changed=True)
            self._save(entries)
        self._audit("dataset.changed", {"name": name, "registered_sha256": entry.sha256})
        return DatasetCheck(
            name=name,
            state="changed",
            reason="the file changed since registration; register it again",
        )

    def require(self, name: str) -> RegisteredDataset:
        """The dataset if its file is exactly as registered, else PolicyViolation."""
        try:
            result = self.check(name)
        except LookupError as exc:
            raise PolicyViolation(str(exc)) from None
        if not result.ok:
            raise PolicyViolation(f"dataset {name!r}: {result.reason}")
        return self.get(name)
