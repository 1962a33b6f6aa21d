"""The registry's quick check: a file or DuckDB CDM unchanged since its last successful
check (device, inode, size, mtime and ctime, a DuckDB CDM's write-ahead log included) is not
re-hashed before every instruction — and any edit, even one that keeps the size and puts the
mtime back, or one that sits only in the CDM's WAL, is still caught."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import duckdb
import pytest

import biofed.governance._datasets as registry_module
from biofed.data import OmopDatabase
from biofed.datasets import eunomia_path
from biofed.governance import DatasetRegistry


def _counting(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(owner, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.fixture
def table(tmp_path: Path) -> Path:
    file = tmp_path / "ward.csv"
    file.write_text(
        "age,event,time\n" + "".join(f"{40 + k},{k % 2},{100 + k}\n" for k in range(50))
    )
    return file


def test_an_unchanged_file_is_hashed_once_and_a_same_size_edit_with_mtime_restored_is_caught(
    tmp_path: Path, table: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add("ward", table, targets={"event": "event", "time": "time"})
    digests = _counting(monkeypatch, registry_module, "file_digest")
    for _ in range(5):
        assert registry.check("ward").ok
    assert len(digests) == 1  # the first check hashed; the next four saw the same file

    before = table.stat()
    data = table.read_bytes()
    table.write_bytes(data.replace(b"40,0,100", b"90,0,100"))  # same size
    os.utime(table, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime put back
    assert table.stat().st_size == before.st_size
    assert table.stat().st_mtime_ns == before.st_mtime_ns
    result = registry.check("ward")
    assert result.state == "changed"
    assert len(digests) == 2


def test_an_unchanged_duckdb_cdm_is_fingerprinted_once_and_a_write_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cdm = tmp_path / "cdm.duckdb"
    shutil.copyfile(eunomia_path(), cdm)
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add_omop("cdm", str(cdm))
    describes = _counting(monkeypatch, OmopDatabase, "describe")
    for _ in range(4):
        assert registry.check("cdm").ok
    assert len(describes) == 1

    with duckdb.connect(str(cdm)) as con:  # a write, as a careless ETL would make
        con.execute("UPDATE person SET year_of_birth = year_of_birth + 1 WHERE person_id = 6")
    assert registry.check("cdm").state == "changed"
    assert len(describes) == 2


def test_a_fresh_registry_checks_in_full(tmp_path: Path, table: Path) -> None:
    """The quick check lives only in the registry that verified the file: another process
    (a restarted node) hashes again."""
    DatasetRegistry(tmp_path / "datasets.json").add("ward", table)
    assert DatasetRegistry(tmp_path / "datasets.json").check("ward").ok
    table.write_text(table.read_text().replace("40,0,100", "41,0,100"))
    assert DatasetRegistry(tmp_path / "datasets.json").check("ward").state == "changed"
