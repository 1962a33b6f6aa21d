"""``biofed privacy epsilon`` and ``biofed privacy noise`` through Typer's runner."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from biofed.cli._privacy import app as privacy_app
from biofed.privacy import make_accountant

runner = CliRunner(env={"COLUMNS": "200"})
app = typer.Typer()
app.add_typer(privacy_app, name="privacy")


@app.callback()
def _root() -> None:
    """Test app."""


_BASE = ["--sampling-rate", "1", "--steps", "100", "--delta", "1e-5"]


def test_epsilon_text_and_json() -> None:
    result = runner.invoke(app, ["privacy", "epsilon", "--noise-multiplier", "2", *_BASE])
    assert result.exit_code == 0, result.output
    assert "ε = 33.1038 at δ = 1e-05" in result.stdout  # the reference table's exact value
    result = runner.invoke(
        app,
        ["privacy", "epsilon", "-z", "2", *_BASE, "--accountant", "rdp", "--format", "json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["epsilon"] == pytest.approx(35.08175401905626)
    assert data["accountant"] == "rdp"


def test_epsilon_without_noise_is_infinite() -> None:
    result = runner.invoke(app, ["privacy", "epsilon", "-z", "0", *_BASE, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epsilon"] is None


def test_noise_never_exceeds_the_target() -> None:
    args = ["privacy", "noise", "--target-epsilon", "2", *_BASE[:2], "--steps", "10"]
    args += ["--delta", "1e-5"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["epsilon"] <= 2
    accountant = make_accountant("pld")
    accountant.step(data["noise_multiplier"], 1.0, 10)
    assert accountant.epsilon(1e-5) == data["epsilon"]

    text = runner.invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "noise multiplier z = " in text.stdout
    shown = float(text.stdout.split("z = ")[1].split()[0])
    assert shown >= data["noise_multiplier"]  # rounded up: more noise, never less
    assert "≤ 2 at δ = 1e-05" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["epsilon", "-z", "-1", *_BASE], "noise_multiplier must be ≥ 0, got -1.0"),
        (["epsilon", "-z", "1", "-q", "0", "-t", "5", "-d", "1e-5"], "0 < q ≤ 1, got 0.0"),
        (["epsilon", "-z", "1", "-q", "1.5", "-t", "5", "-d", "1e-5"], "0 < q ≤ 1, got 1.5"),
        (["epsilon", "-z", "1", "-q", "0.1", "-t", "0", "-d", "1e-5"], "steps must be ≥ 1"),
        (["epsilon", "-z", "1", "-q", "0.1", "-t", "5", "-d", "1"], "0 < δ < 1, got 1.0"),
        (["epsilon", "-z", "1", *_BASE, "--accountant", "prv"], "must be pld or rdp"),
        (["epsilon", "-z", "1", *_BASE, "--format", "yaml"], "--format must be table or json"),
        (["noise", "-e", "0", *_BASE], "target_epsilon must be > 0, got 0.0"),
        (["noise", "-e", "1", "-q", "1", "-t", "5", "-d", "0"], "0 < δ < 1, got 0.0"),
    ],
)
def test_invalid_options_exit_2_with_a_reason(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["privacy", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_missing_option_is_a_usage_error() -> None:
    result = runner.invoke(app, ["privacy", "epsilon", "--noise-multiplier", "1"])
    assert result.exit_code == 2
