"""The audit hook that governance stores (ledger, dataset registry) report their changes to."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

AuditHook = Callable[[str, Mapping[str, Any]], None]
"""Called with (event, data) after a change; the node passes its audit log's append."""


def no_audit(event: str, data: Mapping[str, Any]) -> None:
    """The hook of a store that audits nothing (reading, development)."""
