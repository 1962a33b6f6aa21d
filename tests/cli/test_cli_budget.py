"""``biofed node budget [DATASET]`` and ``biofed node budget-cap`` on a local Typer app."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from biofed.cli import _budget
from biofed.governance._ledger import LEDGER_FILE, PrivacyLedger

runner = CliRunner(env={"COLUMNS": "200"})
app = typer.Typer()
app.command("budget")(_budget.budget_command)
app.command("budget-cap")(_budget.budget_cap_command)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    collected: list[tuple[str, dict[str, Any]]] = []

    def fake_kit_audit(folder: Path) -> Callable[[str, Mapping[str, Any]], None]:
        return lambda event, data: collected.append((event, dict(data)))

    monkeypatch.setattr(_budget, "kit_audit", fake_kit_audit)
    return collected


def test_cap_then_show_table_and_json(
    tmp_path: Path, events: list[tuple[str, dict[str, Any]]]
) -> None:
    node = ["--node-dir", str(tmp_path / "node")]
    empty = runner.invoke(app, ["budget", *node])
    assert empty.exit_code == 0, empty.output
    assert "no privacy budgets" in empty.output

    capped = runner.invoke(app, ["budget-cap", "icu", "--epsilon", "4", "--delta", "1e-5", *node])
    assert capped.exit_code == 0, capped.output
    assert "ε=4" in capped.output
    assert events[0][0] == "budget.cap_set"
    assert events[0][1]["dataset"] == "icu"

    ledger = PrivacyLedger(tmp_path / "node" / LEDGER_FILE)
    ledger.reserve("icu", "study-a", 1, 0.5, 1e-6)
    ledger.reserve("icu", "study-a", 2, 1.25, 1e-6)
    ledger.reserve("icu", "study-b", 1, 0.75, 2e-6)
    ledger.set_cap("cardio", 1.0, 1e-6)

    table = runner.invoke(app, ["budget", *node])
    assert table.exit_code == 0, table.output
    for part in ("privacy budgets", "icu", "cardio", "study-a", "study-b", "2", "1.25"):
        assert part in table.output, table.output

    listed = runner.invoke(app, ["budget", *node, "--format", "json"])
    assert listed.exit_code == 0, listed.output
    statuses = json.loads(listed.stdout)
    assert [s["dataset"] for s in statuses] == ["cardio", "icu"]
    icu = statuses[1]
    assert icu["cap_epsilon"] == 4.0
    assert icu["spent_epsilon"] == 2.0
    assert icu["remaining_epsilon"] == 2.0
    assert icu["spent_delta"] == pytest.approx(3e-6)
    label = {"guarantee": "unlabelled"}  # reserved without a label: never read as a guarantee
    assert icu["jobs"] == [
        {"run_id": "study-a", "epsilon": 1.25, "delta": 1e-6, "rounds": 2, "last_round": 2} | label,
        {"run_id": "study-b", "epsilon": 0.75, "delta": 2e-6, "rounds": 1, "last_round": 1} | label,
    ]

    one = runner.invoke(app, ["budget", "cardio", *node, "--format", "json"])
    assert one.exit_code == 0, one.output
    assert [s["dataset"] for s in json.loads(one.stdout)] == ["cardio"]


def test_errors_are_one_red_line_with_exit_2(
    tmp_path: Path, events: list[tuple[str, dict[str, Any]]]
) -> None:
    node = ["--node-dir", str(tmp_path / "node")]
    bad = runner.invoke(app, ["budget-cap", "icu", "--epsilon", "-1", "--delta", "1e-5", *node])
    assert bad.exit_code == 2
    assert "epsilon cap must be >= 0" in bad.output
    assert events == []
    bad_name = runner.invoke(app, ["budget-cap", "a/b", "--epsilon", "1", "--delta", "0", *node])
    assert bad_name.exit_code == 2
    assert "dataset name" in bad_name.output
    missing = runner.invoke(app, ["budget", "nope", *node])
    assert missing.exit_code == 2
    assert "no privacy budget or spend is recorded for dataset 'nope'" in missing.output
    fmt = runner.invoke(app, ["budget", *node, "--format", "yaml"])
    assert fmt.exit_code == 2
    assert "--format must be table or json" in fmt.output
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / LEDGER_FILE).write_bytes(b"garbage" * 200)
    corrupt = runner.invoke(app, ["budget", *node])
    assert corrupt.exit_code == 2
    assert "privacy ledger" in corrupt.output
    assert "Traceback" not in corrupt.output
