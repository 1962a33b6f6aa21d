"""Checkpoint files: a run's model and strategy state after a round, as one safetensors file.

Layout: ``<checkpoint_dir>/<run_id>/round-000005.safetensors``. The file holds every tensor of
the parameters and of each state entry, named ``t0``, ``t1``… in order; its metadata holds the
run id, the round and a JSON manifest of ``[section, state_key, name]`` per tensor
(``["parameters", null, "w"]``, ``["state", "momentum", "w"]``) plus the state keys in order,
so names never collide and empty state entries survive.

A file is written durably (temporary file in the same folder, ``fsync``, atomic rename,
``fsync`` of the folder) *before* the database row that points to it is committed; the row
records its SHA-256 and size, which every read checks.

Security notes
--------------
Threat: a checkpoint is read back after a crash or by another process, possibly from a disk
that was damaged or tampered with. It is decoded with biofed's safetensors codec only (no
pickle, no code runs on load), its digest must equal the one committed in the database, and its
metadata must name the run and round the database expects: a truncated, swapped or edited
file is refused with :class:`~biofed.core.PayloadError` instead of silently resuming a run from
the wrong model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from biofed.coordinator._store import Checkpoint
from biofed.core import (
    Array,
    ParameterSet,
    PayloadError,
    check_id,
    decode_parameters,
    encode_parameters,
)

_FORMAT = "biofed-checkpoint/1"
_FILE = re.compile(r"^\.?round-(\d+)\.safetensors(\..*\.tmp)?$")
_PARAMETERS = "parameters"
_STATE = "state"


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointFile:
    """Where a checkpoint lies and what it must hash to (a row of the ``checkpoints`` table).

    Attributes
    ----------
    path:
        Relative to the checkpoint folder, with ``/`` separators.
    sha256:
        Hex digest of the file's bytes.
    nbytes:
        The file's size.
    """

    run_id: str
    round: int
    path: str
    sha256: str
    nbytes: int


def checkpoint_path(run_id: str, round: int) -> str:
    """The file of ``run_id``'s checkpoint after ``round``, relative to the checkpoint folder."""
    check_id(run_id, what="run_id")
    return f"{run_id}/round-{round:06d}.safetensors"


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """The bytes of ``checkpoint``'s file."""
    manifest: list[list[str | None]] = []
    tensors: dict[str, Array] = {}

    def add(section: str, key: str | None, params: ParameterSet) -> None:
        for name, array in params.items():
            tensors[f"t{len(manifest)}"] = array
            manifest.append([section, key, name])

    add(_PARAMETERS, None, checkpoint.parameters)
    for key, params in checkpoint.state.items():
        add(_STATE, key, params)
    metadata = {
        "checkpoint.format": _FORMAT,
        "checkpoint.run_id": checkpoint.run_id,
        "checkpoint.round": str(checkpoint.round),
        "checkpoint.manifest": json.dumps(manifest, ensure_ascii=False),
        "checkpoint.state_keys": json.dumps(list(checkpoint.state), ensure_ascii=False),
    }
    return encode_parameters(ParameterSet(tensors), metadata=metadata)


def _metadata(data: bytes) -> dict[str, str]:
    # Only called after decode_parameters accepted ``data``: the header is valid JSON.
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise PayloadError("checkpoint metadata is not an object")
    return {str(k): str(v) for k, v in metadata.items()}


def decode_checkpoint(data: bytes, *, run_id: str, round: int) -> Checkpoint:
    """Parse a checkpoint file's bytes, checking that they are ``run_id``'s after ``round``.

    Raises
    ------
    PayloadError
        If the bytes are not a biofed checkpoint or are another run's or round's.
    """
    tensors = decode_parameters(data, allow_nonfinite=True)
    meta = _metadata(data)
    what = f"checkpoint of run {run_id!r} round {round}"
    if meta.get("checkpoint.format") != _FORMAT:
        raise PayloadError(f"{what} is not a {_FORMAT} file")
    if meta.get("checkpoint.run_id") != run_id or meta.get("checkpoint.round") != str(round):
        raise PayloadError(
            f"{what} holds run {meta.get('checkpoint.run_id')!r} "
            f"round {meta.get('checkpoint.round')}"
        )
    try:
        manifest = json.loads(meta["checkpoint.manifest"])
        state_keys = json.loads(meta["checkpoint.state_keys"])
    except (KeyError, ValueError):
        raise PayloadError(f"{what} has no valid manifest") from None
    if (
        not isinstance(manifest, list)
        or len(manifest) != len(tensors)
        or not isinstance(state_keys, list)
        or not all(isinstance(k, str) and k for k in state_keys)
        or len(set(state_keys)) != len(state_keys)
    ):
        raise PayloadError(f"{what} has a manifest that does not match its tensors")
    parameters: dict[str, Array] = {}
    state: dict[str, dict[str, Array]] = {key: {} for key in state_keys}
    for i, entry in enumerate(manifest):
        tensor = f"t{i}"
        if (
            tensor not in tensors
            or not isinstance(entry, list)
            or len(entry) != 3
            or not isinstance(entry[2], str)
        ):
            raise PayloadError(f"{what}: manifest entry {i} is malformed")
        section, key, name = entry
        if section == _PARAMETERS and key is None:
            target = parameters
        elif section == _STATE and isinstance(key, str) and key in state:
            target = state[key]
        else:
            raise PayloadError(f"{what}: manifest entry {i} names an unknown section")
        if name in target:
            raise PayloadError(f"{what}: manifest names {section} {name!r} twice")
        target[name] = tensors[tensor]
    return Checkpoint(
        run_id=run_id,
        round=round,
        parameters=ParameterSet(parameters),
        state=MappingProxyType({k: ParameterSet(v) for k, v in state.items()}),
    )


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable (POSIX; a no-op on Windows)."""
    if os.name == "nt":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(directory: str | Path, checkpoint: Checkpoint) -> CheckpointFile:
    """Write ``checkpoint`` durably under ``directory`` and say where and what it hashes to.

    The bytes go to a temporary file in the run's folder, are flushed and fsynced, and the
    file is renamed over the final name (atomic), then the folder is fsynced: after a crash
    the final name holds either nothing, a previous attempt, or the complete new file.
    """
    directory = Path(directory)
    data = encode_checkpoint(checkpoint)
    relative = checkpoint_path(checkpoint.run_id, checkpoint.round)
    final = directory / relative
    run_dir = final.parent
    if not run_dir.is_dir():
        run_dir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(directory)
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(run_dir)
    return CheckpointFile(
        run_id=checkpoint.run_id,
        round=checkpoint.round,
        path=relative,
        sha256=hashlib.sha256(data).hexdigest(),
        nbytes=len(data),
    )


def read_checkpoint(directory: str | Path, file: CheckpointFile) -> Checkpoint:
    """Read the checkpoint ``file`` describes, verifying its size, digest and metadata.

    Raises
    ------
    PayloadError
        If the file is missing, corrupt (size or SHA-256 differ from ``file``), or holds
        another run's or round's checkpoint.
    """
    what = f"checkpoint of run {file.run_id!r} round {file.round}"
    if file.path != checkpoint_path(file.run_id, file.round):
        raise PayloadError(f"{what} is recorded at an unexpected path {file.path!r}")
    path = Path(directory) / file.path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PayloadError(f"{what} is missing: {path} does not exist") from None
    if len(data) != file.nbytes or hashlib.sha256(data).hexdigest() != file.sha256:
        raise PayloadError(
            f"{what} is corrupt: {path} does not match the size and SHA-256 recorded when it "
            "was written"
        )
    return decode_checkpoint(data, run_id=file.run_id, round=file.round)


def prune_checkpoints(directory: str | Path, run_id: str, *, keep_from: int) -> None:
    """Delete ``run_id``'s checkpoint files (and leftover temporary files) of rounds before
    ``keep_from``. Best effort: a file that cannot be deleted is left for the next prune."""
    run_dir = Path(directory) / check_id(run_id, what="run_id")
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        match = _FILE.match(name)
        if match and int(match.group(1)) < keep_from:
            with contextlib.suppress(OSError):
                os.unlink(run_dir / name)
