"""The generated reference pages match their schemas, and the schemas are the parsers' own.

A page drifts when someone changes a schema and forgets scripts/gen_references.py; a schema
drifts from its parser when a parser accepts a key the schema does not declare. Both fail
here. The parsers take their key lists from the schemas, so the second is checked by
feeding each parser every declared key (accepted) and keys no schema declares (refused).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from biofed.analytics import RULE_KEYS
from biofed.core import ConfigurationError
from biofed.governance import INCENTIVE_KEYS, StudyAgreement
from biofed.node import NodeConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_references", ROOT / "scripts" / "gen_references.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_page_is_up_to_date() -> None:
    stale = [
        str(page.relative_to(ROOT))
        for page, render in _generator().pages().items()
        if not page.is_file() or page.read_text(encoding="utf-8") != render()
    ]
    assert stale == [], f"out of date: {stale}; run python scripts/gen_references.py"


def test_the_check_mode_notices_an_edited_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = _generator()
    copies = {}
    for page, render in gen.pages().items():
        copy = tmp_path / page.name
        copy.write_text(render() + "an edit by hand\n", encoding="utf-8")
        copies[copy] = render
    monkeypatch.setattr(gen, "pages", lambda: copies)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr("sys.argv", ["gen_references.py", "--check"])
    assert gen.main() == 1


# ---- node.toml: every declared key is accepted, others are refused ---------------------

_NODE_FULL = """\
[node]
task_dirs = ["tasks"]

[datasets.file-data]
path = "data.csv"
format = "csv"
targets = { event = "event", time = "time" }
split_column = "split"
id_column = "id"
exclude = ["age"]
description = "one region"
fatal_checks = ["isRequired"]

[datasets.cdm]
omop = "cdm.duckdb"
password_env = "CDM_PASSWORD"
schema = "cdm54"
description = "the hospital's CDM"
fatal_checks = ["plausibleDuringLife"]

[governance]
agreements_dir = "agreements"
certificates_dir = "certificates"
approvals = "approvals.json"
registry = "datasets.json"
bundles_dir = "bundles"
audit = "audit.jsonl"

[privacy]
ledger = "privacy.db"
allow_heuristic = false

[privacy.caps.file-data]
epsilon = 10.0
delta = 1e-5

[sandbox]
allow_weaker = []

[analytics]
{analytics}
"""


def _node_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _full_node(extra: dict[str, str] | None = None) -> str:
    analytics = "\n".join(f"{k} = {0.5 if k == 'dominance' else 10}" for k in RULE_KEYS)
    text = _NODE_FULL.replace("{analytics}", analytics)
    for header, line in (extra or {}).items():
        text = text.replace(f"{header}\n", f"{header}\n{line}\n", 1)
    return text


def test_node_toml_accepts_every_key_of_its_reference(tmp_path: Path) -> None:
    config = NodeConfig.from_toml(_node_toml(tmp_path, _full_node()))
    assert set(config.datasets) == {"file-data", "cdm"}
    page = NodeConfig.reference()
    # every key the full file above uses is on the page, under its table
    for key in (
        "task_dirs",
        "path",
        "split_column",
        "omop",
        "password_env",
        "bundles_dir",
        "audit",
        "ledger",
        "allow_heuristic",
        "epsilon",
        "allow_weaker",
        *RULE_KEYS,
    ):
        assert f"| `{key}` |" in page, key


@pytest.mark.parametrize(
    ("header", "line"),
    [
        ("[node]", 'tasks = ["x"]'),
        ("[datasets.file-data]", 'omop_schema = "x"'),
        ("[datasets.cdm]", 'split_column = "split"'),
        ("[governance]", 'audit_log = "x"'),
        ("[privacy]", "epsilon = 1.0"),
        ("[privacy.caps.file-data]", "sigma = 1.0"),
        ("[sandbox]", "allow = []"),
        ("[analytics]", "min_count = 5"),
    ],
)
def test_node_toml_refuses_a_key_its_reference_lacks(
    tmp_path: Path, header: str, line: str
) -> None:
    with pytest.raises(ConfigurationError, match=r"unknown key|needs exactly"):
        NodeConfig.from_toml(_node_toml(tmp_path, _full_node({header: line})))


def test_every_node_toml_table_and_key_is_on_its_page() -> None:
    from biofed.node._config_schema import NODE_SECTIONS, NODE_TABLES

    page = NodeConfig.reference()
    for table in NODE_TABLES:
        assert f"## `[{table.name}]`" in page
        for key in table.keys:
            assert f"| `{key.name}` |" in page
    assert {t.name.split(".")[0] for t in NODE_TABLES} == set(NODE_SECTIONS)


# ---- study agreements --------------------------------------------------------------------

_HEX = "ab" * 32


def _agreement(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "format": "biofed-agreement/1",
        "agreement_id": "brca-study",
        "title": "BRCA survival",
        "consortium": "brca",
        "expires": "2030-12-31",
        "min_cohort": 10,
        "purpose": "Cox model of survival",
        "legal_basis": "GDPR Art. 9(2)(j)",
        "approved_bundles": [_HEX],
        "approved_studies": [],
        "coordinator": {"name": "coordinator", "fingerprint": _HEX},
        "parties": [
            {"name": "hospital-a", "role": "site", "fingerprint": "cd" * 32},
            {"name": "alice", "role": "researcher", "fingerprint": "ef" * 32},
        ],
        "datasets": {"hospital-a": "tcga-brca"},
        "outputs": {"final_model": True, "metrics": ["c_index"], "per_site_metrics": False},
        "privacy": {
            "secure_aggregation_required": False,  # contributions are refused under it
            "dp_required": True,
            "max_epsilon": {"hospital-a": 8.0},
            "max_delta": {"hospital-a": 1e-5},
            "exact_guarantees_required": True,
        },
        "analytics": {
            "allowed": ["count"],
            "min_cell": 10,
            "dominance": 0.5,
            "min_at_risk": 10,
            "min_difference": 10,
            "min_sites": 3,
            "records_per_parameter": 10,
        },
        "incentives": {
            "measure": "shapley",
            "reward": "proportional",
            "min_share": 0.1,
            "below_min": "delayed",
            "delay_days": 30,
            "free_rider_share": 0.0,
        },
    }
    data.update(changes)
    return data


def test_an_agreement_with_every_key_of_its_reference_parses() -> None:
    from biofed.governance._agreement._schema import AGREEMENT_TABLES

    data = _agreement()
    agreement = StudyAgreement.from_data(data)
    assert agreement.incentives is not None
    assert agreement.analytics.allowed == ("count",)
    declared = {t.name: t.names for t in AGREEMENT_TABLES}
    assert set(data) == declared[""]
    assert set(data["privacy"]) == declared["privacy"]  # type: ignore[arg-type]
    assert set(data["outputs"]) == declared["outputs"]  # type: ignore[arg-type]
    assert set(data["analytics"]) == declared["analytics"]  # type: ignore[arg-type]
    assert declared["incentives"] == set(INCENTIVE_KEYS)
    page = StudyAgreement.reference()
    for table in AGREEMENT_TABLES:
        for key in table.keys:
            assert f"| `{key.name}` |" in page


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("", "sponsor"),
        ("outputs", "raw_data"),
        ("privacy", "max_sigma"),
        ("analytics", "min_count"),
        ("incentives", "bonus"),
        ("coordinator", "role"),
    ],
)
def test_an_agreement_key_its_reference_lacks_is_refused(table: str, key: str) -> None:
    data = _agreement()
    target = data if not table else data[table]
    assert isinstance(target, dict)
    target[key] = 1
    with pytest.raises(ConfigurationError, match="unknown key"):
        StudyAgreement.from_data(data)


# ---- kit.toml ----------------------------------------------------------------------------


def test_the_kit_schema_covers_every_setting_the_parser_returns() -> None:
    from dataclasses import fields

    from biofed.identity._kit_schema import KIT_FILES, KIT_TOP
    from biofed.identity._kitfile import DEFAULT_FILES, KitConfig

    assert {f.name for f in fields(KitConfig)} - {"files"} == KIT_TOP.names
    assert set(DEFAULT_FILES) == KIT_FILES.names


def test_every_key_of_a_provisioned_kit_is_on_the_kit_page(tmp_path: Path) -> None:
    from biofed.identity import Consortium, Kit

    Consortium.create(
        tmp_path / "c", consortium="brca", coordinator="127.0.0.1:7443", sites=["hospital-a"]
    )
    page = Kit.reference()
    kits = [p for p in (tmp_path / "c").glob("*/kit.toml")]
    assert {p.parent.name for p in kits} >= {"coordinator", "hospital-a"}
    for kit in kits:
        data = tomllib.loads(kit.read_text(encoding="utf-8"))
        for key, value in data.items():
            assert f"| `{key}` |" in page or f"## `[{key}]`" in page, (kit, key)
            if isinstance(value, dict):
                for sub in value:
                    assert f"| `{sub}` |" in page, (kit, key, sub)
