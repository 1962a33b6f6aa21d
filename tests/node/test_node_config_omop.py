"""``node.toml``'s ``[datasets.NAME] omop = "…"``: parsed, checked, never with a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from biofed.core import ConfigurationError, DataError
from biofed.node import DatasetSource, NodeApp, NodeConfig


def _config(tmp_path: Path, body: str) -> NodeConfig:
    (tmp_path / "node.toml").write_text(body)
    return NodeConfig.from_toml(tmp_path / "node.toml")


def test_an_omop_dataset_is_parsed_with_its_location(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        '[datasets.cdm]\nomop = "data/cdm.duckdb"\nfatal_checks = ["plausibleDuringLife"]\n'
        '[datasets.pg]\nomop = "postgresql://biofed@db.example/cdm"\n'
        'password_env = "CDM_PASSWORD"\nschema = "cdm54"\n',
    )
    cdm, pg = config.datasets["cdm"], config.datasets["pg"]
    assert cdm.omop == str((tmp_path / "data" / "cdm.duckdb").resolve())
    assert cdm.path is None
    assert cdm.location == cdm.omop
    assert cdm.fatal_checks == ("plausibleDuringLife",)
    assert pg.omop == "postgresql://biofed@db.example/cdm"
    assert (pg.password_env, pg.schema) == ("CDM_PASSWORD", "cdm54")
    with pytest.raises(DataError, match="OMOP CDM"):
        cdm.load()


def test_a_node_with_an_omop_dataset_starts_without_loading_it(tmp_path: Path) -> None:
    config = _config(tmp_path, '[datasets.cdm]\nomop = "cdm.duckdb"\n')
    app = NodeApp("a", config)  # an OMOP dataset is compiled per study, not loaded at start
    assert "cdm" not in app.data


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ('omop = "postgresql://u:hunter2@h/db"', "password_env"),
        ('omop = "x.duckdb"\npath = "x.csv"', "unknown key"),
        ('omop = "x.duckdb"\nfatal_checks = ["isRequird"]', "names no quality check"),
        ('omop = "x.duckdb"\npassword_env = "A B"', "environment variable name"),
        ('omop = ""', "non-empty"),
    ],
)
def test_bad_omop_entries_are_refused(tmp_path: Path, body: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match) as info:
        _config(tmp_path, f"[datasets.cdm]\n{body}\n")
    assert "hunter2" not in str(info.value)


def test_a_source_is_a_file_or_a_cdm() -> None:
    with pytest.raises(ConfigurationError, match="exactly one of path or omop"):
        DatasetSource(name="x")
    with pytest.raises(ConfigurationError, match="exactly one of path or omop"):
        DatasetSource(name="x", path=Path("a.csv"), omop="b.duckdb")
