"""import-linter contract types of biofed's own (registered in pyproject's
``[tool.importlinter] contract_types``; lint-imports puts the repository root on sys.path).

``private_modules``: packages meet only through each other's public ``__init__`` — no module
of ``biofed.<a>`` imports a private module of ``biofed.<b>`` (any dotted part after the
package that starts with ``_``, e.g. ``biofed.governance._ledger`` or
``biofed.transport.grpc._serde``), directly or by ``import biofed.<b>._x``. A package's own
private modules are its business. (The same rule as ``tests/test_no_private_imports.py``,
here on import-linter's graph so that ``lint-imports`` fails on a violation.)
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


def owner(module: str, root: str) -> str | None:
    """The top-level package of ``root`` that ``module`` belongs to (None for ``root``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == root else None


def is_private_of_other(importer: str, imported: str, root: str) -> bool:
    """Whether ``imported`` is a private module of a package other than ``importer``'s."""
    parts = imported.split(".")
    if parts[0] != root or len(parts) < 3:
        return False
    if owner(importer, root) == parts[1]:
        return False
    return any(p.startswith("_") and not p.startswith("__") for p in parts[2:])


class PrivateModulesContract(Contract):
    """No package of ``root_package`` imports another package's private module.

    Configuration options:
        - root_package: the package whose subpackages are checked (``biofed``).
        - ignore_importers: modules (exact names) whose imports are not checked, e.g.
          generated code. (Optional.)
    """

    type_name = "private_modules"

    root_package = fields.StringField()
    ignore_importers = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        root = str(self.root_package)
        ignored = set(self.ignore_importers or [])  # type: ignore[arg-type]
        violations = []
        for importer in sorted(graph.modules):
            if (owner(importer, root) is None and importer != root) or importer in ignored:
                continue
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if not is_private_of_other(importer, imported, root):
                    continue
                lines = sorted(
                    d["line_number"]
                    for d in graph.get_import_details(importer=importer, imported=imported)
                )
                violations.append({"importer": importer, "imported": imported, "lines": lines})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for v in check.metadata["violations"]:
            lines = ", ".join(f"l.{n}" for n in v["lines"])
            output.print_error(
                f"{v['importer']} imports the private module {v['imported']} ({lines}); "
                "import the name from its package's public __init__ instead",
                bold=False,
            )
        output.new_line()
