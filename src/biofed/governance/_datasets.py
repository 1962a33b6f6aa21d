"""The dataset registry at a node: which local files and OMOP CDMs a site offers, as they
were when its operator registered them.

Registering a file reads it once and records its schema, row count and a SHA-256 of its
bytes. Registering an OMOP CDM (:meth:`DatasetRegistry.add_omop`) records its CDM version,
its ``cdm_source`` row, its table row counts and its content fingerprint
(:meth:`~biofed.data.OmopDatabase.describe`). Before use, the node re-checks the file or
the CDM; one that changed since registration is flagged and refused until the operator
registers it again (``replace=True``), so a study never silently trains on data nobody
reviewed.

The registry also keeps each dataset's last data-quality report
(:meth:`DatasetRegistry.check_quality`); the site policy refuses training on a dataset whose
last report failed a fatal check.

Security notes
--------------
Threat: the data behind a dataset name changes after the site's review (a file swapped or
edited, by accident or not), so a study would run on data outside what was approved. The
content digest (SHA-256, FIPS 180-4) is checked before every use; a mismatch is sticky (the
flag persists across restarts) until re-registration, and each change of state can be
written to the audit log through the ``audit`` hook.

Re-hashing a large file or fingerprinting a CDM before every instruction costs seconds per
round, so for data held in local files (a CSV/Parquet file, a DuckDB CDM and its ``.wal``)
a registry remembers, per dataset, the file's identity and change times at its last
successful check — device, inode, size, ``st_mtime_ns`` and ``st_ctime_ns``, the quick
check of rsync and make — and skips the digest while they are unchanged. Any write
changes ``st_ctime``, which user space cannot set back (``utime`` restores only mtime), so
an edit that keeps the size and mtime is still re-hashed. A CDM behind a database URL has
no such cheap witness and is fingerprinted every time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from biofed.core import ConfigurationError, DataError, PolicyViolation, check_id
from biofed.core.checks import check_int
from biofed.data import (
    FileExpectations,
    OmopDatabase,
    QualityReport,
    describe_table,
    run_quality_checks,
)
from biofed.governance._files import write_atomically
from biofed.governance._hooks import AuditHook, no_audit
from biofed.governance._omop_source import check_omop_url, omop_connect_url, safe_url

DatasetState = Literal["ok", "changed", "missing"]
DatasetKind = Literal["file", "omop"]
_FORMAT = 1
#: Tables without which no study spec compiles: a database lacking one is not registered
#: as an OMOP CDM.
CDM_CORE_TABLES = ("person", "observation_period", "concept", "concept_ancestor")


def _expectations(entry: RegisteredDataset) -> FileExpectations:
    """What a registered file must hold: its registered schema; its targets complete (an
    event column 0/1, a time column ≥ 0); its split column complete and train/test."""
    targets = dict(entry.targets)
    required = [*targets.values(), *([entry.split_column] if entry.split_column else [])]
    binary = [c for k, c in targets.items() if k in ("event", "label")]
    ranges = {c: (0.0, None) for k, c in targets.items() if k == "time"}
    allowed = {entry.split_column: ("train", "test")} if entry.split_column else {}
    return FileExpectations(
        columns=entry.columns,
        required=tuple(dict.fromkeys(required)),
        binary=tuple(binary),
        ranges=ranges,
        allowed=allowed,
    )


def _stat(path: Path) -> tuple[int, ...]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (-1,)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _file_identity(entry: RegisteredDataset) -> tuple[int, ...] | None:
    """The identity and change times of the local file(s) behind ``entry`` (a DuckDB CDM's
    write-ahead log included), or None for a CDM behind a database URL or a missing file."""
    if entry.kind != "omop":
        files = [Path(entry.path)]
    elif entry.path.startswith("duckdb:///"):
        files = [Path(entry.path.removeprefix("duckdb:///"))]
    elif "://" in entry.path:
        return None
    else:
        files = [Path(entry.path)]
    if entry.kind == "omop":
        files.append(files[0].with_name(files[0].name + ".wal"))
    identity = _stat(files[0])
    if identity == (-1,):
        return None
    return identity + tuple(v for f in files[1:] for v in _stat(f))


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityRecord:
    """A dataset's last data-quality check, as the registry keeps it.

    Attributes
    ----------
    checked_at:
        When it ran (seconds since the epoch).
    fingerprint:
        The dataset's SHA-256 / CDM fingerprint the checks ran on.
    fatal:
        The check selectors the site marked fatal for this run.
    report:
        The results (with record counts: for the site only; see
        :meth:`~biofed.data.QualityReport.redacted`).
    """

    checked_at: float
    fingerprint: str
    fatal: tuple[str, ...] = ()
    report: QualityReport

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "checked_at": self.checked_at,
            "fingerprint": self.fingerprint,
            "fatal": list(self.fatal),
            "report": self.report.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QualityRecord:
        """Parse the stored form."""
        try:
            return cls(
                checked_at=float(data["checked_at"]),
                fingerprint=str(data["fingerprint"]),
                fatal=tuple(data.get("fatal", ())),
                report=QualityReport.from_json(data["report"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigurationError(f"dataset registry quality record is corrupt: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisteredDataset:
    """A dataset as its site registered it.

    For an OMOP CDM (``kind == "omop"``): ``path`` is its password-free location (a DuckDB
    file's absolute path or the database URL), ``format`` is ``"omop"``, ``columns`` is
    empty, ``num_rows`` counts ``person``, ``sha256`` is the CDM fingerprint and ``size``
    the DuckDB file's size (0 for a server); ``password_env`` names the environment
    variable holding the password, if any.
    """

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
    kind: DatasetKind = "file"
    password_env: str | None = None
    schema: str | None = None
    cdm_version: str = ""
    cdm_source: Mapping[str, str] = field(default_factory=dict)
    row_counts: Mapping[str, int] = field(default_factory=dict)
    quality: QualityRecord | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["columns"] = [list(c) for c in self.columns]
        out["tags"] = list(self.tags)
        out["targets"] = dict(self.targets)
        out["cdm_source"] = dict(self.cdm_source)
        out["row_counts"] = dict(self.row_counts)
        out["quality"] = None if self.quality is None else self.quality.to_json()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegisteredDataset:
        """Parse the stored form."""
        quality = data.get("quality")
        try:
            return cls(
                **{
                    **data,
                    "columns": tuple(tuple(c) for c in data["columns"]),
                    "tags": tuple(data.get("tags", ())),
                    "targets": dict(data.get("targets", {})),
                    "cdm_source": dict(data.get("cdm_source", {})),
                    "row_counts": dict(data.get("row_counts", {})),
                    "quality": None if quality is None else QualityRecord.from_json(quality),
                }
            )
        except (KeyError, TypeError) as exc:
            raise ConfigurationError(f"dataset registry entry is corrupt: {exc}") from exc

    @property
    def location(self) -> str:
        """Where the data lives (a file path, or an OMOP CDM's password-free location)."""
        return self.path


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
    environ:
        Where an OMOP CDM's ``password_env`` is looked up when the registry connects
        (default: the process environment).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        audit: AuditHook | None = None,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._audit = audit or no_audit
        self._clock = clock
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._lock = threading.Lock()
        #: name → (digest, file identity) at its last successful check (see Security notes)
        self._verified: dict[str, tuple[str, tuple[int, ...]]] = {}

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

    def add_omop(
        self,
        name: str,
        url: str,
        *,
        password_env: str | None = None,
        schema: str | None = None,
        description: str = "",
        tags: tuple[str, ...] = (),
        min_cohort: int = 10,
        replace_existing: bool = False,
    ) -> RegisteredDataset:
        """Register (or re-register) an OMOP CDM: its version, ``cdm_source`` row, table row
        counts and fingerprint are recorded.

        Parameters
        ----------
        url:
            A DuckDB file, ``duckdb:///path`` or a database URL *without* a password.
        password_env:
            The environment variable the node reads the database password from.
        schema:
            The schema holding the CDM tables (DuckDB, PostgreSQL).

        Security notes
        --------------
        A URL carrying a password is refused (see :mod:`biofed.governance._omop_source`);
        only the password-free location and the variable's name are stored.
        """
        check_id(name, what="dataset name")
        check_int(min_cohort, "min_cohort", minimum=1)
        location = check_omop_url(url, password_env=password_env)
        with self._open(location, password_env, schema) as db:
            info = db.describe()
        # A database that is not a CDM (an empty file, a fresh SQLite file the driver just
        # created, another application's schema) must not be registered as one.
        missing = [t for t in CDM_CORE_TABLES if t not in info.row_counts]
        if missing:
            raise ConfigurationError(
                f"{safe_url(location)!r} is not an OMOP CDM: it has no "
                f"{', '.join(missing)} table(s)" + (f" in schema {schema!r}" if schema else "")
            )
        with self._lock:
            entries = self._load()
            if name in entries and not replace_existing:
                raise ConfigurationError(
                    f"dataset {name!r} is already registered; pass replace to re-register it"
                )
            file = Path(location)
            entry = RegisteredDataset(
                name=name,
                path=location,
                format="omop",
                columns=(),
                num_rows=int(info.row_counts.get("person", 0)),
                sha256=info.fingerprint,
                size=file.stat().st_size if file.is_file() else 0,
                registered_at=self._clock(),
                description=description,
                tags=tuple(tags),
                min_cohort=min_cohort,
                kind="omop",
                password_env=password_env,
                schema=schema,
                cdm_version=info.cdm_version,
                cdm_source=dict(info.cdm_source),
                row_counts=dict(info.row_counts),
            )
            entries[name] = entry
            self._save(entries)
        self._audit(
            "dataset.registered",
            {
                "name": name,
                "kind": "omop",
                "sha256": entry.sha256,
                "rows": entry.num_rows,
                "cdm_version": entry.cdm_version,
                "min_cohort": min_cohort,
            },
        )
        return entry

    def _open(self, location: str, password_env: str | None, schema: str | None) -> OmopDatabase:
        url = omop_connect_url(location, password_env, self._environ)
        try:
            return OmopDatabase.open(url, schema=schema)
        except ConfigurationError as exc:
            # never let a driver echo the password back
            raise ConfigurationError(
                str(exc).replace(url, safe_url(location)) if url != location else str(exc)
            ) from None

    def open(self, name: str) -> OmopDatabase:
        """Open a registered OMOP CDM read-only (its password from the environment)."""
        entry = self.get(name)
        if entry.kind != "omop":
            raise ConfigurationError(f"dataset {name!r} is a file, not an OMOP CDM")
        return self._open(entry.path, entry.password_env, entry.schema)

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
        identity = _file_identity(entry)  # taken before reading: a write meanwhile changes it
        if identity is not None and self._verified.get(name) == (entry.sha256, identity):
            return DatasetCheck(name=name, state="ok")
        if entry.kind == "omop":
            try:
                with self._open(entry.path, entry.password_env, entry.schema) as db:
                    fingerprint = db.describe().fingerprint
            except (ConfigurationError, DataError) as exc:
                return DatasetCheck(
                    name=name, state="missing", reason=f"cannot read the CDM: {exc}"
                )
            if fingerprint == entry.sha256:
                return self._verified_ok(name, entry, identity)
        else:
            file = Path(entry.path)
            if not file.is_file():
                return DatasetCheck(name=name, state="missing", reason=f"{file} no longer exists")
            if file.stat().st_size == entry.size and file_digest(file) == entry.sha256:
                return self._verified_ok(name, entry, identity)
        self._verified.pop(name, None)
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

    def _verified_ok(
        self, name: str, entry: RegisteredDataset, identity: tuple[int, ...] | None
    ) -> DatasetCheck:
        if identity is not None:
            self._verified[name] = (entry.sha256, identity)
        return DatasetCheck(name=name, state="ok")

    def check_quality(
        self, name: str, *, fatal: Collection[str] = (), today: dt.date | None = None
    ) -> QualityReport:
        """Run the data-quality checks on a registered dataset (unchanged since
        registration) and keep the report as its last check.

        Parameters
        ----------
        fatal:
            Check types or keys the site treats as fatal besides the defaults (from
            ``node.toml``'s ``fatal_checks``).
        today:
            OMOP: the latest plausible birth date (default: today).

        Raises
        ------
        PolicyViolation
            If the dataset changed since registration (register it again first).
        """
        entry = self.require(name)
        selectors = tuple(sorted(fatal))
        if entry.kind == "omop":
            with self.open(name) as db:
                report = run_quality_checks(db, fatal=selectors, today=today)
        else:
            report = run_quality_checks(entry.path, fatal=selectors, expect=_expectations(entry))
        record = QualityRecord(
            checked_at=self._clock(), fingerprint=entry.sha256, fatal=selectors, report=report
        )
        with self._lock:
            entries = self._load()
            if name not in entries or entries[name].sha256 != entry.sha256:
                raise PolicyViolation(f"dataset {name!r} changed while it was being checked")
            entries[name] = replace(entries[name], quality=record)
            self._save(entries)
        self._audit(
            "dataset.quality_checked",
            {
                "name": name,
                "sha256": entry.sha256,
                "passed": report.passed,
                "checks": len(report.checks),
                "failed": [c.key for c in report.failures],
                "fatal_failed": [c.key for c in report.fatal_failures],
            },
        )
        return report

    def require(self, name: str) -> RegisteredDataset:
        """The dataset if its file is exactly as registered, else PolicyViolation."""
        try:
            result = self.check(name)
        except LookupError as exc:
            raise PolicyViolation(str(exc)) from None
        if not result.ok:
            raise PolicyViolation(f"dataset {name!r}: {result.reason}")
        return self.get(name)
