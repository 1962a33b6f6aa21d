"""The node's dataset registry: schema, rows and digest at registration; changes flagged."""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.core import ConfigurationError, DataError, PolicyViolation
from biofed.governance._datasets import DatasetRegistry


def _csv(path: Path, rows: int = 12) -> Path:
    lines = ["age,E,T,split"] + [
        f"{40 + i},{i % 2},{100 + i},{'train' if i % 4 else 'test'}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_register_list_show_remove_with_audit(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    registry = DatasetRegistry(
        tmp_path / "node" / "datasets.json",
        audit=lambda e, d: events.append((e, dict(d))),
        clock=lambda: 5.0,
    )
    entry = registry.add(
        "cohort",
        _csv(tmp_path / "a.csv"),
        description="ICU",
        tags=("icu",),
        targets={"event": "E", "time": "T"},
        split_column="split",
        min_cohort=5,
    )
    assert entry.num_rows == 12
    assert [c for c, _ in entry.columns] == ["age", "E", "T", "split"]
    assert len(entry.sha256) == 64
    assert registry.get("cohort") == entry
    assert [e.name for e in registry.list()] == ["cohort"]
    assert DatasetRegistry(tmp_path / "node" / "datasets.json").get("cohort") == entry  # persisted
    assert registry.check("cohort").ok
    registry.remove("cohort")
    assert registry.list() == []
    assert [e for e, _ in events] == ["dataset.registered", "dataset.removed"]
    assert events[0][1]["sha256"] == entry.sha256


def test_a_changed_file_is_flagged_until_re_registered(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv")
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add("cohort", path)
    path.write_text(path.read_text().replace("41,1,101", "41,0,101"))  # same size, new bytes
    check = registry.check("cohort")
    assert check.state == "changed"
    with pytest.raises(PolicyViolation, match="changed since registration"):
        registry.require("cohort")
    # the flag is sticky, across restarts, even if the file is put back
    path.write_text(path.read_text().replace("41,0,101", "41,1,101"))
    assert DatasetRegistry(tmp_path / "datasets.json").check("cohort").state == "changed"
    registry.add("cohort", path, replace_existing=True)
    assert registry.require("cohort").name == "cohort"


def test_missing_file_and_bad_input(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv")
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add("cohort", path)
    with pytest.raises(ConfigurationError, match="already registered"):
        registry.add("cohort", path)
    path.unlink()
    assert registry.check("cohort").state == "missing"
    with pytest.raises(DataError, match="no such file"):
        registry.add("other", tmp_path / "nope.csv")
    with pytest.raises(DataError, match="no column"):
        registry.add("other", _csv(tmp_path / "b.csv"), targets={"event": "DEATH"})
    with pytest.raises(ConfigurationError, match="dataset name"):
        registry.add("../etc", _csv(tmp_path / "c.csv"))
    with pytest.raises(ConfigurationError, match="min_cohort"):
        registry.add("x", _csv(tmp_path / "d.csv"), min_cohort=0)
    with pytest.raises(PolicyViolation, match="no dataset"):
        registry.require("never")
