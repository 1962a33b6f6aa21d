"""Checkpoint files: format, durable write, verification on read, pruning."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from biofed.coordinator._checkpoint import (
    checkpoint_path,
    decode_checkpoint,
    encode_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from biofed.coordinator._store import Checkpoint
from biofed.core import ConfigurationError, ParameterSet, PayloadError, encode_parameters


def make(run_id: str = "run-1", round: int = 5) -> Checkpoint:
    return Checkpoint(
        run_id=run_id,
        round=round,
        parameters=ParameterSet(
            {
                # Names that look like the file's own tensor names must not collide.
                "t1": np.arange(4, dtype=np.float32),
                "w": np.ones((2, 2), np.float64),
                "flag": np.array(True),
            }
        ),
        state={
            "m": ParameterSet({"w": np.full((2, 2), 0.1), "t0": np.int8(3)}),
            "v": ParameterSet({"w": np.array([np.nan, 1.0])}),
            "none": ParameterSet({}),
        },
    )


def test_encode_decode_round_trip() -> None:
    original = make()
    data = encode_checkpoint(original)
    back = decode_checkpoint(data, run_id="run-1", round=5)
    assert back.parameters == original.parameters
    assert list(back.state) == ["m", "v", "none"]
    assert back.state["m"] == original.state["m"]
    assert np.isnan(back.state["v"]["w"][0])
    assert len(back.state["none"]) == 0


def test_empty_checkpoint_round_trips() -> None:
    empty = Checkpoint(run_id="r", round=0, parameters=ParameterSet({}))
    assert decode_checkpoint(encode_checkpoint(empty), run_id="r", round=0) == empty


def test_file_names_tensors_by_position_with_a_manifest() -> None:
    data = encode_checkpoint(make())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    meta = header["__metadata__"]
    assert sorted(k for k in header if k != "__metadata__") == [f"t{i}" for i in range(6)]
    assert json.loads(meta["checkpoint.manifest"]) == [
        ["parameters", None, "t1"],
        ["parameters", None, "w"],
        ["parameters", None, "flag"],
        ["state", "m", "w"],
        ["state", "m", "t0"],
        ["state", "v", "w"],
    ]
    assert (meta["checkpoint.run_id"], meta["checkpoint.round"]) == ("run-1", "5")


@pytest.mark.parametrize(("run_id", "round"), [("run-2", 5), ("run-1", 4)])
def test_another_runs_or_rounds_file_is_refused(run_id: str, round: int) -> None:
    with pytest.raises(PayloadError, match="holds run 'run-1' round 5"):
        decode_checkpoint(encode_checkpoint(make()), run_id=run_id, round=round)


def test_plain_safetensors_is_not_a_checkpoint() -> None:
    data = encode_parameters(ParameterSet({"w": np.zeros(2)}))
    with pytest.raises(PayloadError, match="not a biofed-checkpoint"):
        decode_checkpoint(data, run_id="run-1", round=5)


@pytest.mark.parametrize(
    "manifest",
    [
        "not json",
        "[]",
        '[["parameters",null,"a"]]',
        '[["parameters",null,"a"],["parameters",null,"a"]]',
        '[["bogus",null,"a"],["parameters",null,"b"]]',
        '[["state","unknown","a"],["parameters",null,"b"]]',
        '[["parameters",null],["parameters",null,"b"]]',
    ],
)
def test_bad_manifest_is_refused(manifest: str) -> None:
    data = encode_parameters(
        ParameterSet({"t0": np.zeros(1), "t1": np.ones(1)}),
        metadata={
            "checkpoint.format": "biofed-checkpoint/1",
            "checkpoint.run_id": "r",
            "checkpoint.round": "1",
            "checkpoint.manifest": manifest,
            "checkpoint.state_keys": "[]",
        },
    )
    with pytest.raises(PayloadError):
        decode_checkpoint(data, run_id="r", round=1)


def test_checkpoint_validates() -> None:
    with pytest.raises(ConfigurationError):
        Checkpoint(run_id="../etc", round=1, parameters=ParameterSet({}))
    with pytest.raises(ConfigurationError):
        Checkpoint(run_id="r", round=-1, parameters=ParameterSet({}))
    with pytest.raises(ConfigurationError):
        Checkpoint(run_id="r", round=1, parameters={"w": np.zeros(1)})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Checkpoint(run_id="r", round=1, parameters=ParameterSet({}), state={"": ParameterSet()})


def test_write_then_read(tmp_path: Path) -> None:
    original = make()
    file = write_checkpoint(tmp_path, original)
    assert file.path == checkpoint_path("run-1", 5) == "run-1/round-000005.safetensors"
    data = (tmp_path / file.path).read_bytes()
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    assert file.nbytes == len(data)
    assert os.listdir(tmp_path / "run-1") == ["round-000005.safetensors"]  # no temp left
    back = read_checkpoint(tmp_path, file)
    assert back.parameters == original.parameters
    assert back.state["m"] == original.state["m"]


def test_read_verifies_digest_size_and_path(tmp_path: Path) -> None:
    file = write_checkpoint(tmp_path, make())
    with pytest.raises(PayloadError, match="is corrupt"):
        read_checkpoint(tmp_path, dataclasses.replace(file, sha256="0" * 64))
    with pytest.raises(PayloadError, match="is corrupt"):
        read_checkpoint(tmp_path, dataclasses.replace(file, nbytes=file.nbytes + 1))
    with pytest.raises(PayloadError, match="unexpected path"):
        read_checkpoint(tmp_path, dataclasses.replace(file, path="../run-1/x"))
    with pytest.raises(PayloadError, match="missing"):
        read_checkpoint(
            tmp_path, dataclasses.replace(file, round=6, path=checkpoint_path("run-1", 6))
        )
    # A file renamed into another round's place hashes right but names the wrong round.
    other = write_checkpoint(tmp_path, make(round=6))
    (tmp_path / file.path).replace(tmp_path / other.path)
    with pytest.raises(PayloadError, match="holds run 'run-1' round 5"):
        read_checkpoint(tmp_path, dataclasses.replace(file, round=6, path=other.path))


def test_failed_write_leaves_no_temporary_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_checkpoint(tmp_path, make())

    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", no_rename)
    changed = dataclasses.replace(make(), parameters=ParameterSet({"w": np.zeros(3)}))
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(tmp_path, changed)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "run-1") == ["round-000005.safetensors"]
    assert read_checkpoint(tmp_path, first).parameters == make().parameters


def test_write_fsyncs_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_checkpoint(tmp_path, make())
    # file contents, the new run folder's entry in the checkpoint folder, the rename
    assert synced.count("file") == 1
    assert synced[-1] == "dir"
    assert synced.count("dir") == 2


def test_prune_keeps_recent_rounds_and_other_runs(tmp_path: Path) -> None:
    for rnd in (1, 2, 3, 4):
        write_checkpoint(tmp_path, make(round=rnd))
    write_checkpoint(tmp_path, make(run_id="run-2", round=1))
    (tmp_path / "run-1" / ".round-000002.safetensors.abc.tmp").write_bytes(b"")
    (tmp_path / "run-1" / "notes.txt").write_bytes(b"")
    prune_checkpoints(tmp_path, "run-1", keep_from=3)
    assert sorted(os.listdir(tmp_path / "run-1")) == [
        "notes.txt",
        "round-000003.safetensors",
        "round-000004.safetensors",
    ]
    assert os.listdir(tmp_path / "run-2") == ["round-000001.safetensors"]
    prune_checkpoints(tmp_path, "no-such-run", keep_from=10)  # nothing to do, no error
