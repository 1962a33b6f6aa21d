"""Control-plane values (runs, events, nodes) and the handler the coordinator implements.

These plain types keep the generated protobuf classes inside ``transport/grpc``: the
coordinator and the CLI speak in them, and :mod:`._server` / :mod:`._client` convert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from biofed.transport.grpc._tls import Peer


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """What a researcher sees of a run."""

    run_id: str
    status: str
    owner: str
    completed_rounds: int
    total_rounds: int
    error: str = ""
    summary_json: str = "{}"
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EventInfo:
    """One entry of a run's event log."""

    seq: int
    time: float
    round: int
    kind: str
    node_id: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSummary:
    """A node as the coordinator's registry has it."""

    node_id: str
    status: str
    last_seen: float
    properties_json: str = "{}"


class ControlHandler(Protocol):
    """The coordinator's answers to the control RPCs. Raise biofed errors to refuse:
    PolicyViolation → PERMISSION_DENIED, ConfigurationError → INVALID_ARGUMENT,
    LookupError → NOT_FOUND, other BiofedError → FAILED_PRECONDITION."""

    def submit_run(
        self,
        peer: Peer,
        spec_json: str | bytes,
        bundle: bytes = b"",
        agreement: bytes = b"",
        certificates: Mapping[str, bytes] | None = None,
    ) -> RunSummary: ...

    def bundle(self, peer: Peer, digest: str) -> bytes: ...

    def get_run(self, peer: Peer, run_id: str) -> RunSummary: ...

    def list_runs(self, peer: Peer) -> list[RunSummary]: ...

    def watch_run(
        self, peer: Peer, run_id: str, after_seq: int, follow: bool, alive: Callable[[], bool]
    ) -> Iterator[EventInfo]: ...

    def cancel_run(self, peer: Peer, run_id: str) -> RunSummary: ...

    def run_result(self, peer: Peer, run_id: str) -> bytes: ...

    def list_nodes(self, peer: Peer) -> list[NodeSummary]: ...
