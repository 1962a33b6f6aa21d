"""Task bundles: a researcher's task directory as one file, named by a digest of its content.

A bundle is a zip archive of a task directory: ``task.py`` (which defines
``make_task(**options) -> Task``) plus optional other ``.py`` modules and data files, and a
reserved ``BUNDLE-MANIFEST`` entry. The manifest is canonical text::

    biofed-bundle-v1
    <sha256 of content>  <path>
    ...

with one line per file in sorted path order, and the bundle's **digest** is the SHA-256 of
those bytes. The digest therefore depends on the files' paths and bytes only, never on
archive metadata (timestamps, compression, entry order). :func:`pack_bundle` writes entries in
sorted order with a fixed timestamp and fixed permissions, so packing the same directory twice
gives byte-identical archives.

A site approves a bundle by digest in its local
:class:`~biofed.governance._approvals.ApprovalStore`; the node runs a bundle only if its digest
is approved (and listed in a study agreement the site signed).

Security notes
--------------
Threat: a bundle is researcher-supplied bytes that cross a trust boundary; a crafted archive
could write outside the directory it is unpacked in (zip-slip: ``../``, absolute paths,
symlinks), exhaust memory or disk (zip bombs, huge entry counts), or differ from the code the
site's operator reviewed. :func:`read_bundle` validates every entry name against a strict
pattern (relative POSIX path of ``[A-Za-z0-9_.-]`` components, none hidden, no ``..``), refuses
symlink and duplicate entries, caps the size of every file (counting the bytes actually
decompressed, not the sizes the archive claims), the total and the entry count, checks every
file against the embedded manifest and, given ``expected_digest``, the digest itself. Nothing
in a bundle is executed or unpickled here; running the code is the node's sandbox's job.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType

from biofed.core import ConfigurationError, PayloadError
from biofed.governance._files import write_atomically

#: The file every bundle must contain; it defines ``make_task(**options)``.
TASK_FILE = "task.py"
#: The reserved archive entry holding the canonical manifest.
MANIFEST_NAME = "BUNDLE-MANIFEST"
#: Largest single file in a bundle.
MAX_FILE_BYTES = 16 * 1024**2
#: Largest total content of a bundle.
MAX_BUNDLE_BYTES = 64 * 1024**2
#: Most files in a bundle.
MAX_FILES = 1000

_MAGIC = "biofed-bundle-v1"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc", ".pyo")


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex characters (a SHA-256), else raise.

    Raises
    ------
    ConfigurationError
        If it is not.
    """
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ConfigurationError(
            f"a bundle digest is 64 lowercase hex characters (SHA-256), got {digest!r}"
        )
    return digest


def check_bundle_path(path: str) -> str:
    """Return ``path`` if it is a safe relative file path inside a bundle, else raise.

    Raises
    ------
    PayloadError
        For an absolute path, ``..``, a hidden component, a backslash, or any character
        outside ``[A-Za-z0-9_.-]``.
    """
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or len(path) > 1024
        or not all(_COMPONENT.match(p) for p in parts)
        or any(p in {".", ".."} for p in parts)
    ):
        raise PayloadError(
            f"unsafe path {path!r} in bundle: paths must be relative, made of "
            "'A-Za-z0-9_.-' components that do not start with '.'"
        )
    if path == MANIFEST_NAME:
        raise PayloadError(f"{MANIFEST_NAME!r} is reserved and cannot name a bundle file")
    return path


def _manifest(files: Mapping[str, bytes]) -> bytes:
    lines = [_MAGIC]
    lines += [f"{hashlib.sha256(files[p]).hexdigest()}  {p}" for p in sorted(files)]
    return ("\n".join(lines) + "\n").encode()


def _check_contents(files: Mapping[str, bytes]) -> None:
    if TASK_FILE not in files:
        raise PayloadError(f"a bundle must contain {TASK_FILE!r} defining make_task(**options)")
    if len(files) > MAX_FILES:
        raise PayloadError(f"a bundle holds at most {MAX_FILES} files, got {len(files)}")
    total = sum(len(b) for b in files.values())
    if total > MAX_BUNDLE_BYTES:
        raise PayloadError(
            f"bundle content is {total} bytes, more than the limit of {MAX_BUNDLE_BYTES}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BundleInfo:
    """What :func:`pack_bundle` wrote.

    Attributes
    ----------
    digest:
        The bundle's SHA-256 digest (hex), the name a site approves.
    files:
        The bundled paths, sorted.
    size:
        Size of the archive in bytes.
    """

    digest: str
    files: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Bundle:
    """A validated bundle in memory.

    Attributes
    ----------
    digest:
        SHA-256 of the canonical manifest (recomputed from the content, never trusted).
    files:
        Path → bytes, read-only, sorted by path.
    """

    digest: str
    files: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> Bundle:
        """Validate ``files`` and compute their digest.

        Raises
        ------
        PayloadError
            For an unsafe path, a missing ``task.py`` or content over the limits.
        """
        checked: dict[str, bytes] = {}
        for path in sorted(files):
            check_bundle_path(path)
            data = bytes(files[path])
            if len(data) > MAX_FILE_BYTES:
                raise PayloadError(
                    f"bundle file {path!r} is {len(data)} bytes, more than the limit of "
                    f"{MAX_FILE_BYTES}"
                )
            checked[path] = data
        _check_contents(checked)
        digest = hashlib.sha256(_manifest(checked)).hexdigest()
        return cls(digest=digest, files=MappingProxyType(checked))

    @property
    def manifest(self) -> bytes:
        """The canonical manifest whose SHA-256 is :attr:`digest`."""
        return _manifest(self.files)

    def to_bytes(self) -> bytes:
        """The deterministic zip archive of this bundle."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            entries = [(MANIFEST_NAME, self.manifest), *sorted(self.files.items())]
            for name, data in entries:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                archive.writestr(info, data)
        return buffer.getvalue()

    def source_listing(self) -> str:
        """Every file for a human reviewer: ``.py`` and UTF-8 text in full, others by size
        and SHA-256, each under a header line naming the path."""
        out = [f"bundle {self.digest}", f"{len(self.files)} file(s)", ""]
        for path, data in self.files.items():
            sha = hashlib.sha256(data).hexdigest()
            out.append(f"===== {path} ({len(data)} bytes, sha256 {sha}) =====")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                out.append("<binary file, not shown>")
            else:
                if "\x00" in text:
                    out.append("<binary file, not shown>")
                else:
                    out.append(text if text.endswith("\n") or not text else text + "\n")
            out.append("")
        return "\n".join(out)


def _walk(directory: Path) -> Iterator[tuple[str, Path]]:
    for root, dirs, names in os.walk(directory, followlinks=False):
        base = Path(root)
        for d in list(dirs):
            if (base / d).is_symlink():
                raise ConfigurationError(f"{base / d}: symlinks cannot be bundled")
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        for name in sorted(names):
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            path = base / name
            if path.is_symlink():
                raise ConfigurationError(f"{path}: symlinks cannot be bundled")
            if not path.is_file():
                raise ConfigurationError(f"{path}: only regular files can be bundled")
            yield path.relative_to(directory).as_posix(), path


def pack_bundle(directory: str | os.PathLike[str], out_file: str | os.PathLike[str]) -> BundleInfo:
    """Pack a task directory into a deterministic bundle file.

    Hidden files and directories (names starting with ``.``), ``__pycache__`` and ``*.pyc``
    are skipped.

    Parameters
    ----------
    directory:
        The task directory; it must contain ``task.py``.
    out_file:
        Where to write the archive (replaced atomically).

    Returns
    -------
    BundleInfo
        The digest, the bundled paths and the archive's size.

    Raises
    ------
    ConfigurationError
        If the directory is missing, holds a symlink or a non-regular file, an unsafe
        name, a file over the size limit, or no ``task.py``.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ConfigurationError(f"{root}: not a directory")
    files: dict[str, bytes] = {}
    for rel, path in _walk(root):
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigurationError(
                f"{path}: {size} bytes, more than the bundle file limit of {MAX_FILE_BYTES}"
            )
        files[rel] = path.read_bytes()
    try:
        bundle = Bundle.from_files(files)
    except PayloadError as exc:
        raise ConfigurationError(f"{root}: {exc}") from exc
    data = bundle.to_bytes()
    write_atomically(Path(out_file), data)
    return BundleInfo(digest=bundle.digest, files=tuple(bundle.files), size=len(data))


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > MAX_FILE_BYTES:
        raise PayloadError(f"bundle entry {info.filename!r} is larger than {MAX_FILE_BYTES} bytes")
    with archive.open(info) as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise PayloadError(f"bundle entry {info.filename!r} is larger than {MAX_FILE_BYTES} bytes")
    return data


def read_bundle(
    source: str | os.PathLike[str] | bytes, *, expected_digest: str | None = None
) -> Bundle:
    """Read and validate a bundle file (or its bytes).

    Parameters
    ----------
    source:
        A path to the archive, or the archive's bytes.
    expected_digest:
        If given, the recomputed digest must equal it.

    Raises
    ------
    PayloadError
        For a corrupt archive, an unsafe, duplicate or symlink entry, content over the
        limits, a file that does not match the embedded manifest, or a digest other than
        ``expected_digest``.
    """
    if expected_digest is not None:
        check_digest(expected_digest)
    try:
        if isinstance(source, bytes):
            if len(source) > 2 * MAX_BUNDLE_BYTES:
                raise PayloadError(f"bundle archive is larger than {2 * MAX_BUNDLE_BYTES} bytes")
            raw = source
        else:
            path = Path(source)
            if path.stat().st_size > 2 * MAX_BUNDLE_BYTES:
                raise PayloadError(f"{path}: larger than {2 * MAX_BUNDLE_BYTES} bytes")
            raw = path.read_bytes()
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_FILES + 1:
                raise PayloadError(f"bundle has {len(infos)} entries, the limit is {MAX_FILES}")
            files: dict[str, bytes] = {}
            manifest: bytes | None = None
            total = 0
            for info in infos:
                name = info.filename
                if name in files or (name == MANIFEST_NAME and manifest is not None):
                    raise PayloadError(f"bundle has a duplicate entry {name!r}")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise PayloadError(f"bundle entry {name!r} is a symlink")
                if info.is_dir():
                    raise PayloadError(f"bundle entry {name!r} is a directory entry")
                if name != MANIFEST_NAME:
                    check_bundle_path(name)
                data = _read_entry(archive, info)
                total += len(data)
                if total > MAX_BUNDLE_BYTES:
                    raise PayloadError(f"bundle content is more than {MAX_BUNDLE_BYTES} bytes")
                if name == MANIFEST_NAME:
                    manifest = data
                else:
                    files[name] = data
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        zlib.error,
        EOFError,
        UnicodeDecodeError,
    ) as exc:
        raise PayloadError(f"bundle archive is corrupt: {exc}") from exc
    except OSError as exc:
        raise PayloadError(f"cannot read bundle: {exc}") from exc
    bundle = Bundle.from_files(files)
    if manifest is None:
        raise PayloadError(f"bundle has no {MANIFEST_NAME!r} entry")
    if manifest != bundle.manifest:
        raise PayloadError(
            "bundle content does not match its manifest: the archive was modified after packing"
        )
    if expected_digest is not None and bundle.digest != expected_digest:
        raise PayloadError(
            f"bundle digest {bundle.digest} does not match the expected {expected_digest}"
        )
    return bundle


def unpack_bundle(bundle: Bundle, directory: str | os.PathLike[str]) -> Path:
    """Write ``bundle``'s files under ``directory`` (which must be empty or missing).

    Files are created with ``O_EXCL | O_NOFOLLOW`` (nothing existing is overwritten or
    followed) and mode ``0o644``; every path is re-validated.

    Returns
    -------
    Path
        ``directory``.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise ConfigurationError(f"{root}: refusing to unpack a bundle into a non-empty directory")
    for rel, data in bundle.files.items():
        check_bundle_path(rel)
        target = root.joinpath(*PurePosixPath(rel).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return root
