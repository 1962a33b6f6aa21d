"""The import-linter contract ``private_modules`` (tools/import_contracts.py) breaks on an
import of another package's private module and keeps a package's own and public imports."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _contracts() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "biofed_import_contracts", ROOT / "tools" / "import_contracts.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _graph(imports: list[tuple[str, str]]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        graph.add_import(
            importer=importer, imported=imported, line_number=3, line_contents=f"import {imported}"
        )
    return graph


def _check(imports: list[tuple[str, str]], **options: object) -> list[tuple[str, str]]:
    contracts = _contracts()
    contract = contracts.PrivateModulesContract(
        name="private", session_options={}, contract_options={"root_package": "biofed", **options}
    )
    result = contract.check(_graph(imports), verbose=False)
    found = [(v["importer"], v["imported"]) for v in result.metadata["violations"]]
    assert result.kept == (not found)
    return found


def test_private_imports_across_packages_break_the_contract() -> None:
    assert _check(
        [
            ("biofed.node._app", "biofed.governance._ledger"),  # broken
            ("biofed.node._app", "biofed.transport.grpc._serde"),  # broken: deeper private
            ("biofed.cli", "biofed.governance._audit._entry"),  # broken: private subpackage
            ("biofed", "biofed.core._types"),  # broken: the root is no package's own
            ("biofed.node._app", "biofed.node._config"),  # own package: kept
            ("biofed.node._app", "biofed.governance"),  # public door: kept
            ("biofed.node._app", "biofed.core.checks"),  # public module: kept
            ("biofed.node._app", "biofed.transport.grpc"),  # public subpackage: kept
            ("biofed.governance._ledger._ledger", "biofed.governance._ledger._store"),  # own
            ("biofed.node._app", "numpy._core"),  # not ours
        ]
    ) == [
        ("biofed", "biofed.core._types"),
        ("biofed.cli", "biofed.governance._audit._entry"),
        ("biofed.node._app", "biofed.governance._ledger"),
        ("biofed.node._app", "biofed.transport.grpc._serde"),
    ]


def test_clean_graph_keeps_the_contract_and_importers_can_be_ignored() -> None:
    assert _check([("biofed.node._app", "biofed.governance")]) == []
    generated = [("biofed.transport.grpc._gen.x_pb2", "biofed.core._types")]
    assert _check(generated) == [generated[0]]
    assert _check(generated, ignore_importers=["biofed.transport.grpc._gen.x_pb2"]) == []
