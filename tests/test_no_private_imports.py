"""Packages meet only through each other's public ``__init__``: no module of one biofed
package imports another package's private module (``from biofed.other._x import …``)."""

from __future__ import annotations

import ast
from pathlib import Path

import biofed

SRC = Path(biofed.__file__).parent


def private_cross_imports(src: Path) -> list[str]:
    """``file:line: module`` for every import of another package's private module."""
    found = []
    for path in sorted(src.rglob("*.py")):
        parts = path.relative_to(src).parts
        if "_gen" in parts:  # generated gRPC code
            continue
        own = parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            for module in modules:
                dotted = module.split(".")
                if dotted[0] != "biofed" or len(dotted) < 3 or dotted[1] == own:
                    continue
                if any(p.startswith("_") for p in dotted[2:]):
                    found.append(f"{path.relative_to(src)}:{node.lineno}: {module}")
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1])))


def test_no_package_imports_another_packages_private_module() -> None:
    assert private_cross_imports(SRC) == []


def test_the_check_finds_private_imports_and_allows_its_own(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "_app.py").write_text(
        "from biofed.node._config import NodeConfig\n"  # its own package: allowed
        "from biofed.governance import AuditLog\n"  # public: allowed
        "def f():\n    from biofed.governance._ledger import PrivacyLedger\n"
        "import biofed.secagg._settings\n"
    )
    assert private_cross_imports(tmp_path) == [
        "node/_app.py:4: biofed.governance._ledger",
        "node/_app.py:5: biofed.secagg._settings",
    ]
