"""``biofed agreement draft --incentive KEY=VALUE`` writes the agreement's ``[incentives]``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from biofed.cli import app

runner = CliRunner(env={"COLUMNS": "80"})


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biofed.identity import Consortium

    root = tmp_path_factory.mktemp("consortium") / "fed"
    Consortium.create(root, consortium="inc", coordinator="127.0.0.1:1", sites=["a", "b"])
    return root


def _draft(fed: Path, out: Path, *extra: str) -> Any:
    return runner.invoke(
        app,
        [
            "agreement", "draft", "--out", str(out), "--title", "Rewarded",
            "--consortium-dir", str(fed), "--sites", "a,b", "--expires", "2030-01-01",
            "--legal-basis", "consent", "--purpose", "cox", "--dataset", "ds", *extra,
        ],
    )  # fmt: skip


def test_draft_writes_the_incentives_table(consortium: Path, tmp_path: Path) -> None:
    from biofed.governance import IncentivePolicy, read_agreement

    out = tmp_path / "agreement.toml"
    result = _draft(
        consortium, out, "--incentive", "measure=gtg_shapley", "--incentive", "min_share=0.05",
        "--incentive", "below_min=earlier_round", "--incentive", "earlier_rounds=2",
        "--incentive", "free_rider_share=0", "--incentive", "reward=equal",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert read_agreement(out).agreement.incentives == IncentivePolicy(
        measure="gtg_shapley",
        reward="equal",
        min_share=0.05,
        below_min="earlier_round",
        earlier_rounds=2,
    )
    assert "[incentives]" in out.read_text()
    plain = tmp_path / "plain.toml"
    assert _draft(consortium, plain).exit_code == 0
    assert read_agreement(plain).agreement.incentives is None
    assert "[incentives]" not in plain.read_text()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--incentive", "measure"], "KEY=VALUE"),
        (["--incentive", "measure=shapley", "--incentive", "measure=shapley"], "given twice"),
        (["--incentive", "min_share=0.1"], "incentives.measure is required"),
        (["--incentive", "measure=shapley", "--incentive", "min_share=lots"], "min_share must"),
        (["--incentive", "measure=shapley", "--incentive", "below_min=delayed"], "delay_days"),
        (["--incentive", "measure=shapley", "--incentive", "tip=3"], "unknown key 'tip'"),
        (
            ["--incentive", "measure=shapley", "--incentive", "secure_mechanism=dp"],
            "mechanisms biofed has: none",
        ),
        (["--incentive", "measure=shapley", "--secure-aggregation"], "secure aggregation"),
    ],
)
def test_draft_incentive_errors_are_one_line(
    consortium: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    result = _draft(consortium, tmp_path / "a.toml", *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "a.toml").exists()
