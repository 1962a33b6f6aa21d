"""``biofed agreement`` draft / sign / verify / show through Typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from biofed.cli._agreement import app as agreement_app
from biofed.identity import Consortium

runner = CliRunner(env={"COLUMNS": "200"})
app = typer.Typer()
app.add_typer(agreement_app, name="agreement")


@app.callback()
def _root() -> None:
    """Test app."""


@pytest.fixture
def fed(tmp_path: Path) -> Path:
    folder = tmp_path / "c"
    Consortium.create(
        folder, consortium="t", coordinator="127.0.0.1:7443", sites=["a", "b"], researchers=["r"]
    )
    return folder


def _draft(fed: Path, out: Path, *extra: str) -> None:
    result = runner.invoke(
        app,
        [
            "agreement", "draft", "--out", str(out), "--title", "BRCA survival",
            "--consortium-dir", str(fed), "--sites", "a,b", "--researchers", "r",
            "--dataset", "brca", "--dataset", "b=brca-v2", "--bundle", "ab" * 32,
            "--metric", "c_index", "--secure-aggregation", "--dp", "--max-epsilon", "8",
            "--max-delta", "1e-5", "--expires", "2099-12-31", "--legal-basis", "GDPR 9(2)(j)",
            "--purpose", "Cox model", *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "drafted brca-survival" in result.stdout


def _sign(fed: Path, file: Path, name: str) -> None:
    result = runner.invoke(app, ["agreement", "sign", str(file), "--kit", str(fed / name)])
    assert result.exit_code == 0, result.output


def test_draft_sign_verify_show(fed: Path, tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    _draft(fed, file)
    verify = ["agreement", "verify", str(file), "--consortium-dir", str(fed)]
    result = runner.invoke(app, verify)
    assert result.exit_code == 1
    assert "not in force" in result.stdout
    assert "not signed by site 'a'" in result.stdout
    for name in ("a", "b", "r"):
        _sign(fed, file, name)
    result = runner.invoke(app, [*verify, "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["missing"] == ["coordinator"]
    _sign(fed, file, "coordinator")
    result = runner.invoke(app, verify)
    assert result.exit_code == 0, result.output
    assert "in force" in result.stdout

    result = runner.invoke(app, ["agreement", "show", str(file)])
    assert result.exit_code == 0, result.output
    assert "BRCA survival" in result.stdout
    assert "brca-v2" in result.stdout
    data = json.loads(
        runner.invoke(app, ["agreement", "show", str(file), "--format", "json"]).stdout
    )
    assert data["datasets"] == {"a": "brca", "b": "brca-v2"}
    assert data["privacy"]["max_epsilon"] == {"a": 8.0, "b": 8.0}
    assert set(data["signatures"]) == {"a", "b", "r", "coordinator"}

    file.write_text(file.read_text().replace("a = 8.0", "a = 80.0"))
    result = runner.invoke(app, verify)
    assert result.exit_code == 1
    assert "edited after 'a' signed it" in result.stdout


def test_formatting_change_keeps_it_in_force(fed: Path, tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    _draft(fed, file)
    for name in ("a", "b", "r", "coordinator"):
        _sign(fed, file, name)
    file.write_text("# my notes\n" + file.read_text().replace("a = 8.0", "a = 8"))
    result = runner.invoke(app, ["agreement", "verify", str(file), "--consortium-dir", str(fed)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sites", "a,zz"], "no kit for 'zz'"),
        (["--expires", "soon"], "YYYY-MM-DD"),
        (["--dataset", "q=x"], "'q' is not in --sites"),
        (["--max-epsilon", "lots"], "must be a number"),
    ],
)
def test_draft_errors_are_one_red_line(
    fed: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    base = {
        "--out": str(tmp_path / "s.toml"), "--title": "T", "--consortium-dir": str(fed),
        "--sites": "a,b", "--dataset": "brca", "--expires": "2099-01-01",
        "--legal-basis": "L", "--purpose": "P",
    }  # fmt: skip
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    extra = ["--dp", "--max-delta", "1e-5"] if "--max-epsilon" in base else []
    flat = [item for pair in base.items() for item in pair]
    result = runner.invoke(app, ["agreement", "draft", *flat, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "s.toml").exists()


def test_sign_and_show_errors(fed: Path, tmp_path: Path) -> None:
    file = tmp_path / "study.toml"
    _draft(fed, file)
    before = file.read_text()
    result = runner.invoke(app, ["agreement", "sign", str(file), "--kit", str(fed / "admin")])
    assert result.exit_code == 2
    assert "'admin' is not a party" in result.stderr
    assert file.read_text() == before
    result = runner.invoke(app, ["agreement", "show", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "cannot read agreement" in result.stderr
    (tmp_path / "bad.toml").write_text("title = [")
    result = runner.invoke(
        app, ["agreement", "verify", str(tmp_path / "bad.toml"), "--consortium-dir", str(fed)]
    )
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr
    result = runner.invoke(app, ["agreement", "draft", "--out", str(file), "--title", "T",
        "--consortium-dir", str(fed), "--sites", "a,b", "--dataset", "x", "--expires", "2099-01-01",
        "--legal-basis", "L", "--purpose", "P"])  # fmt: skip
    assert result.exit_code == 2
    assert "exists" in result.stderr


def test_draft_requires_exact_guarantees_unless_told_otherwise(fed: Path, tmp_path: Path) -> None:
    strict, relaxed = tmp_path / "strict.toml", tmp_path / "relaxed.toml"
    _draft(fed, strict)
    _draft(fed, relaxed, "--no-exact-guarantees")
    assert "exact_guarantees_required" not in strict.read_text()  # the default: strict
    assert "exact_guarantees_required = false" in relaxed.read_text()
    shown = runner.invoke(app, ["agreement", "show", str(strict)])
    assert "ε figures must be guarantees" in shown.stdout
    shown = runner.invoke(app, ["agreement", "show", str(relaxed)])
    assert "may be heuristic" in shown.stdout
