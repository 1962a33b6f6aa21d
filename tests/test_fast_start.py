"""Fast start: ``import biofed`` and the command line's help import no heavy dependency.

``biofed --help`` took seconds because every command module imported dp-accounting,
SQLAlchemy, gRPC and the coordinator at the top. Each check runs in a fresh interpreter (the
test process has long imported everything) and reads ``sys.modules`` there. Timings are a
benchmark's business (``benchmarks/start_time.py``), not a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Slow to import, and needed only once a command runs: never on the help path.
HEAVY = ("dp_accounting", "sqlalchemy", "grpc", "torch")
#: Also kept off the help path (numpy alone costs a fifth of the 0.5 s target).
HELP_ALSO = ("numpy", "scipy", "pandas", "cryptography")


def loaded_after(code: str, tmp_path: Path) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; the top-level packages it left in sys.modules,
    and what ``code`` stored in the ``result`` dict it is given."""
    out = tmp_path / "probe.json"
    probe = textwrap.dedent(
        """
        import json, sys
        result = {}
        """
    )
    probe += textwrap.dedent(code)
    probe += textwrap.dedent(
        f"""
        result["modules"] = sorted({{m.split(".")[0] for m in sys.modules}})
        with open({str(out)!r}, "w") as f:
            json.dump(result, f)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, object] = json.loads(out.read_text())
    return data


def heavy_in(result: dict[str, object], names: tuple[str, ...]) -> list[str]:
    modules = result["modules"]
    assert isinstance(modules, list)
    return sorted(set(names) & set(modules))


def test_import_biofed_pulls_in_no_heavy_dependency(tmp_path: Path) -> None:
    result = loaded_after("import biofed", tmp_path)
    assert heavy_in(result, HEAVY + HELP_ALSO) == []


def test_import_biofed_cli_pulls_in_no_heavy_dependency(tmp_path: Path) -> None:
    result = loaded_after("import biofed.cli", tmp_path)
    assert heavy_in(result, HEAVY + HELP_ALSO) == []


def test_biofed_help_imports_no_heavy_dependency(tmp_path: Path) -> None:
    """``biofed --help`` as the console script runs it (``biofed.cli:main``)."""
    result = loaded_after(
        """
        import contextlib, io
        from biofed.cli import main
        sys.argv = ["biofed", "--help"]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            try:
                main()
            except SystemExit as exc:
                result["code"] = exc.code
        result["help"] = buffer.getvalue()
        """,
        tmp_path,
    )
    assert result["code"] == 0
    assert "simulate" in str(result["help"])
    assert "coordinator" in str(result["help"])
    assert heavy_in(result, HEAVY + HELP_ALSO) == []


def test_every_commands_help_imports_no_heavy_dependency(tmp_path: Path) -> None:
    """``biofed run --help``, ``biofed node budget --help``…: every group and command."""
    result = loaded_after(
        """
        import contextlib, io
        import typer
        from biofed.cli import app
        root = typer.main.get_command(app)

        def paths(command, prefix):
            yield prefix
            for name, sub in getattr(command, "commands", {}).items():
                yield from paths(sub, [*prefix, name])

        shown = {}
        for path in paths(root, []):
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                try:
                    root.main([*path, "--help"], prog_name="biofed")
                except SystemExit as exc:
                    assert exc.code == 0, (path, exc.code)
            shown[" ".join(path)] = buffer.getvalue()
        result["help"] = shown
        """,
        tmp_path,
    )
    shown = result["help"]
    assert isinstance(shown, dict)
    for path in ("run", "run submit", "coordinator start", "node start", "node budget"):
        assert "Usage:" in shown[path], path
    assert "simulate" in shown
    assert "privacy noise" in shown
    assert heavy_in(result, HEAVY + HELP_ALSO) == []


def test_the_probe_sees_a_heavy_import(tmp_path: Path) -> None:
    """The checks above can fail: computing an ε loads dp-accounting. Importing the privacy
    SDK alone does not (every node and CLI process imports it, most never compute an ε)."""
    result = loaded_after(
        """
        import biofed.privacy as p
        result["on_import"] = "dp_accounting" in sys.modules
        accountant = p.make_accountant("rdp")
        accountant.step(noise_multiplier=1.1, sampling_rate=0.02, steps=30)
        result["epsilon"] = accountant.epsilon(1e-5)
        """,
        tmp_path,
    )
    assert result["on_import"] is False
    assert isinstance(result["epsilon"], float)
    assert heavy_in(result, HEAVY) == ["dp_accounting"]


def test_names_in_help_texts_are_the_sdks() -> None:
    """The lists the help texts show without importing the SDK are the SDK's lists."""
    from biofed.cli._names import ACCOUNTANT_NAMES, STRATEGY_NAMES
    from biofed.privacy import ACCOUNTANTS
    from biofed.strategies import STRATEGIES

    assert tuple(sorted(STRATEGIES)) == STRATEGY_NAMES
    assert tuple(ACCOUNTANTS) == ACCOUNTANT_NAMES


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"]])
def test_console_script_help_runs(command: list[str]) -> None:
    """``python -m biofed`` (the benchmark's entry) prints the help and exits 0."""
    done = subprocess.run(
        [sys.executable, "-m", "biofed", *command],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
