"""Caps only go down by themselves: a cap lowered from the command line survives a node
restart with a higher ``node.toml`` value; raising is an explicit, audited command."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from biofed.cli import app
from biofed.core import PrivacyBudgetExceeded
from biofed.governance import LEDGER_FILE, PrivacyLedger, verify_log
from biofed.identity import Consortium
from biofed.node import run_node

runner = CliRunner(env={"COLUMNS": "200"})

GOVERNANCE = (
    '[governance]\nagreements_dir = "agreements"\ncertificates_dir = "certificates"\n'
    'approvals = "approvals.json"\nregistry = "datasets.json"\nbundles_dir = "bundles"\n'
)


def _node_toml(kit: Path, epsilon: float) -> Path:
    toml = kit / "node.toml"
    toml.write_text(
        '[datasets.icu]\npath = "icu.csv"\nformat = "csv"\n\n'
        + GOVERNANCE
        + f"\n[privacy.caps.icu]\nepsilon = {epsilon}\ndelta = 1e-4\n"
    )
    return toml


def _start(kit: Path, toml: Path) -> None:
    """The real start path of ``biofed node start`` (kit, node.toml, NodeApp, ledger), with
    the stop event already set so that it returns instead of dialling the coordinator."""
    stop = threading.Event()
    stop.set()
    run_node(kit, toml, stop)


def _cap_events(kit: Path) -> list[tuple[str, dict[str, object]]]:
    entries = [json.loads(line) for line in (kit / "audit.jsonl").read_text().splitlines()]
    return [(e["event"], e["data"]) for e in entries if e["event"].startswith("budget.cap")]


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    consortium = Consortium.create(
        tmp_path / "c", consortium="t", coordinator="127.0.0.1:1", sites=["hosp"]
    )
    folder = consortium.kit_directory("hosp")
    (folder / "icu.csv").write_text("age,E\n" + "".join(f"{50 + i},{i % 2}\n" for i in range(20)))
    return folder


def test_a_cli_lowered_cap_survives_a_restart_with_a_higher_node_toml(kit: Path) -> None:
    toml = _node_toml(kit, 20.0)
    _start(kit, toml)
    ledger = PrivacyLedger(kit / LEDGER_FILE)
    assert ledger.spent("icu").cap_epsilon == 20.0

    lowered = runner.invoke(
        app,
        ["node", "budget-cap", "icu", "--epsilon", "8", "--delta", "1e-4", "--node-dir", str(kit)],
    )
    assert lowered.exit_code == 0, lowered.output
    _start(kit, toml)  # node.toml still says 20
    assert ledger.spent("icu").cap_epsilon == 8.0
    with pytest.raises(PrivacyBudgetExceeded, match="cap ε=8"):
        ledger.reserve("icu", "run-1", 1, 13.78, 1e-5)

    # the same command cannot raise it back; --raise can, and says so in the audit log
    refused = runner.invoke(
        app,
        ["node", "budget-cap", "icu", "--epsilon", "15", "--delta", "1e-4", "--node-dir", str(kit)],
    )
    assert refused.exit_code == 2
    assert "--raise" in refused.output
    assert "Traceback" not in refused.output
    assert ledger.spent("icu").cap_epsilon == 8.0
    raised = runner.invoke(
        app,
        [
            "node", "budget-cap", "icu", "--epsilon", "15", "--delta", "1e-4",
            "--node-dir", str(kit), "--raise",
        ],
    )  # fmt: skip
    assert raised.exit_code == 0, raised.output
    _start(kit, toml)  # min(node.toml 20, raised 15)
    assert ledger.spent("icu").cap_epsilon == 15.0
    _start(kit, _node_toml(kit, 10.0))  # node.toml lowered: applies at once
    assert ledger.spent("icu").cap_epsilon == 10.0

    events = _cap_events(kit)
    assert [(e, d["source"]) for e, d in events] == [
        ("budget.cap_set", "node.toml"),
        ("budget.cap_lowered", "cli"),
        ("budget.cap_kept", "node.toml"),
        ("budget.cap_raised", "cli"),
        ("budget.cap_kept", "node.toml"),
        ("budget.cap_lowered", "node.toml"),
    ]
    kept = events[2][1]
    assert (kept["epsilon"], kept["requested_epsilon"]) == (8.0, 20.0)
    assert (events[3][1]["previous_epsilon"], events[3][1]["epsilon"]) == (8.0, 15.0)
    report = verify_log(
        kit / "audit.jsonl", (kit / "cert.pem").read_bytes(), (kit / "ca.pem").read_bytes()
    )
    assert report.ok, report.reason


def test_each_component_only_goes_down_by_itself(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    ledger = PrivacyLedger(tmp_path / LEDGER_FILE, audit=lambda e, d: events.append((e, dict(d))))
    assert ledger.lower_cap("icu", 5.0, 1e-5, source="node.toml").action == "set"
    # a higher ε with a lower δ: δ goes down, ε stays
    change = ledger.lower_cap("icu", 9.0, 1e-6, source="node.toml")
    assert (change.action, change.epsilon, change.delta) == ("lowered", 5.0, 1e-6)
    assert ledger.lower_cap("icu", 5.0, 1e-6, source="node.toml").action == "unchanged"
    with pytest.raises(Exception, match="would raise it"):
        ledger.set_cap("icu", 5.0, 1e-5)  # δ up without --raise
    assert ledger.set_cap("icu", 4.0, 1e-6).action == "lowered"
    assert ledger.set_cap("icu", 4.0, 1e-5, allow_raise=True).action == "raised"
    assert [e for e, _ in events] == [
        "budget.cap_set",
        "budget.cap_lowered",
        "budget.cap_lowered",
        "budget.cap_raised",
    ]
